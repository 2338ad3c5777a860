"""Engines that map a per-shard function (the job's `cluster_shard`) over shards: this process, a local
process pool, or a Dask cluster.

All engines call the same pure per-shard function and users are seeded by hash(seed, user_id), so they write
the same bytes. The job passes its functions in (`work`, `init_worker`), so this module does not import it. The caller's `finished(stats)` runs in this process as each shard completes (it records the
shard in the manifest); progress is a tqdm bar over users with users/s and ETA.

The local pool's workers (and so its forkserver) die with the job and hold its lock while they live
(data/lifeline.py): a killed job leaves no process behind, and no part is written once the lock is free.
Only parts whose stats reached `finished` are ever in the manifest; a rerun redoes and replaces the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing as mp
import os
import queue as queue_mod
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from twinv2.data.lifeline import Lifeline
from twinv2.schema import DataError, JobFailed


@contextlib.contextmanager
def lock(out_dir: Path, wait_s: float = 2.0) -> Iterator[int]:
    """Exclusive lock on a snapshot folder for the job's lifetime; yields the lock file's descriptor, which the
    job's pool workers hold too (data/lifeline.py), so the OS drops the lock only once the job and every worker
    are gone, however they end. A held lock is waited for up to `wait_s` seconds: the workers of a job killed a
    moment ago take a few milliseconds to die."""
    f = open(Path(out_dir) / ".lock", "a+")
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DataError(f"another clustering job is writing {out_dir}; wait for it or pick another "
                                    f"`out`") from None
                time.sleep(0.05)
        yield f.fileno()
    finally:
        f.close()


def n_workers(cfg: Any, n_tasks: int) -> int:
    return max(1, min(cfg.workers or os.cpu_count() or 1, n_tasks))


def run(tasks: list[Any], cfg: Any, users: dict[int, int], finished: Callable[[dict[str, Any]], None],
        progress: bool, work: Callable[..., dict[str, Any]], init_worker: Callable[[Any], None],
        hold: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Run `work(task)` for every task (a picklable module-level function; `work(task, report=fn)` inline,
    where `report(shard, users_done)` feeds the bar; pool workers run `init_worker(queue)` first and report
    through the queue). `cfg` is the job's config (engine, workers, scheduler). Local pool workers die with
    this process and keep the descriptors `hold` (the job's lock) open while they live. Returns the tasks'
    stats in completion order."""
    bar = tqdm(total=sum(users.values()), unit="user", desc="clustering", disable=not progress,
               smoothing=0.05, file=sys.stderr, dynamic_ncols=True)
    try:
        if cfg.engine == "dask":
            return _run_dask(tasks, cfg, users, finished, bar, work)
        if n_workers(cfg, len(tasks)) == 1:
            return _run_inline(tasks, finished, bar, work)
        return _run_pool(tasks, cfg, users, finished, bar, work, init_worker, hold)
    finally:
        bar.close()


def _run_inline(tasks, finished, bar, work) -> list[dict[str, Any]]:
    out = []
    for t in tasks:
        stats = work(t, report=lambda s, k: bar.update(k))
        finished(stats)
        out.append(stats)
    return out


def _context(work):
    # forkserver/spawn, not fork: a forked child inherits OpenMP (faiss, torch) thread pools in a broken
    # state. forkserver preloads the job module once, so each worker starts in about the time of a fork.
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([work.__module__, "faiss", "threadpoolctl"])
        return ctx
    return mp.get_context("spawn")


def _run_pool(tasks, cfg, users, finished, bar, work, init_worker, hold) -> list[dict[str, Any]]:
    ctx = _context(work)
    q = ctx.Queue()
    reported = {t.shard: 0 for t in tasks}
    closed: set[int] = set()

    def drain() -> None:
        while True:
            try:
                s, k = q.get_nowait()
            except queue_mod.Empty:
                return
            if s not in closed:  # a late message of a finished shard was already counted
                reported[s] += k
                bar.update(k)

    out = []
    with Lifeline(hold) as line:
        init, initargs = line.initializer(init_worker, (q,))
        ex = ProcessPoolExecutor(max_workers=n_workers(cfg, len(tasks)), mp_context=ctx, initializer=init,
                                 initargs=initargs)
        try:
            futs = {ex.submit(work, t): t.shard for t in tasks}
            pending = set(futs)
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                drain()
                for f in done:
                    shard = futs[f]
                    try:
                        stats = f.result()
                    except BrokenProcessPool:
                        raise JobFailed(f"a clustering worker process died (killed, or out of memory?) while "
                                           f"shard {shard} was pending; the shards already finished are kept: "
                                           f"run the same command again to resume") from None
                    except Exception as e:
                        raise RuntimeError(f"clustering shard {shard} failed: {e}") from e
                    closed.add(shard)
                    bar.update(users[shard] - reported[shard])
                    finished(stats)
                    out.append(stats)
        except BaseException:
            # Running shards are not finished: their files are not in the manifest, so a rerun redoes them.
            # Cutting the lifeline kills their workers, and waiting for them means that on return none is left
            # writing or holding the lock.
            line.cut()
            ex.shutdown(wait=True, cancel_futures=True)
            raise
        else:
            ex.shutdown(wait=True)
        finally:
            q.close()
    return out


def _run_dask(tasks, cfg, users, finished, bar, work) -> list[dict[str, Any]]:
    from distributed import Client, KilledWorker, LocalCluster, as_completed

    with contextlib.ExitStack() as stack:
        if cfg.scheduler:
            client = stack.enter_context(Client(cfg.scheduler))
        else:
            # Dask's nanny starts workers with OMP/MKL/OpenBLAS threads = 1; each worker runs one task at a time.
            cluster = stack.enter_context(LocalCluster(n_workers=n_workers(cfg, len(tasks)), threads_per_worker=1,
                                                       processes=True, dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        token = uuid.uuid4().hex[:12]  # unique per run: two runs on one scheduler must not share keys
        futs = client.map(work, tasks, key=[f"twinv2-cluster-{t.shard}-{token}" for t in tasks],
                          pure=False, retries=0)
        shard_of = {f.key: t.shard for f, t in zip(futs, tasks)}
        out = []
        try:
            for f in as_completed(futs):
                try:
                    stats = f.result()
                except KilledWorker:  # Dask gave up after its workers died on the task (allowed-failures)
                    raise JobFailed(f"Dask workers died (killed, or out of memory?) running shard "
                                    f"{shard_of[f.key]}; the shards already finished are kept: run the same "
                                    f"command again to resume") from None
                except Exception as e:
                    raise RuntimeError(f"clustering shard {shard_of[f.key]} failed: {e}") from e
                bar.update(users[stats["shard"]])
                finished(stats)
                out.append(stats)
        finally:
            client.cancel(futs)
        return out
