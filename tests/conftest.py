"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_KUAIRAND = REPO.parent / "shared" / "data" / "kuairand"


@pytest.fixture
def kuairand_dir() -> Path:
    """The real KuaiRand files (CC BY-SA 4.0), read in place from ../shared; never copied into the repo."""
    if not (SHARED_KUAIRAND / "kuairand27k_likehate_k15.tsv").exists():
        pytest.skip(f"KuaiRand files not found at {SHARED_KUAIRAND}")
    return SHARED_KUAIRAND
