"""A full synthetic experiment folder with its report, built once per test session (read-only for tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_experiment import make_experiment


@pytest.fixture(scope="session")
def experiment(tiny_world, tmp_path_factory) -> Path:
    from twinv2.report import build_report

    root = make_experiment(tmp_path_factory.mktemp("exp") / "exp", tiny_world)
    build_report(root)
    return root


@pytest.fixture(scope="session")
def tables(experiment) -> dict:
    return json.loads((experiment / "report" / "tables.json").read_text())


@pytest.fixture(scope="session")
def report_md(experiment) -> str:
    return (experiment / "report" / "report.md").read_text()
