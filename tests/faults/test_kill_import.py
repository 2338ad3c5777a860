"""`twinv2 import mapped` killed at any instant leaves no dataset (or the old one) and the next run gives the
same bytes as an uninterrupted run: never a folder that a rerun refuses (issue 14, items 3 and 6).

Kills come at named points of the importer and of the atomic commit (TWINV2_FAILPOINT=name makes the process
SIGKILL itself there, see twinv2.data.dirs.failpoint).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from twinv2.data.dirs import FAILPOINT_ENV
from twinv2.data.storage import Dataset
from twinv2.serve.server import cli_command

from tests.faults.test_kill_generate import _digest, _leftovers  # the same digest and leftover rules

FIX = Path(__file__).resolve().parents[1] / "data" / "fixtures"
MAPPING = {"name": "tiny", "inputs": [str(FIX / "tiny_log.csv")],
           "columns": {"user": "uid", "item": "photo", "time": "t_s", "time_unit": "s", "label": "clicked",
                       "play": "watch_ms", "duration": "len_ms"},
           "split": {"last_days": 2, "day_offset_hours": 0, "history": "label == 1"}}
# Points of one run in order: validated (quarantine written), shards written, all but the manifest, commit.
POINTS = ["import-read", "import-shards", "import-manifest", "commit"]


def _import(mapping: Path, out: Path, *extra: str, failpoint: str | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
    if failpoint:
        env[FAILPOINT_ENV] = failpoint
    r = subprocess.run([*cli_command(), "import", "mapped", "--mapping", str(mapping), "--out", str(out), *extra],
                       env=env, capture_output=True, text=True, timeout=120)
    if r.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"import exited {r.returncode}: {r.stderr[-2000:]}")
    return r.returncode


@pytest.fixture(scope="module")
def mapping(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("mapping") / "m.yaml"
    p.write_text(yaml.safe_dump(MAPPING))
    return p


@pytest.fixture(scope="module")
def references(mapping, tmp_path_factory) -> dict[str, dict[str, str]]:
    base = tmp_path_factory.mktemp("ref")
    assert _import(mapping, base / "four") == 0 and _import(mapping, base / "two", "--shards", "2") == 0
    return {"four": _digest(base / "four"), "two": _digest(base / "two")}


@pytest.mark.slow
def test_killed_at_each_point_leaves_nothing_and_the_rerun_equals_an_uninterrupted_run(tmp_path, mapping,
                                                                                       references):
    out = tmp_path / "proj"
    for point in POINTS:  # each run is killed; the next one first removes the leftovers of the one before
        assert _import(mapping, out, failpoint=point) == -signal.SIGKILL, point
        assert not out.exists(), f"killed at {point!r}, yet {out} exists"
        assert len(_leftovers(out)) == 1, (point, _leftovers(out))  # only this run's own temporary folder
    assert _import(mapping, out) == 0
    assert _digest(out) == references["four"] and _leftovers(out) == []
    Dataset(out)  # and every checksum holds


@pytest.mark.slow
def test_a_killed_overwrite_keeps_the_old_dataset_or_gives_the_new_one(tmp_path, mapping, references):
    out = tmp_path / "proj"
    assert _import(mapping, out) == 0
    for point, expect in (("import-read", "four"), ("import-manifest", "four"), ("commit", "four"),
                          ("exchanged", "two")):
        assert _import(mapping, out, "--shards", "2", "--overwrite", failpoint=point) == -signal.SIGKILL, point
        assert _digest(out) == references[expect], f"killed at {point!r}: {out} is not the {expect!r} dataset"
    assert _import(mapping, out, "--shards", "2", "--overwrite") == 0
    assert _digest(out) == references["two"] and _leftovers(out) == []
    Dataset(out)
