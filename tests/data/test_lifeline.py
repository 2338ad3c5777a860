"""Pool workers tied to their job (data/lifeline.py): cutting the line ends a busy worker at once, and a lock
the job hands its workers stays held until the last of them is gone."""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pytest

from twinv2.data.lifeline import Lifeline


def _locked(path) -> bool:
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def test_cutting_the_line_kills_a_busy_worker_and_frees_the_lock_it_held(tmp_path):
    lock = tmp_path / ".lock"
    f = open(lock, "a+")
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    with Lifeline(hold=(f.fileno(),)) as line:
        init, initargs = line.initializer()
        ex = ProcessPoolExecutor(1, mp_context=ctx, initializer=init, initargs=initargs)
        try:
            worker = ex.submit(os.getpid).result(timeout=60)
            busy = ex.submit(time.sleep, 60)
            f.close()  # the job lets go of its descriptor: the worker's copy keeps the lock
            assert _locked(lock)
            t0 = time.monotonic()
            line.cut()
            with pytest.raises(BrokenProcessPool):
                busy.result(timeout=10)
            assert time.monotonic() - t0 < 5
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)  # reaped by the pool: gone, not a zombie
    assert not _locked(lock)


def test_a_closed_line_cannot_start_workers():
    line = Lifeline()
    line.close()
    line.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        line.initializer()
