"""`twinv2 cluster` killed at any instant resumes to the bytes of an uninterrupted run, and a killed job leaves
no process behind (issue 14, item 6): its pool workers and forkserver die with it, so no part is written
after its lock is gone.

Kills come at named points (TWINV2_FAILPOINT=name makes that process SIGKILL itself, see
twinv2.data.dirs.failpoint): in the job (only its own pid; its workers are left to fend for themselves) or
in a worker. The job runs in its own session, so every process it started, reparented or not, is found by
its session id in /proc.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from twinv2.data.dirs import FAILPOINT_ENV
from twinv2.offline.store import ClusterSnapshot
from twinv2.serve.server import cli_command

# Points of one run in order: after the first manifest, after the resolved embeddings' temporary folder,
# in a shard before and after its part is renamed into place, after a shard is recorded, after the last
# manifest (before the resolved embeddings are removed).
POINTS = ["cluster-started", "cluster-resolved", "cluster-part", "cluster-part-written", "cluster-recorded",
          "cluster-recorded", "cluster-finished"]
VOLATILE = ("last_run",)  # timings and what this run skipped: not the snapshot's content


def _snapshot(root: Path) -> dict:
    """What must equal an uninterrupted run's: every file's sha256 (the readers' .csr caches aside) and the
    manifest without its timings."""
    files = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(root.rglob("*")) if p.is_file() and ".csr" not in p.relative_to(root).as_posix()
             and p.name not in ("manifest.json", ".verified.json")}  # the marker is a reader's cache
    m = json.loads((root / "manifest.json").read_text())
    for k in (*VOLATILE, "manifest_sha256"):  # the manifest's own checksum covers the timings too
        m.pop(k, None)
    for s in m["shards"].values():
        s.pop("seconds")
    return {"files": files, "manifest": m}


def _session(sid: int) -> list[str]:
    """Live processes of session `sid` (zombies are dead), as 'pid cmdline'."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
        if int(session) == sid and state != "Z":
            out.append(f"{d} {cmd[:120]}")
    return out


def _cluster(dataset: Path, out: Path, workers: int, failpoint: str | None = None,
             engine: str = "local") -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
    if failpoint:
        env[FAILPOINT_ENV] = failpoint
    cmd = [*cli_command(), "cluster", str(dataset), "--snapshot-before", "eval:0", "--workers", str(workers),
           "--out", str(out), "--engine", engine, "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
        deadline = time.monotonic() + 10
        while _session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = _session(proc.pid)
        assert not left, f"`cluster` exited {proc.returncode} (failpoint {failpoint}) and left {left}"
    finally:  # whatever happens, nothing of it outlives the test
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return proc.returncode, err.decode()


@pytest.fixture(scope="module")
def reference(tiny_snapshot) -> tuple[Path, dict]:
    """The tiny world (with its embeddings) and its uninterrupted snapshot (one process) before day 0."""
    return tiny_snapshot.parents[1], _snapshot(tiny_snapshot)


@pytest.mark.slow
def test_killing_the_job_alone_takes_its_workers_and_forkserver_with_it(tmp_path, reference):
    """Was: the workers went on taking queued shards and writing parts for seconds after the job and its lock
    were gone, then waited forever, with the forkserver."""
    dataset, expect = reference
    out = tmp_path / "snap"
    rc, err = _cluster(dataset, out, workers=2, failpoint="cluster-recorded")  # asserts nothing is left
    assert rc == -signal.SIGKILL, err[-2000:]
    listing = sorted(p.name for p in out.iterdir())
    time.sleep(0.5)
    assert sorted(p.name for p in out.iterdir()) == listing, "files changed after the job died"
    m = json.loads((out / "manifest.json").read_text())
    assert not m["complete"] and len(m["shards"]) >= 1
    rc, err = _cluster(dataset, out, workers=2)  # at once: the lock was released with the last worker
    assert rc == 0, err[-2000:]
    assert _snapshot(out) == expect


@pytest.mark.slow
def test_killing_a_dask_job_takes_its_local_cluster_with_it(tmp_path, reference):
    """The Dask engine's LocalCluster: its nanny and worker processes watch the job (distributed's parent-alive
    pipe) and exit with it; the rerun resumes to the same bytes."""
    dataset, expect = reference
    out = tmp_path / "snap"
    rc, err = _cluster(dataset, out, workers=2, failpoint="cluster-recorded", engine="dask")  # nothing left
    assert rc == -signal.SIGKILL, err[-2000:]
    rc, err = _cluster(dataset, out, workers=2, engine="dask")
    assert rc == 0, err[-2000:]
    assert _snapshot(out) == expect


@pytest.mark.slow
def test_killed_at_each_point_resumes_to_an_uninterrupted_runs_bytes(tmp_path, reference):
    dataset, expect = reference
    out = tmp_path / "snap"
    recorded = 0
    for point in POINTS:  # each run resumes the one before and is itself killed
        rc, err = _cluster(dataset, out, workers=1, failpoint=point)  # one process: the shard points kill the job
        assert rc == -signal.SIGKILL, (point, err[-2000:])
        m = json.loads((out / "manifest.json").read_text())
        assert len(m["shards"]) >= recorded, f"killed at {point!r}: a recorded shard was lost"
        recorded = len(m["shards"])
        listed = {s["file"] for s in m["shards"].values()}
        stray = [p.name for p in out.glob("part-*.parquet") if p.name not in listed]
        # Only a kill between a part's rename and its record leaves one the manifest does not list.
        assert bool(stray) == (point == "cluster-part-written"), (point, stray)
    assert m["complete"], "the last kill point comes after the last shard"
    ClusterSnapshot(out)  # a complete snapshot is readable at once, before the clean-up finishes
    rc, err = _cluster(dataset, out, workers=1)
    assert rc == 0, err[-2000:]
    assert _snapshot(out) == expect


@pytest.mark.slow
def test_a_worker_killed_mid_shard_stops_the_run_and_the_rerun_resumes(tmp_path, reference):
    dataset, expect = reference
    out = tmp_path / "snap"
    for point in ("cluster-part", "cluster-part-written"):
        rc, err = _cluster(dataset, out, workers=2, failpoint=point)
        assert rc == 1 and err.startswith("twinv2: error: a clustering worker process died") and \
            "run the same command again" in err and len(err.strip().splitlines()) == 1, err[-2000:]  # no traceback
    rc, err = _cluster(dataset, out, workers=2)
    assert rc == 0, err[-2000:]
    assert _snapshot(out) == expect


@pytest.mark.slow
def test_dask_workers_dying_on_a_shard_stop_the_run_with_one_line_and_the_rerun_resumes(tmp_path, reference):
    dataset, expect = reference
    out = tmp_path / "snap"
    rc, err = _cluster(dataset, out, workers=2, failpoint="cluster-part", engine="dask")  # every retry dies too
    last = err.strip().splitlines()[-1]  # above it: Dask's own log lines about the restarted workers
    assert rc == 1 and last.startswith("twinv2: error: Dask workers died") and "Traceback" not in err, err[-2000:]
    rc, err = _cluster(dataset, out, workers=2, engine="dask")
    assert rc == 0, err[-2000:]
    assert _snapshot(out) == expect


def test_a_second_job_on_a_locked_snapshot_is_one_line_and_status_2(tmp_path, reference):
    """Was a RuntimeError traceback (exit 1) at once; now the lock is waited for a moment (a killed job's
    workers take milliseconds to let go of it), then refused."""
    dataset, _ = reference
    out = tmp_path / "snap"
    out.mkdir()
    with open(out / ".lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        rc, err = _cluster(dataset, out, workers=1)
    assert rc == 2 and err.startswith("twinv2: error: another clustering job is writing") and \
        len(err.strip().splitlines()) == 1, err[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
