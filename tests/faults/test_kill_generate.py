"""`twinv2 generate` killed at any instant leaves no dataset or a complete one, and the next run gives the same
bytes as an uninterrupted run (issue 14, item 3).

Kills come two ways: at named points of the writer (TWINV2_FAILPOINT=name makes the process SIGKILL itself
there, see twinv2.data.dirs.failpoint), and SIGKILL of the whole process group after a delay.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from twinv2.data.checksum import MARKER
from twinv2.data.dirs import FAILPOINT_ENV
from twinv2.data.storage import Dataset
from twinv2.serve.server import cli_command

ARGS = ["generate", "--preset", "tiny", "--users", "24", "--quiet"]
# Points of one run in order (generate_world and its shard writer); "shard" runs in a worker, so --workers 1.
POINTS = ["items", "users", "shard", "shards", "manifest", "commit"]


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file (the verified-marker, a stat cache, aside): the deterministic outputs."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MARKER}


def _generate(out: Path, *extra: str, failpoint: str | None = None, kill_after: float | None = None,
              workers: int = 1) -> int:
    env = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
    if failpoint:
        env[FAILPOINT_ENV] = failpoint
    cmd = [*cli_command(), *ARGS, "--workers", str(workers), "--out", str(out), *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own group: a kill takes the workers too
    try:
        if kill_after is not None:
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"generate exited {proc.returncode}: {err.decode()[-2000:]}")
    return proc.returncode


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.twinv2-"))


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, dict[str, str]]:
    base = tmp_path_factory.mktemp("ref")
    assert _generate(base / "seed0") == 0 and _generate(base / "seed7", "--seed", "7") == 0
    return {"seed0": _digest(base / "seed0"), "seed7": _digest(base / "seed7")}


@pytest.mark.slow
def test_killed_at_each_point_leaves_nothing_and_the_rerun_equals_an_uninterrupted_run(tmp_path, references):
    out = tmp_path / "world"
    for point in POINTS:  # each run is killed; the next one (killed later) first removes its leftovers
        assert _generate(out, failpoint=point) == -signal.SIGKILL, point
        assert not out.exists(), f"killed at {point!r}, yet {out} exists"
        assert len(_leftovers(out)) == 1, (point, _leftovers(out))  # only this run's own temporary folder
    assert _generate(out) == 0
    assert _digest(out) == references["seed0"] and _leftovers(out) == []
    Dataset(out)  # and every checksum holds


@pytest.mark.slow
def test_killed_overwrite_keeps_the_old_dataset_or_gives_the_new_one(tmp_path, references):
    out = tmp_path / "world"
    assert _generate(out) == 0
    for point, expect in (("items", "seed0"), ("commit", "seed0"), ("exchanged", "seed7")):
        assert _generate(out, "--seed", "7", "--overwrite", failpoint=point) == -signal.SIGKILL, point
        assert _digest(out) == references[expect], f"killed at {point!r}: {out} is not the {expect} dataset"
    assert _generate(out, "--seed", "7", "--overwrite") == 0
    assert _digest(out) == references["seed7"] and _leftovers(out) == []


@pytest.mark.slow
def test_sigkill_after_a_delay_leaves_nothing_or_a_complete_dataset(tmp_path, references):
    out = tmp_path / "world"
    killed = 0
    for delay in (0.8, 1.6, 2.4, 3.2):  # import, items/pilot, shards; two workers, killed with the parent
        rc = _generate(out, kill_after=delay, workers=2)
        if out.exists():  # finished before the kill: then it must be whole
            assert _digest(out) == references["seed0"], f"killed after {delay} s: incomplete dataset"
            break
        assert rc == -signal.SIGKILL
        killed += 1
    assert killed >= 2, "the runs finished too early to be interrupted"
    if not out.exists():
        assert _generate(out, workers=2) == 0
    assert _digest(out) == references["seed0"]
    assert _generate(out, "--overwrite", workers=2) == 0 and _leftovers(out) == []


@pytest.mark.slow
def test_a_worker_killed_mid_shard_stops_the_run_instead_of_hanging(tmp_path, references):
    """multiprocessing.Pool never noticed a dead worker (say, one the OOM killer picked) and waited forever."""
    out = tmp_path / "world"
    env = {**os.environ, FAILPOINT_ENV: "shard"}
    r = subprocess.run([*cli_command(), *ARGS, "--workers", "2", "--out", str(out)], env=env, capture_output=True,
                       text=True, timeout=90)
    err = r.stderr.strip()
    assert r.returncode == 1 and err.startswith("twinv2: error: a `generate` worker process died") and \
        "\n" not in err, err[-2000:]  # one line, no traceback
    assert not out.exists() and _leftovers(out) == []
    assert _generate(out, workers=2) == 0 and _digest(out) == references["seed0"]
