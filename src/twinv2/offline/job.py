"""The offline clustering job: every user's life cycle before a snapshot time → virtual items (paper §3.3.1-3.3.2).

`run_cluster_job` maps `cluster_shard` over the dataset's behaviour shards (users never cross shards, so
there is no shuffle) on a local process pool or a Dask cluster, and writes ``<dataset>/clusters/<snapshot>/``
(layout and reader in store.py). Each user's clustering is seeded by hash(seed, user_id), so the output bytes
do not depend on the engine, the number of workers or the order in which shards run.

Resuming: the manifest is rewritten as each shard finishes; a restarted job skips shards the manifest lists
whose file still has the recorded checksum and whose input is unchanged, and redoes every other one.
Refreshing: with `base_snapshot`, users whose history fingerprint (behaviours before the snapshot, time of the
last one) equals the base snapshot's keep their clusters; only the others are clustered again.

Leakage: only behaviours with ts < snapshot_ts are read; a sample may use a snapshot only if its snapshot_ts
is at or before the start of the sample's day (DESIGN.md, "Data model").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twinv2.config import to_dict
from twinv2.data.checksum import VerifiedMarker, file_entry, verify_files
from twinv2.data.csr import cuts_before
from twinv2.data.dirs import failpoint
from twinv2.data.storage import Dataset, part_name
from twinv2.offline import store
from twinv2.schema import DataError, completion_ratio

ENGINES = ("local", "dask")
# Settings that change the output; engine, workers, scheduler and threads do not.
CLUSTERING_KEYS = ("gamma", "delta_exponent", "variant", "edges", "backend", "n_iter", "max_points_per_centroid",
                   "seed")


@dataclass(frozen=True)
class ClusterJobConfig:
    """Settings of the offline clustering job.

    Clustering (Algorithm 1; these define the result):
        gamma: clusters have fewer than gamma behaviours (paper: 20).
        delta_exponent: adaptive branching δ = ⌊|V|^delta_exponent⌋ (paper: 0.3).
        variant: "adaptive" (TWIN-V2), "binary" or "balanced_binary" (Table 4's alternatives).
        edges: completion-ratio group edges (paper: five equal bins of [0, 1]).
        backend: k-means implementation, "numpy" (default), "faiss" or "sklearn" (slow reference).
        n_iter: Lloyd rounds per k-means call (at most).
        max_points_per_centroid: a set with more than δ times this many behaviours trains its k-means on a
            random subsample of that size, then assigns every behaviour (faiss's rule); None = no subsample.
        seed: base seed; user u is clustered with hash(seed, u).
        The defaults of backend (numpy, was faiss) and max_points_per_centroid (256, was None) and the
        measurements behind them are documented on hierarchical.HierarchicalClusterer.
    Execution (does not change the result):
        engine: "local" (process pool on this machine) or "dask".
        workers: processes (local) or Dask workers started by a LocalCluster; 0 = one per CPU core
            (capped at the number of shards to run). workers=1 with engine "local" runs in this process.
        scheduler: address of a running Dask scheduler ("tcp://host:8786"); None starts a LocalCluster.
            Remote workers must see the dataset and embeddings at the same paths (a shared file system).
        threads_per_worker: BLAS/OpenMP/faiss threads inside each worker (1: parallelism is across users).
    """

    gamma: int = 20
    delta_exponent: float = 0.3
    variant: str = "adaptive"
    edges: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    backend: str = "numpy"
    n_iter: int = 20
    max_points_per_centroid: int | None = 256
    seed: int = 0
    engine: str = "local"
    workers: int = 0
    scheduler: str | None = None
    threads_per_worker: int = 1

    def __post_init__(self) -> None:
        # The clusterer validates the algorithm's settings and names the offending value.
        self.clusterer(self.seed)
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0 (0 = one per core), got {self.workers!r}")
        if self.scheduler is not None and (not isinstance(self.scheduler, str) or not self.scheduler):
            raise ValueError(f"scheduler must be an address such as 'tcp://host:8786' or None, got {self.scheduler!r}")
        if self.scheduler is not None and self.engine != "dask":
            raise ValueError(f"scheduler {self.scheduler!r} is only used with engine='dask', not {self.engine!r}")
        if isinstance(self.threads_per_worker, bool) or not isinstance(self.threads_per_worker, int) \
                or self.threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be an integer >= 1, got {self.threads_per_worker!r}")

    def clustering(self) -> dict[str, Any]:
        """The settings that define the result, as plain data (stored in the manifest)."""
        d = to_dict(self)
        return {k: d[k] for k in CLUSTERING_KEYS}

    def clusterer(self, seed: int):
        from twinv2.offline.hierarchical import HierarchicalClusterer

        return HierarchicalClusterer(gamma=self.gamma, delta_exponent=self.delta_exponent, variant=self.variant,
                                     edges=self.edges, backend=self.backend, n_iter=self.n_iter,
                                     max_points_per_centroid=self.max_points_per_centroid, seed=seed)


def user_seed(seed: int, user_id: int) -> int:
    """Seed of one user's clustering: a hash of (seed, user_id), independent of engine and order."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(user_id)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


# ---- one user ------------------------------------------------------------------------------------------
def cluster_user(user_id: int, history: Mapping[str, np.ndarray], embeddings: np.ndarray,
                 cfg: ClusterJobConfig = ClusterJobConfig(), author_id: np.ndarray | None = None,
                 tag: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Cluster one user's behaviours into virtual items (Algorithm 1, Eq. 5-7). Pure: no I/O.

    Args:
        user_id: the user (seeds the clustering together with cfg.seed).
        history: (T,) arrays item_id, ts, play_ms, duration_ms (any order; T may be 0). Unknown values are
            play_ms < 0 or NaN and duration_ms <= 0 or NaN: such rows fall in the unknown-ratio group and are
            left out of the means of that feature.
        embeddings: (T, D) float item embeddings K_s of the behaviours (finite).
        cfg: clustering settings.
        author_id, tag: (T,) categorical features of the items; -1 (unknown) when omitted.

    Returns:
        store.COLUMNS as (C,) arrays, one entry per cluster, ordered by cluster id.
    """
    return _cluster_user(user_id, history, embeddings, cfg, author_id, tag)[0]


def _cluster_user(user_id, history, embeddings, cfg, author_id=None, tag=None):
    """`cluster_user` plus each behaviour's cluster (T,) and the seconds spent in Algorithm 1 (benchmarks)."""
    item = np.asarray(history["item_id"], dtype=np.int64)
    T = len(item)
    ts = np.asarray(history["ts"], dtype=np.int64)
    play = np.asarray(history["play_ms"], dtype=np.float64)
    dur = np.asarray(history["duration_ms"], dtype=np.float64)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    author = np.full(T, -1, np.int64) if author_id is None else np.asarray(author_id, dtype=np.int64)
    tags = np.full(T, -1, np.int64) if tag is None else np.asarray(tag, dtype=np.int64)
    for name, a in (("ts", ts), ("play_ms", play), ("duration_ms", dur), ("author_id", author), ("tag", tags)):
        if a.shape != (T,):
            raise ValueError(f"user {user_id}: {name} has shape {a.shape}, expected ({T},) like item_id")
    if emb.ndim != 2 or len(emb) != T:
        raise ValueError(f"user {user_id}: embeddings have shape {emb.shape}, expected ({T}, D)")
    if T == 0:
        return store.empty_columns(), np.zeros(0, np.int64), 0.0
    from twinv2.offline.virtual_items import virtual_items

    t0 = time.perf_counter()
    km = cfg.clusterer(user_seed(cfg.seed, user_id)).fit(emb, play, dur)
    fit_s = time.perf_counter() - t0
    labels, C = km.labels_, km.n_clusters_
    # Eq. 5: numeric features are member means; unknown values are NaN and skipped (NaN if all unknown).
    play_known = np.where(play >= 0, play, np.nan)
    dur_known = np.where(dur > 0, dur, np.nan)
    ratio = completion_ratio(play_known, dur_known)
    vi = virtual_items(labels, emb,
                       numeric={"duration_ms": dur_known, "play_ms": play_known, "ratio": ratio,
                                "ts": ts.astype(np.float64)},
                       categorical={"item_id": item, "author_id": author, "tag": tags})
    out = {
        "user_id": np.full(C, int(user_id), np.int64),
        "cluster": np.arange(C, dtype=np.int32),
        "n": vi["n"].astype(np.int32),
        "group": km.group_of_cluster_.astype(np.int8),
        **{k: vi[k].astype(store.COLUMNS[k]) for k in ("item_id", "author_id", "tag", "duration_ms", "play_ms",
                                                        "ratio", "ts")},
        "user_n": np.full(C, T, np.int64),
        "user_last_ts": np.full(C, int(ts.max()), np.int64),
    }
    return out, labels, fit_s


# ---- inputs --------------------------------------------------------------------------------------------
def history_cuts(csr, snapshot_ts: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, cuts) per user of a shard: rows [start, cut) are the user's behaviours with ts < snapshot_ts."""
    starts = np.asarray(csr.offsets[:-1], dtype=np.int64)
    return starts, cuts_before(csr.columns["ts"], starts, csr.offsets[1:], snapshot_ts)


def user_fingerprints(csr, starts: np.ndarray, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_ids, n, last_ts) of the users with at least one behaviour before the snapshot."""
    has = cuts > starts
    ts = csr.columns["ts"]
    last = np.asarray(ts[cuts[has] - 1], dtype=np.int64) if has.any() else np.zeros(0, np.int64)
    return np.asarray(csr.user_ids[has], dtype=np.int64), (cuts - starts)[has], last


def input_fingerprint(csr, snapshot_ts: int, cuts: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    """Hash of (user_id, behaviours before the snapshot, last ts before it) over the shard's users.

    Cheap (no history is read) and enough for logs that only grow; a behaviour edited in place without
    changing the count or the last time is not seen.
    """
    uid, n, last = user_fingerprints(csr, *(cuts if cuts is not None else history_cuts(csr, snapshot_ts)))
    h = hashlib.sha256()
    for a in (uid, n, last):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.hexdigest()


_EMB_CACHE: dict[str, "ResolvedEmbeddings"] = {}
_ITEMS_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray, Any]] = {}
RESOLVED = "embeddings.resolved"
_RESOLVED_FILES = ("item_ids.npy", "vectors.npy", "unknown.npy")


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


@dataclass
class ResolvedEmbeddings:
    """The EmbeddingTable with its fallbacks already applied, as memory-mapped .npy files.

    Built once per job in the main process (`resolve_embeddings`): every item of the items table and of the
    table itself gets `EmbeddingTable.lookup`'s vector, and `unknown` is the vector lookup gives any other id.
    Workers then need neither torch (which embed.py imports, seconds per process) nor a private copy of the
    table: the page cache holds one copy for all of them.
    """

    item_ids: np.ndarray  # (N,) int64 sorted
    vectors: np.ndarray  # (N, D) float32, memory-mapped
    unknown: np.ndarray  # (D,) float32

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """(T,) raw item ids → (T, D) float32, identical to EmbeddingTable.lookup(ids, items)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.item_ids) == 0:
            return np.tile(self.unknown, (len(ids), 1))
        pos = np.minimum(np.searchsorted(self.item_ids, ids), len(self.item_ids) - 1)
        found = self.item_ids[pos] == ids
        return np.where(found[:, None], self.vectors[pos], self.unknown[None, :]).astype(np.float32)


def resolve_embeddings(embeddings: Path, root: Path, out_dir: Path, stamp: dict[str, Any]) -> Path:
    """Write `<out_dir>/embeddings.resolved/` (see ResolvedEmbeddings) unless an up-to-date one exists: its
    stamp names the inputs and records each file's size and sha256, so a resumed job rebuilds a damaged one."""
    d = out_dir / RESOLVED
    try:
        body = json.loads((d / "stamp.json").read_text())
        if {k: v for k, v in body.items() if k != "files"} == stamp and set(body["files"]) == set(_RESOLVED_FILES):
            verify_files({n: d / n for n in _RESOLVED_FILES}, body["files"], VerifiedMarker(None), d / "stamp.json",
                         fix="rebuilding it")
            return d
    except DataError as e:
        warnings.warn(f"damaged resolved embeddings: {e}", RuntimeWarning, stacklevel=2)
    except (OSError, ValueError, KeyError, TypeError):  # none, or an older stamp without checksums
        pass
    from twinv2.offline.embed import EmbeddingTable

    table = EmbeddingTable.load(embeddings)
    known, _, _, items_df = load_items(root)
    ids = np.union1d(table.item_ids, known).astype(np.int64)
    vectors = np.asarray(table.lookup(ids, items_df), dtype=np.float32)
    probe = int(ids[-1]) + 1 if len(ids) and ids[-1] < np.iinfo(np.int64).max else int(ids[0]) - 1
    unknown = np.asarray(table.lookup(np.array([probe], np.int64), items_df), dtype=np.float32)[0]
    tmp = out_dir / f"{RESOLVED}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, arr in zip(_RESOLVED_FILES, (ids, vectors, unknown)):
        np.save(tmp / name, arr)
    files = {name: file_entry(tmp / name) for name in _RESOLVED_FILES}
    (tmp / "stamp.json").write_text(json.dumps({**stamp, "files": files}))
    failpoint("cluster-resolved")
    shutil.rmtree(d, ignore_errors=True)
    os.replace(tmp, d)
    return d


def load_embeddings(resolved_dir: str | Path) -> ResolvedEmbeddings:
    """The resolved embeddings of a job, opened once per process (workers reuse them across shards)."""
    d = Path(resolved_dir)
    key = (d / "stamp.json").read_text()
    if key not in _EMB_CACHE:
        _EMB_CACHE.clear()  # one table at a time: a worker never needs two
        _EMB_CACHE[key] = ResolvedEmbeddings(np.load(d / "item_ids.npy"), np.load(d / "vectors.npy", mmap_mode="r"),
                                             np.load(d / "unknown.npy"))
    return _EMB_CACHE[key]


def load_items(root: Path):
    """(item_ids sorted, author_id, tag, items frame) of a dataset, loaded once per process."""
    import pandas as pd

    p = Path(root) / "items.parquet"
    key = _stamp(p) if p.exists() else (str(p), 0, 0)
    if key not in _ITEMS_CACHE:
        df = pd.read_parquet(p) if p.exists() else pd.DataFrame(
            {"item_id": np.zeros(0, np.int64), "author_id": np.zeros(0, np.int64), "tag": np.zeros(0, np.int64),
             "duration_ms": np.zeros(0, np.int64)})
        df = df.sort_values("item_id", kind="stable").reset_index(drop=True)
        _ITEMS_CACHE.clear()
        _ITEMS_CACHE[key] = (df["item_id"].to_numpy(np.int64), df["author_id"].to_numpy(np.int64),
                             df["tag"].to_numpy(np.int64), df)
    return _ITEMS_CACHE[key]


def _categorical(item_ids: np.ndarray, known: np.ndarray, values: np.ndarray) -> np.ndarray:
    if len(known) == 0:
        return np.full(len(item_ids), -1, np.int64)
    pos = np.minimum(np.searchsorted(known, item_ids), len(known) - 1)
    return np.where(known[pos] == item_ids, values[pos], -1).astype(np.int64)


@contextlib.contextmanager
def limit_threads(n: int) -> Iterator[None]:
    """BLAS/OpenMP/faiss/torch threads of this process limited to n for the duration (restored after)."""
    from threadpoolctl import threadpool_limits

    import faiss

    prev_faiss = faiss.omp_get_max_threads()
    torch = sys.modules.get("torch")
    prev_torch = torch.get_num_threads() if torch is not None else None
    faiss.omp_set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        faiss.omp_set_num_threads(prev_faiss)
        if torch is not None and prev_torch is not None:
            torch.set_num_threads(prev_torch)


# ---- one shard -----------------------------------------------------------------------------------------
@dataclass
class ShardTask:
    """Everything a worker needs for one shard (plain data: it is pickled to processes and Dask workers)."""

    dataset: str
    shard: int
    snapshot_ts: int
    embeddings: str  # the job's resolved embeddings folder (resolve_embeddings)
    cfg: ClusterJobConfig
    out_dir: str
    base_part: str | None = None  # the base snapshot's verified part for this shard (refresh)


# Set in pool workers by the initializer: a queue that receives (shard, users done since last report).
_PROGRESS_QUEUE = None


def _init_worker(queue) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = queue


def cluster_shard(task: ShardTask, report: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Cluster every user of one behaviour shard and write its part file atomically; returns its stats.

    `report(shard, users)` is called about every half second with the users finished since the last call
    (defaults to the pool's progress queue when there is one).
    """
    if report is None and _PROGRESS_QUEUE is not None:
        q = _PROGRESS_QUEUE
        report = lambda s, k: q.put((s, k))  # noqa: E731
    t0 = time.perf_counter()
    root = Path(task.dataset)
    cfg = task.cfg
    with limit_threads(cfg.threads_per_worker):
        ds = Dataset(root)
        csr = ds.csr(task.shard)
        starts, cuts = history_cuts(csr, task.snapshot_ts)
        has = cuts > starts
        reuse = store.UserIndex.open(task.base_part) if task.base_part else None
        cols = csr.columns
        ts_col = cols["ts"]
        last = np.zeros(len(starts), np.int64)
        if has.any():
            last[has] = ts_col[cuts[has] - 1]
        todo = has.copy()
        if reuse is not None:
            todo &= ~reuse.unchanged(csr.user_ids, cuts - starts, last)
        if todo.any():
            table = load_embeddings(task.embeddings)
            known, authors, tags, _ = load_items(root)
        writer = store.PartWriter(Path(task.out_dir) / part_name(task.shard))
        n_clustered = n_reused = n_beh = 0
        done_users, last_report = 0, time.perf_counter()
        try:
            for i in range(len(starts)):
                uid = int(csr.user_ids[i])
                if has[i] and todo[i]:
                    s, e = int(starts[i]), int(cuts[i])
                    hist = {k: np.asarray(cols[k][s:e]) for k in ("item_id", "ts", "play_ms", "duration_ms")}
                    it = hist["item_id"]
                    writer.append(cluster_user(uid, hist, table.lookup(it), cfg, _categorical(it, known, authors),
                                               _categorical(it, known, tags)))
                    n_clustered += 1
                elif has[i]:
                    writer.append(reuse.rows(uid))
                    n_reused += 1
                n_beh += int(cuts[i] - starts[i])
                done_users += 1
                if report is not None and time.perf_counter() - last_report > 0.5:
                    report(task.shard, done_users)
                    done_users, last_report = 0, time.perf_counter()
            failpoint("cluster-part")
            digest = writer.close()
            failpoint("cluster-part-written")  # in place, not yet in the manifest: a rerun must redo it
        except BaseException:
            writer.abort()
            raise
    if report is not None and done_users:
        report(task.shard, done_users)
    path = Path(task.out_dir) / part_name(task.shard)
    return {
        "shard": task.shard,
        "file": part_name(task.shard),
        "sha256": digest,
        "bytes": path.stat().st_size,
        "rows": writer.rows,
        "users": int(has.sum()),
        "users_in_shard": len(starts),
        "behaviours": n_beh,
        "clustered": n_clustered,
        "reused": n_reused,
        "seconds": round(time.perf_counter() - t0, 3),
        "input_fingerprint": input_fingerprint(csr, task.snapshot_ts, (starts, cuts)),
    }


# ---- the job -------------------------------------------------------------------------------------------
def snapshot_name(snapshot_ts: int) -> str:
    return f"before-{int(snapshot_ts)}"


def resolve_snapshot_dir(dataset: str | Path, name_or_path: str | Path) -> Path:
    """A bare name (no '/') is a snapshot under <dataset>/clusters/; anything else is a path."""
    s = str(name_or_path)
    if "/" not in s and os.sep not in s:
        return Path(dataset) / "clusters" / s
    return Path(name_or_path)


def run_cluster_job(dataset: str | Path, snapshot_before: int, embeddings: str | Path | None,
                    cfg: ClusterJobConfig = ClusterJobConfig(), out: str | Path | None = None,
                    base_snapshot: str | Path | None = None, progress: bool = True) -> Path:
    """Cluster every user's behaviours with ts < snapshot_before; returns the snapshot folder.

    Args:
        dataset: a dataset directory (storage.Dataset).
        snapshot_before: snapshot time, epoch ms; behaviours at or after it are never read.
        embeddings: an EmbeddingTable file (offline/embed.py) holding the item embeddings K_s; None = the
            one `twinv2 embed` writes by default, <dataset>/embeddings/item_embeddings.parquet.
        cfg: clustering and execution settings.
        out: the snapshot folder, or a bare name under <dataset>/clusters/; default
            <dataset>/clusters/before-<snapshot_before>. An unfinished run there is resumed.
        base_snapshot: an earlier snapshot (folder or bare name) made with the same clustering settings and
            embeddings: users whose history did not change copy their clusters from it (refresh).
        progress: show a progress bar (users/s, ETA) and print where the output went.
    """
    from twinv2.offline import engines

    if not isinstance(cfg, ClusterJobConfig):
        raise TypeError(f"cfg must be a ClusterJobConfig, got {type(cfg).__name__}")
    if isinstance(snapshot_before, bool) or not isinstance(snapshot_before, (int, np.integer)):
        raise TypeError(f"snapshot_before must be an integer epoch time in ms, got {snapshot_before!r}")
    snapshot_ts = int(snapshot_before)
    ds = Dataset(dataset)
    lo, hi = ds.time_range_ms  # the times its import accepted (any year; 2000..2100 by default)
    if not lo <= snapshot_ts <= hi:
        raise ValueError(f"snapshot_before {snapshot_ts} is outside the dataset's time range [{lo}, {hi}] "
                         f"(epoch ms){'; seconds instead of ms?' if lo <= snapshot_ts * 1000 <= hi else ''}")
    root = ds.root.resolve()
    emb_path = Path(embeddings) if embeddings is not None else root / "embeddings" / "item_embeddings.parquet"
    if not emb_path.exists():
        raise FileNotFoundError(f"embeddings not found: {emb_path} (make them with `twinv2 embed`)")
    out_dir = resolve_snapshot_dir(root, out if out is not None else snapshot_name(snapshot_ts))
    out_dir.mkdir(parents=True, exist_ok=True)
    with engines.lock(out_dir) as lock_fd:
        header = {
            "dataset": str(root),
            "n_shards": ds.n_shards,
            "snapshot_ts": snapshot_ts,
            "config": cfg.clustering(),
            "embeddings": {"path": str(emb_path.resolve()), "sha256": store.sha256_tree(emb_path)},
            "items_sha256": store.sha256_file(root / "items.parquet") if (root / "items.parquet").exists() else None,
        }
        old = store.read_manifest(out_dir)
        if old is not None:
            diff = [k for k in ("n_shards", "snapshot_ts", "config", "embeddings", "items_sha256")
                    if _comparable(old.get(k), k) != _comparable(header[k], k)]
            if diff:
                raise ValueError(f"{out_dir} holds a snapshot made with different {diff}; pass another `out` "
                                 f"or delete the folder")
        # Left by a killed run; the lock says none is running (its workers hold it too: engines.lock).
        for p in out_dir.glob("part-*.parquet.tmp-*"):
            p.unlink()
        for p in out_dir.glob(f"{RESOLVED}.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
        base = _base_parts(root, base_snapshot, header) if base_snapshot is not None else {}
        shards = old.get("shards", {}) if old else {}
        fingerprints = {s: input_fingerprint(ds.csr(s), snapshot_ts) for s in range(ds.n_shards)}
        done = [s for s in range(ds.n_shards) if store.shard_is_done(out_dir, old, s, fingerprints[s])]
        shards = {str(s): shards[str(s)] for s in done}
        todo = [s for s in range(ds.n_shards) if s not in done]
        listed = {e.get("file") for e in (old or {}).get("shards", {}).values() if isinstance(e, dict)}
        for s in todo:  # a part no manifest listed: a killed run's, renamed after its stats were lost
            if part_name(s) not in listed:
                (out_dir / part_name(s)).unlink(missing_ok=True)
        manifest = {**header, "complete": not todo, "shards": shards,
                    "base_snapshot": str(resolve_snapshot_dir(root, base_snapshot)) if base_snapshot else None}
        store.write_manifest(out_dir, manifest)
        failpoint("cluster-started")
        resolved = ""
        if todo:
            stamp = {"embeddings": header["embeddings"]["sha256"], "items": header["items_sha256"]}
            resolved = str(resolve_embeddings(emb_path, root, out_dir, stamp))
        tasks = [ShardTask(str(root), s, snapshot_ts, resolved, cfg, str(out_dir), base_part=base.get(s))
                 for s in todo]
        # Biggest shards first: the last task to start is then a short one.
        tasks.sort(key=lambda t: -int(ds.csr(t.shard).n_rows))
        users = {t.shard: ds.csr(t.shard).n_users for t in tasks}
        if progress and done:
            print(f"resuming: {len(done)} of {ds.n_shards} shards already done", file=sys.stderr)
        t0 = time.perf_counter()

        def finished(stats: dict[str, Any]) -> None:
            manifest["shards"][str(stats["shard"])] = stats
            manifest["complete"] = len(manifest["shards"]) == ds.n_shards
            store.write_manifest(out_dir, manifest)
            failpoint("cluster-recorded")

        results = engines.run(tasks, cfg, users, finished, progress, work=cluster_shard,
                              init_worker=_init_worker, hold=(lock_fd,)) if tasks else []
        manifest["last_run"] = {
            "skipped_shards": sorted(done),
            "done_shards": sorted(r["shard"] for r in results),
            "clustered_users": sum(r["clustered"] for r in results),
            "reused_users": sum(r["reused"] for r in results),
            "seconds": round(time.perf_counter() - t0, 3),
            "engine": cfg.engine,
        }
        manifest["complete"] = len(manifest["shards"]) == ds.n_shards
        store.write_manifest(out_dir, manifest)
        failpoint("cluster-finished")
        if manifest["complete"]:  # only workers read it; a resumed run rebuilds it
            shutil.rmtree(out_dir / RESOLVED, ignore_errors=True)
    if progress:
        print(f"clusters written to {out_dir}", file=sys.stderr)
    return out_dir


def _comparable(v: Any, key: str) -> Any:
    # The embeddings may be moved; only their content matters.
    return v.get("sha256") if key == "embeddings" and isinstance(v, dict) else v


def _base_parts(root: Path, base_snapshot: str | Path, header: dict[str, Any]) -> dict[int, str]:
    """Verified part files of the base snapshot by shard; {} (with a warning) when it cannot be reused."""
    bdir = resolve_snapshot_dir(root, base_snapshot)
    bm = store.read_manifest(bdir)
    if bm is None:
        raise FileNotFoundError(f"base snapshot not found: {bdir} (no {store.MANIFEST})")
    diff = [k for k in ("n_shards", "config", "embeddings", "items_sha256")
            if _comparable(bm.get(k), k) != _comparable(header[k], k)]
    if diff:
        warnings.warn(f"base snapshot {bdir} was made with different {diff}; clustering every user again",
                      stacklevel=3)
        return {}
    if int(bm["snapshot_ts"]) > header["snapshot_ts"]:
        raise ValueError(f"base snapshot {bdir} is later ({bm['snapshot_ts']}) than the new snapshot "
                         f"({header['snapshot_ts']}); a refresh moves forward in time")
    return {s: str(bdir / bm["shards"][str(s)]["file"]) for s in range(int(bm["n_shards"]))
            if store.shard_is_done(bdir, bm, s)}


__all__ = ["ClusterJobConfig", "cluster_user", "cluster_shard", "run_cluster_job", "ShardTask", "user_seed",
           "snapshot_name", "store"]
