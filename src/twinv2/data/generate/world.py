"""`generate_world`: write a generated world as a twinv2 dataset directory, streaming, in parallel by shard.

Order of work: items (and their hidden truth), the user table, the pilot calibration, then one job per shard
(behaviours, samples and the shard's truth tables). A shard is written by exactly one process, users in
increasing id order, and every user draws from its own generator rng([seed, user_id]); so the bytes depend on
the config alone, never on the number of workers. Memory is bounded by one user plus one flush buffer.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import queue
import sys
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from twinv2.config import to_dict
from twinv2.data.generate.calibrate import calibrate, topic_mass
from twinv2.data.generate.config import WorldConfig
from twinv2.data.generate.items import ItemWorld, build_items, user_rng
from twinv2.data.generate.streams import TERMS, Calibration, UserDraw, finish_user, simulate_user
from twinv2.data.generate.users import user_table
from twinv2.data.premise import write_premise
from twinv2.data.dirs import failpoint, staged_dir
from twinv2.data.lifeline import Lifeline
from twinv2.data.storage import (ShardedWriter, eval_days, part_name, shard_of, warmup_days, write_manifest,
                                 write_table)
from twinv2.schema import BEHAVIOURS, SAMPLES, JobFailed

FLUSH_ROWS = 1 << 20  # behaviour rows buffered per shard before a Parquet write (~40 MB)
FLUSH_USERS = 4096  # or this many users, whichever comes first
PROGRESS_EVERY = 32  # users between progress reports from a worker

TRUTH_README = """Ground truth of a generated world. Models must never read this directory.

item_latent.npy      (n_items, latent_dim) float32, row i = item_id i+1: unit latent vectors
item_topic.npy       (n_items,) int32 hidden topic of each item
item_popularity.npy  (n_items,) float64 draw probability by popularity
topic_centroid.npy   (n_topics, latent_dim) float32 topic centroids
topic_tag.npy        (n_topics,) int64 true tag of each topic
interests/part-*.parquet    per user: kind (0 persistent, 1 seasonal, 2 old, 3 recent), topic, strength,
                            window start/end, period/phase/on (seasonal), first active time,
                            favourite author (-1 none)
impressions/part-*.parquet  per sample (same order as samples/): source (0 current interest, 1 dormant
                            interest, 2 popular, 3 random) and the click-model terms a_cur, a_far, fav_cur,
                            fav_far, pop, rec (see twinv2.data.generate.streams.click_logit)
behaviours/part-*.parquet   per behaviour (same order as behaviours/): the interest that drew it (its row
                            among the user's rows in interests/), -1 for exploration (popular or random)
calibration.json     the pilot's watch-score quantiles and click bias

../premise.json      the world's premise measured from this folder (twinv2.data.premise): share of test
                     samples whose target interest has evidence only beyond the latest 10,000 behaviours,
                     and the oracle AUC with and without that evidence
"""


@dataclass
class ShardJob:
    """The users of one shard (increasing id) and what is needed to generate them."""

    root: str
    cfg: WorldConfig
    cal: Calibration
    shard: int
    user_id: np.ndarray
    length: np.ndarray
    life_start: np.ndarray
    level: np.ndarray


_WORLDS: dict[str, ItemWorld] = {}
_QUEUE: "mp.Queue | None" = None


def _init_worker(q: "mp.Queue") -> None:
    global _QUEUE
    _QUEUE = q
    _one_blas_thread()  # kept for the worker's life (never exited)


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread (a context manager): the products here are tiny, and spinning BLAS threads
    of two workers fight over the same cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional (it comes with scikit-learn): without it BLAS keeps its default
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _world(root: str, zipf_exponent: float) -> ItemWorld:
    if root not in _WORLDS:
        _WORLDS[root] = ItemWorld.load(Path(root), zipf_exponent)
    return _WORLDS[root]


def _truth_rows(draw: UserDraw, user_id: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                                       dict[str, np.ndarray]]:
    i = draw.interests
    k, s = len(i.kind), len(draw.s_ts)
    ints = {"user_id": np.full(k, user_id, dtype=np.int64), "kind": i.kind, "topic": i.topic,
            "strength": i.strength, "start_ms": i.start_ms, "end_ms": i.end_ms, "period_ms": i.period_ms,
            "phase_ms": i.phase_ms, "on_ms": i.on_ms, "first_on_ms": i.first_on_ms, "fav_author": i.fav_author}
    imp = {"user_id": np.full(s, user_id, dtype=np.int64), "ts": draw.s_ts, "item_id": draw.s_item + 1,
           "source": draw.s_source, **{name: v.astype(np.float32) for name, v in draw.s_terms.items()}}
    beh = {"user_id": np.full(len(draw.b_ts), user_id, dtype=np.int64), "interest": draw.b_interest}
    return ints, imp, beh


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


INTEREST_SCHEMA = pa.schema([("user_id", pa.int64()), ("kind", pa.int8()), ("topic", pa.int64()),
                             ("strength", pa.float64()), ("start_ms", pa.int64()), ("end_ms", pa.int64()),
                             ("period_ms", pa.int64()), ("phase_ms", pa.int64()), ("on_ms", pa.int64()),
                             ("first_on_ms", pa.int64()), ("fav_author", pa.int64())])
IMPRESSION_SCHEMA = pa.schema([("user_id", pa.int64()), ("ts", pa.int64()), ("item_id", pa.int64()),
                               ("source", pa.int8())] + [(t, pa.float32()) for t in TERMS])
BEHAVIOUR_TRUTH_SCHEMA = pa.schema([("user_id", pa.int64()), ("interest", pa.int8())])


class _TruthStream:
    """Appends chunks of one truth table of one shard to its Parquet file (always written, maybe empty)."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.schema = path, schema
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")

    def append(self, parts: list[dict[str, np.ndarray]]) -> None:
        if parts:
            cols = _concat(parts)
            self.writer.write_table(pa.table([cols[f.name] for f in self.schema], schema=self.schema))

    def close(self) -> None:
        self.writer.close()


def run_shard(job: ShardJob, world: ItemWorld | None = None,
              report: Callable[[int], None] | None = None) -> tuple[int, int, int]:
    """Generate and write one shard; returns (shard, behaviours, samples)."""
    world = world if world is not None else _world(job.root, job.cfg.zipf_exponent)
    if report is None and _QUEUE is not None:
        report = _QUEUE.put
    cfg, root = job.cfg, Path(job.root)
    mass = topic_mass(world)
    # Dictionary pages pay only on columns that repeat (a user's id, an item's duration); elsewhere they
    # cost write time (~40%) for nothing.
    bw = ShardedWriter(root, BEHAVIOURS, cfg.n_shards, use_dictionary=["user_id", "duration_ms"])
    sw = ShardedWriter(root, SAMPLES, cfg.n_shards, extras={"p_true": "float32"})
    name = part_name(job.shard)
    iw = _TruthStream(root / "truth" / "interests" / name, INTEREST_SCHEMA)
    tw = _TruthStream(root / "truth" / "impressions" / name, IMPRESSION_SCHEMA)
    hw = _TruthStream(root / "truth" / "behaviours" / name, BEHAVIOUR_TRUTH_SCHEMA)
    bufs: dict[str, list[dict[str, np.ndarray]]] = {"b": [], "s": [], "i": [], "t": [], "h": []}
    buffered = done = 0

    def flush() -> None:
        if bufs["b"]:
            bw.append(job.shard, _concat(bufs["b"]))
        if bufs["s"]:
            sw.append(job.shard, _concat(bufs["s"]))
        iw.append(bufs["i"])
        tw.append(bufs["t"])
        hw.append(bufs["h"])
        for v in bufs.values():
            v.clear()

    for j, uid in enumerate(job.user_id.tolist()):
        draw = simulate_user(user_rng(cfg.seed, uid), int(job.length[j]), int(job.life_start[j]),
                             int(job.level[j]), world, cfg, mass)
        beh, smp = finish_user(draw, uid, world, cfg, job.cal)
        ints, imp, beh_truth = _truth_rows(draw, uid)
        bufs["b"].append(beh)
        bufs["h"].append(beh_truth)
        bufs["i"].append(ints)
        if len(smp["ts"]):
            bufs["s"].append(smp)
            bufs["t"].append(imp)
        buffered += len(beh["ts"])
        # Bounded memory: flush on behaviour rows, or on users when they are short (truth rows per user).
        if buffered >= FLUSH_ROWS or len(bufs["i"]) >= FLUSH_USERS:
            flush()
            buffered = 0
        done += 1
        if report is not None and done == PROGRESS_EVERY:
            report(done)
            done = 0
    flush()
    failpoint("shard")
    bw.close(shards=[job.shard])
    sw.close(shards=[job.shard])
    iw.close()
    tw.close()
    hw.close()
    if report is not None and done:
        report(done)
    return job.shard, int(bw.rows[job.shard]), int(sw.rows[job.shard])


def _n_workers(workers: int | None, n_shards: int) -> int:
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return min(workers, n_shards)


def _run_pool(jobs: list[ShardJob], n_workers: int, bar: tqdm) -> list[tuple[int, int, int]]:
    # spawn, not fork: the parent has already started pyarrow's threads, and forking a threaded process
    # can deadlock. Workers reload the items from disk (the latent vectors memory-mapped, shared).
    # A process pool that notices a dead worker: multiprocessing.Pool would wait forever for the lost shard of
    # a worker killed (say, by the OOM killer); here the run stops with an error and its folder is removed.
    ctx = mp.get_context("spawn")
    q = ctx.Queue()

    def drain(wait_s: float) -> None:
        while True:
            try:
                bar.update(q.get(timeout=wait_s))
            except queue.Empty:
                return

    # The workers die with this process (data/lifeline.py), or when a failure here cuts the line: none is left
    # writing into a staging folder that the next run deletes.
    with Lifeline() as line:
        init, initargs = line.initializer(_init_worker, (q,))
        with cf.ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=init, initargs=initargs) as pool:
            futures = [pool.submit(run_shard, j) for j in jobs]  # in order: biggest shards first
            pending = set(futures)
            try:
                while pending:
                    done, pending = cf.wait(pending, timeout=0.2)
                    drain(0.0)
                    for f in done:
                        f.result()  # a worker's exception, or BrokenProcessPool if one died
            except BrokenProcessPool:
                line.cut()
                raise JobFailed("a `generate` worker process died (killed, or out of memory?); nothing was "
                                   "written to the output folder; run the command again") from None
            except BaseException:
                line.cut()  # the pool's exit then waits for dead workers, not for their shards
                raise
            drain(0.05)
    return [f.result() for f in futures]


def generate_world(cfg: WorldConfig, out: str | Path, overwrite: bool = False, workers: int | None = None,
                   progress: bool = True) -> Path:
    """Generate the world `cfg` into the dataset directory `out` and return its root.

    `workers` processes (default min(2, CPUs), at most n_shards) each write whole shards; the files are the
    same for any worker count. An existing dataset at `out` is replaced only with `overwrite`. With
    `progress`, a tqdm bar on stderr shows users done and users/s.
    """
    if not isinstance(cfg, WorldConfig):
        raise TypeError(f"cfg must be a WorldConfig, got {type(cfg).__name__}")
    n_workers = _n_workers(workers, cfg.n_shards)
    # Written into a temporary sibling and renamed into place once complete (premise included), so a kill at
    # any instant leaves no dataset or a whole one, and a rerun starts afresh (issue 14).
    with staged_dir(Path(out), overwrite) as tmp, _one_blas_thread():  # the parent's own work
        _generate(cfg, tmp, n_workers, progress)
    return Path(out)


def _generate(cfg: WorldConfig, root: Path, n_workers: int, progress: bool) -> Path:
    """The body of generate_world, in an empty dataset directory."""
    world = build_items(cfg)
    world.save(root)
    failpoint("items")
    users = user_table(cfg)
    write_table(root / "users.parquet", users.frame())
    failpoint("users")
    cal = calibrate(cfg, world, users.thresholds)
    shard = shard_of(users.user_id, cfg.n_shards)
    jobs = []
    for s in range(cfg.n_shards):
        m = shard == s
        jobs.append(ShardJob(root=str(root), cfg=cfg, cal=cal, shard=s, user_id=users.user_id[m],
                             length=users.length[m], life_start=users.life_start_ms[m], level=users.level[m]))
    jobs.sort(key=lambda j: -int(j.length.sum()))  # biggest first balances the pool; output does not depend on it
    with tqdm(total=cfg.n_users, unit="user", desc=f"generate {cfg.name}", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        if n_workers == 1:
            results = [run_shard(j, world, bar.update) for j in jobs]
        else:
            del world  # workers load their own copy (vectors memory-mapped); free the parent's
            results = _run_pool(jobs, n_workers, bar)
    failpoint("shards")
    n_beh = sum(r[1] for r in results)
    n_smp = sum(r[2] for r in results)
    assert n_beh == int(users.length.sum()), "every user gets exactly its life length of behaviours"
    (root / "truth" / "README.txt").write_text(TRUTH_README)
    (root / "truth" / "calibration.json").write_text(json.dumps(dataclasses.asdict(cal), indent=2) + "\n")
    days = eval_days(cfg.eval_start_ms, cfg.n_eval_days)
    write_manifest(root, {
        "name": cfg.name,
        "source": "generated",
        "n_shards": cfg.n_shards,
        "counts": {"users": cfg.n_users, "items": cfg.n_items, "behaviours": n_beh, "samples": n_smp},
        "eval_days": [dataclasses.asdict(d) for d in days],
        # Train-only days before the evaluation days (Dataset.warmup_days); their samples are never tested.
        "warmup_days": [dataclasses.asdict(d) for d in warmup_days(cfg.eval_start_ms, cfg.warmup_days)],
        "cross_features": [],
        "sample_extras": ["p_true"],
        "config": to_dict(cfg),
        "seed": cfg.seed,
        "calibration": {"bias": cal.bias, "affinity_mean": cal.affinity_mean, "affinity_std": cal.affinity_std},
    })
    failpoint("manifest")
    # The premise (share of test samples with evidence only beyond the latest 10,000 behaviours, and the
    # oracle's ceiling for a life-cycle gain), measured from the truth; a sidecar like embeddings/ and clusters/.
    write_premise(root)
    return root
