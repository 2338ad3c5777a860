"""Item embeddings K_s for the offline clustering (TWIN-V2 §3.3.1): trained here, or supplied from a file.

The paper clusters each user's life cycle on item embeddings "from the recommendation model", so clusters
follow collaborative signal rather than item metadata. `train_item_embeddings` pre-trains the CTR model's own
item-side tables (models/embeddings.py: item id + author + tag) with a skip-gram objective on the behaviour
sequences: items watched within `window` steps of each other by the same user are pulled together, items
drawn from the count^0.75 distribution are pushed apart (negative sampling, as in word2vec / item2vec).
Only behaviours with ts < before_ts are read; by default that is the start of the first evaluation day, so
nothing the evaluation will score can leak into the clusters.

Every item of the items table gets a vector in the written table; an item without one of its own (never
in a sampled training pair, or absent from a supplied file) takes a fallback — see `EmbeddingTable.lookup`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from twinv2.config import to_dict
from twinv2.data.checksum import VerifiedMarker, file_entry, verify_files
from twinv2.data.csr import cuts_before
from twinv2.data.dirs import clean_dead_temps, failpoint
from twinv2.data.storage import Dataset, json_default, manifest_sha256
from twinv2.models.embeddings import ItemEmbedding, ItemVocab
from twinv2.schema import DataError

FALLBACKS = ("fallback-author", "fallback-tag", "fallback-global")
_NEG_TABLE_SIZE = 1 << 22  # word2vec's unigram table: negatives become one gather instead of a search


@dataclass(frozen=True)
class EmbedConfig:
    """Settings of `twinv2 embed` (training only; a supplied file keeps its own dimension)."""

    dim: int = 32  # D of every item-side table (and of K_s)
    window: int = 10  # pairs (item_t, item_t+k) for k = 1..window within one user's sequence
    negatives: int = 1  # negatives per positive pair, drawn ∝ count^0.75 (see below for why 1)
    epochs: int = 1  # passes; each draws a fresh sample of max_pairs pairs
    batch_size: int = 8192  # pairs per optimiser step (per-step overhead dominates below ~4k)
    lr: float = 0.05  # row-wise Adagrad step size (0.2 overshoots from the 0.1-std initialisation)
    max_pairs: int = 8_000_000  # pairs sampled per epoch, uniformly among all within-window pairs: caps the
    #                             cost (~30 s on one core) whatever the log size
    seed: int = 0  # pair sampling, negatives and initialisation
    threads: int = 1  # torch CPU threads while training (0 = os.cpu_count()); see below

    # Measured on the `small` generated world (29M behaviours, 200k items; quality = share of an item's 10
    # nearest neighbours in the hidden topic, 0.13 for random items of the same tag):
    #   max_pairs 4M / 8M / 16M with 1 negative: 16 / 30 / 54 s, purity 0.75 / 0.87 / 0.96;
    #   negatives 1 / 2 / 5 (8M pairs): purity 0.87 / 0.82 / 0.70 (word2vec's 5 also costs 2x the time);
    #   window 5 instead of 10 (2 negatives): 0.81 instead of 0.82.
    # threads: the ops are small and memory-bound; 2 threads were 1.25x faster than 1 on an idle 2-core box
    # but 8x slower when other processes shared the cores (OpenMP threads wait on each other).

    def __post_init__(self) -> None:
        for name in ("dim", "window", "negatives", "epochs", "batch_size", "max_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"EmbedConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"EmbedConfig.lr must be > 0, got {self.lr!r}")
        if self.threads < 0:
            raise ValueError(f"EmbedConfig.threads must be >= 0, got {self.threads!r}")


# ---- the table --------------------------------------------------------------------------------------------
@dataclass
class _Fallback:
    """Per-author and per-tag mean vectors of an embedding table, joined with one items table."""

    items_df: pd.DataFrame  # kept so `lookup` can reuse this for the same frame object
    item_ids: np.ndarray  # (I,) sorted ids of the items table
    author: np.ndarray  # (I,) raw author of each
    tag: np.ndarray  # (I,) raw tag of each
    author_ids: np.ndarray  # (A,) authors with at least one embedded item
    author_mean: np.ndarray  # (A, D)
    tag_ids: np.ndarray  # (G,)
    tag_mean: np.ndarray  # (G, D)
    global_mean: np.ndarray  # (D,)


def _group_means(keys: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean vector per key >= 0 (negative keys = unknown, skipped): (sorted keys (K,), means (K, D))."""
    ok = keys >= 0
    keys, vectors = keys[ok], vectors[ok]
    order = np.argsort(keys, kind="stable")
    keys, vectors = keys[order], vectors[order].astype(np.float64)
    if len(keys) == 0:
        return keys, np.zeros((0, vectors.shape[1]), np.float32)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sums = np.add.reduceat(vectors, starts, axis=0)  # (K, D)
    counts = np.diff(np.r_[starts, len(keys)])[:, None]
    return keys[starts], (sums / counts).astype(np.float32)


def _find(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, found) of each id in `sorted_ids`; position is clipped so it can always index."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == ids


@dataclass
class EmbeddingTable:
    """Item vectors K_s keyed by raw item id; the file format of `twinv2 embed`."""

    item_ids: np.ndarray  # (N,) int64, sorted, unique
    vectors: np.ndarray  # (N, D) float32, finite
    source: dict[str, int] = field(default_factory=dict)  # rows by origin: trained / file / fallback-*
    meta: dict[str, Any] = field(default_factory=dict)  # config, before_ts, ... (the JSON sidecar)
    _fallback: _Fallback | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.item_ids = np.asarray(self.item_ids, dtype=np.int64)
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        assert self.vectors.ndim == 2 and len(self.vectors) == len(self.item_ids), "table shape mismatch"
        assert len(self.item_ids) < 2 or bool(np.all(np.diff(self.item_ids) > 0)), "ids must be sorted unique"

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.item_ids)

    # ---- fallback ---------------------------------------------------------------------------------------
    def _fallback_for(self, items_df: pd.DataFrame | None) -> _Fallback:
        if self._fallback is not None and self._fallback.items_df is items_df:
            return self._fallback
        if len(self) == 0:
            raise ValueError("the embedding table is empty: there is no vector to fall back on")
        if items_df is None:
            empty = np.zeros(0, np.int64)
            ids, author, tag = empty, empty, empty
        else:
            vocab = ItemVocab.from_items(items_df)  # validates the columns and sorts
            ids = vocab.item_ids
            author = np.r_[-1, vocab.author_ids][vocab.author_of[1:]]
            tag = np.r_[-1, vocab.tag_ids][vocab.tag_of[1:]]
        pos, found = _find(ids, self.item_ids)
        own_author = np.where(found, author[pos] if len(ids) else -1, -1)
        own_tag = np.where(found, tag[pos] if len(ids) else -1, -1)
        a_ids, a_mean = _group_means(own_author, self.vectors)
        t_ids, t_mean = _group_means(own_tag, self.vectors)
        self._fallback = _Fallback(items_df, ids, author, tag, a_ids, a_mean, t_ids, t_mean,
                                   self.vectors.mean(axis=0, dtype=np.float64).astype(np.float32))
        return self._fallback

    def lookup(self, item_ids: np.ndarray, items_df: pd.DataFrame | None = None,
               return_counts: bool = False) -> np.ndarray | tuple[np.ndarray, dict[str, int]]:
        """The vector of every id in `item_ids`: (T,) → (T, D) float32; never raises for an unknown id.

        An id without its own row takes, in this order (the first that exists):
          1. fallback-author: the mean vector of the table's items by the same author (items_df's author_id),
          2. fallback-tag:    the mean vector of the table's items with the same tag,
          3. fallback-global: the mean vector of the whole table (also for ids absent from items_df).
        Author and tag -1 mean unknown and never match. With `return_counts`, also returns how many ids took
        each path ({"found": .., "fallback-author": .., ...}). Vectorised (binary searches); the author/tag
        means are computed once per `items_df` object and reused, so call it per user with the same
        (unmodified) frame. A table written by `embed` already covers every item, so there it is one gather.
        """
        if len(self) == 0:
            raise ValueError("the embedding table is empty: there is no vector to look up or fall back on")
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        pos, found = _find(self.item_ids, ids)
        out = self.vectors[pos]  # (T, D), rows of missing ids replaced below
        counts = {"found": int(found.sum()), **{k: 0 for k in FALLBACKS}}
        if not found.all():
            miss = np.flatnonzero(~found)
            out[miss], kinds = self._fallback_vectors(ids[miss], self._fallback_for(items_df))
            for i, k in enumerate(FALLBACKS):
                counts[k] = int((kinds == i).sum())
        return (out, counts) if return_counts else out

    @staticmethod
    def _fallback_vectors(ids: np.ndarray, fb: _Fallback) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (M, D), kind (M,) index into FALLBACKS) for ids without a row of their own."""
        pos, in_items = _find(fb.item_ids, ids)
        author = np.where(in_items, fb.author[pos] if len(fb.item_ids) else -1, -1)
        tag = np.where(in_items, fb.tag[pos] if len(fb.item_ids) else -1, -1)
        a_pos, a_ok = _find(fb.author_ids, author)
        t_pos, t_ok = _find(fb.tag_ids, tag)
        a_ok &= author >= 0
        t_ok &= (tag >= 0) & ~a_ok
        out = np.broadcast_to(fb.global_mean, (len(ids), len(fb.global_mean))).copy()  # (M, D)
        if a_ok.any():
            out[a_ok] = fb.author_mean[a_pos[a_ok]]
        if t_ok.any():
            out[t_ok] = fb.tag_mean[t_pos[t_ok]]
        kind = np.where(a_ok, 0, np.where(t_ok, 1, 2))
        return out, kind

    def complete(self, items_df: pd.DataFrame) -> "EmbeddingTable":
        """A table covering every item of `items_df` too; items without a row get the `lookup` fallback."""
        fb = self._fallback_for(items_df)
        _, found = _find(self.item_ids, fb.item_ids)
        missing = fb.item_ids[~found]
        vecs, kinds = self._fallback_vectors(missing, fb)
        ids = np.concatenate([self.item_ids, missing])
        order = np.argsort(ids, kind="stable")
        source = dict(self.source)
        for i, k in enumerate(FALLBACKS):
            source[k] = source.get(k, 0) + int((kinds == i).sum())
        meta = dict(self.meta, items_not_in_items_table=int(len(self) - found.sum()))
        return EmbeddingTable(ids[order], np.concatenate([self.vectors, vecs])[order], source, meta)

    # ---- files ------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one Parquet file (item_id, e0..e{D-1}) and a JSON sidecar `<stem>.json`, each atomically."""
        path = Path(path)
        if path.suffix != ".parquet":
            raise ValueError(f"{path}: embedding tables are saved as Parquet; use a .parquet file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        side = path.with_suffix(".json")
        for p in (path, side):
            clean_dead_temps(p)  # a killed save's
        cols = {"item_id": pa.array(self.item_ids)}
        cols.update({f"e{d}": pa.array(self.vectors[:, d]) for d in range(self.dim)})
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        pq.write_table(pa.table(cols), tmp, compression="zstd")
        failpoint("embed-save")
        side_tmp = side.with_name(side.name + f".tmp{os.getpid()}")
        body = {"n_items": len(self), "dim": self.dim, "source": self.source, "meta": self.meta,
                **file_entry(tmp)}  # the Parquet file's bytes and sha256, checked by `load`
        body = json.loads(json.dumps(body, default=json_default))  # plain JSON, so the checksum reads back equal
        body["manifest_sha256"] = manifest_sha256(body)  # the sidecar's own (a dataset manifest's kind)
        side_tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        os.replace(side_tmp, side)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EmbeddingTable":
        """Read a table: Parquet/CSV (item_id + e0..e{D-1}, or + one list column, or + numeric columns),
        .npz (arrays item_id + vectors) or .npy (structured item_id/vector, or 2-D with ids in column 0).

        Raises ValueError naming the file and the bad row/id for: no item_id column, non-integer ids,
        duplicate ids, inconsistent dimension, NaN or inf. A Parquet file with the JSON sidecar `save` writes
        is first checked against it (DataError naming the file when either is damaged: the sidecar carries
        its own checksum and the Parquet file's size and sha256); a sidecar written before it recorded them
        is accepted as it is.
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: embedding file not found")
        suffix = path.suffix.lower()
        side = path.with_suffix(".json")
        body = _sidecar(path, side) if suffix == ".parquet" and side.is_file() else None
        if suffix in (".parquet", ".pq"):
            ids, vecs = _from_frame(pd.read_parquet(path), path)
        elif suffix in (".csv", ".tsv"):
            ids, vecs = _from_frame(pd.read_csv(path, sep="\t" if suffix == ".tsv" else ","), path)
        elif suffix in (".npz", ".npy"):
            ids, vecs = _from_numpy(path)
        else:
            raise ValueError(f"{path}: unsupported embedding file type {suffix!r} (use .parquet, .csv, .npz, .npy)")
        ids, vecs = _validated(ids, vecs, path)
        source: dict[str, int] = {"file": len(ids)}
        meta: dict[str, Any] = {"file": str(path)}
        if body is not None and body.get("n_items") == len(ids):
            source, meta = body.get("source", source), body.get("meta", meta)
        return cls(ids, vecs, source, meta)


REDO_EMBED = "run `twinv2 embed` again"


def _sidecar(path: Path, side: Path) -> dict[str, Any]:
    """The sidecar of the table `path`, both checked (see `EmbeddingTable.load`)."""
    try:
        body = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{side}: unreadable sidecar of {path.name} ({str(e)[:120]}); {REDO_EMBED}") from None
    if not isinstance(body, dict):
        raise DataError(f"{side}: not an embedding table sidecar (a JSON {type(body).__name__}); {REDO_EMBED}")
    # Any of the three present means a checksummed sidecar (one damaged key must not turn the check off).
    if any(k in body for k in ("manifest_sha256", "sha256", "bytes")):
        if body.get("manifest_sha256") != manifest_sha256(body):
            raise DataError(f"{side}: checksum mismatch (manifest_sha256): the sidecar was edited or damaged "
                            f"after it was written; {REDO_EMBED}")
        verify_files({path.name: path}, {path.name: body}, VerifiedMarker(None), side, fix=REDO_EMBED)
    return body


def _from_frame(df: pd.DataFrame, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if "item_id" not in df.columns:
        raise ValueError(f"{path}: no 'item_id' column; columns present: {list(df.columns)[:12]}")
    rest = [c for c in df.columns if c != "item_id"]
    named = [c for c in rest if re.fullmatch(r"e\d+", str(c))]
    if named:
        want = [f"e{d}" for d in range(len(named))]
        if sorted(named, key=lambda c: int(c[1:])) != want:
            raise ValueError(f"{path}: vector columns must be e0..e{len(named) - 1}; found {named[:12]}")
        cols = want
    elif len(rest) == 1 and df[rest[0]].dtype == object:  # one list/array column
        lens = df[rest[0]].map(lambda v: 0 if v is None or np.ndim(v) != 1 else len(v)).to_numpy()
        bad = np.flatnonzero((lens != lens[0]) | (lens == 0)) if len(lens) else []
        if len(bad):
            r = int(bad[0])
            raise ValueError(f"{path}: inconsistent vector dimension: row {r} (item_id {df['item_id'].iloc[r]}) "
                             f"has {lens[r]} values in column '{rest[0]}', row 0 has {lens[0]}")
        try:
            vecs = np.stack(df[rest[0]].to_numpy()).astype(np.float64) if len(df) else np.zeros((0, 1))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: column '{rest[0]}' does not hold numeric vectors ({err})") from err
        return df["item_id"].to_numpy(), vecs
    else:
        cols = rest
    if not cols:
        raise ValueError(f"{path}: no vector columns besides item_id")
    out = np.empty((len(df), len(cols)), np.float64)
    for j, c in enumerate(cols):
        num = pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
        bad = np.isnan(num) & df[c].notna().to_numpy()
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: column '{c}' row {r} (item_id {df['item_id'].iloc[r]}) is not a number: "
                             f"{df[c].iloc[r]!r}")
        out[:, j] = num
    return df["item_id"].to_numpy(), out


def _from_numpy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            idk = next((k for k in ("item_id", "item_ids") if k in keys), None)
            veck = next((k for k in ("vectors", "vector", "embeddings") if k in keys), None)
            if idk is None or veck is None:
                raise ValueError(f"{path}: expected arrays 'item_id' and 'vectors'; found {sorted(keys)}")
            return z[idk], z[veck]
    arr = np.load(path, allow_pickle=False)
    if arr.dtype.names:
        if "item_id" not in arr.dtype.names or "vector" not in arr.dtype.names:
            raise ValueError(f"{path}: structured array needs fields 'item_id' and 'vector'; has {arr.dtype.names}")
        return arr["item_id"], arr["vector"]
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"{path}: expected a 2-D array with item_id in column 0 and the vector after it, "
                         f"got shape {arr.shape} (no item_id column)")
    return arr[:, 0], arr[:, 1:]


def _validated(ids: np.ndarray, vecs: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids)
    vecs = np.asarray(vecs)
    if vecs.ndim != 2 or len(vecs) != len(ids):
        raise ValueError(f"{path}: vectors must be (N, D) with one row per item_id; got {vecs.shape} for "
                         f"{len(ids)} ids")
    if len(ids) == 0 or vecs.shape[1] == 0:
        raise ValueError(f"{path}: empty embedding table ({len(ids)} rows, dimension {vecs.shape[1]})")
    if not np.issubdtype(ids.dtype, np.integer):
        f = pd.to_numeric(pd.Series(ids), errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(f) | (np.floor(f) != f)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: item_id in row {r} is not an integer: {ids[r]!r}")
        ids = f
    ids = ids.astype(np.int64)
    if not np.issubdtype(vecs.dtype, np.number):
        raise ValueError(f"{path}: vectors are not numeric (dtype {vecs.dtype})")
    finite = np.isfinite(vecs).all(axis=1)
    if not finite.all():
        r = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{path}: row {r} (item_id {ids[r]}) has a NaN or infinite value "
                         f"({int((~finite).sum())} such rows)")
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    dup = np.flatnonzero(s[1:] == s[:-1])
    if len(dup):
        rows = np.flatnonzero(ids == s[dup[0]])
        raise ValueError(f"{path}: duplicate item_id {s[dup[0]]} (rows {rows[:5].tolist()}; "
                         f"{len(dup)} duplicates in all)")
    return s, vecs[order].astype(np.float32)


# ---- training ---------------------------------------------------------------------------------------------
def _cuts(ts: np.ndarray, offsets: np.ndarray, before_ts: int | None) -> np.ndarray:
    """End row of each user's behaviours with ts < before_ts (all rows when None): (U,)."""
    if before_ts is None:
        return np.asarray(offsets[1:], dtype=np.int64).copy()
    return cuts_before(ts, offsets[:-1], offsets[1:], before_ts)


def sample_pairs(ds: Dataset, n_pairs: int, window: int, before_ts: int | None,
                 rng: np.random.Generator, cuts: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw item ids of `n_pairs` pairs (item_t, item_t+k), 1 <= k <= window, drawn uniformly (with
    replacement) among all such pairs of one user's behaviours with ts < before_ts, in random order.

    Vectorised: a pair is (shard, gap k, rank r among that gap's anchors); r maps to a user through the
    cumulative anchor counts, so no per-event or per-user Python loop runs. Returns ((P,), (P,)).
    """
    cuts = cuts if cuts is not None else [
        _cuts(ds.csr(s).columns["ts"], ds.csr(s).offsets, before_ts) for s in range(ds.n_shards)]
    # anchors[s][k-1]: users' counts of anchors t with t + k still before the cut, cumulated.  (U+1,)
    cum = [[np.r_[0, np.cumsum(np.maximum(c - ds.csr(s).offsets[:-1] - k, 0))] for k in range(1, window + 1)]
           for s, c in enumerate(cuts)]
    totals = np.array([[ck[-1] for ck in cs] for cs in cum], dtype=np.float64).reshape(-1)  # (S*window,)
    if totals.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    per = rng.multinomial(n_pairs, totals / totals.sum())
    left, right = [], []
    for s in range(ds.n_shards):
        csr = ds.csr(s)
        for k in range(1, window + 1):
            n = int(per[s * window + k - 1])
            if n == 0:
                continue
            c = cum[s][k - 1]
            r = rng.integers(0, c[-1], size=n)
            u = np.searchsorted(c, r, side="right") - 1  # user of each anchor
            i = np.sort(csr.offsets[u] + (r - c[u]))  # sorted: sequential reads of the memory map
            left.append(np.asarray(csr.columns["item_id"][i], dtype=np.int64))
            right.append(np.asarray(csr.columns["item_id"][i + k], dtype=np.int64))
    perm = rng.permutation(n_pairs)
    return np.concatenate(left)[perm], np.concatenate(right)[perm]


def default_before_ts(ds: Dataset) -> int | None:
    """The first evaluation day's start (nothing from the evaluation days is used); None without eval days."""
    days = ds.manifest.get("eval_days") or []
    return int(min(d["start_ms"] for d in days)) if days else None


def train_item_embeddings(ds: Dataset, cfg: EmbedConfig = EmbedConfig(), before_ts: int | None = None,
                          progress: bool = True) -> EmbeddingTable:
    """Pre-train ItemEmbedding with skip-gram + negative sampling on behaviours with ts < before_ts.

    `before_ts` defaults to the first evaluation day's start (all behaviours when the dataset has no
    evaluation days). Each epoch samples `max_pairs` within-window pairs (`sample_pairs`); the count^0.75
    negative distribution is estimated from those pairs, an unbiased sample of the log, which spares a pass
    over every row. Pairs with an item missing from items.parquet are dropped (counted in `meta`). The
    returned table holds the items that appeared in at least one sampled pair ("trained"); complete it
    with `EmbeddingTable.complete(items)` for the rest.
    """
    t0 = time.perf_counter()
    if before_ts is None:
        before_ts = default_before_ts(ds)
    vocab = ItemVocab.from_items(ds.items())
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    try:
        rng = np.random.default_rng(cfg.seed)
        with torch.random.fork_rng():  # seed the initialisation without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            model = ItemEmbedding.from_vocab(vocab, cfg.dim)
        accum = [torch.zeros(n) for n in (vocab.n_items, vocab.n_authors, vocab.n_tags)]  # Adagrad state
        author_of, tag_of = torch.from_numpy(vocab.author_of), torch.from_numpy(vocab.tag_of)
        cuts = [_cuts(ds.csr(s).columns["ts"], ds.csr(s).offsets, before_ts) for s in range(ds.n_shards)]
        seen = np.zeros(vocab.n_items, dtype=bool)
        n_possible = sum(int(np.maximum(c - ds.csr(s).offsets[:-1] - 1, 0).sum()) * cfg.window
                         for s, c in enumerate(cuts))
        n_pairs = min(cfg.max_pairs, n_possible)  # a small log needs no more draws than it has pairs
        if n_pairs == 0:
            raise ValueError(f"{ds.root}: no user has two behaviours before ts {before_ts}; nothing to train "
                             f"item embeddings on (supply them with --embeddings)")
        bar = tqdm(total=n_pairs * cfg.epochs, unit="pair", unit_scale=True, disable=not progress,
                   desc="embed", smoothing=0.1)
        dropped, loss_ema = 0, float("nan")
        for _ in range(cfg.epochs):
            left, right = sample_pairs(ds, n_pairs, cfg.window, before_ts, rng, cuts)
            a, c = vocab.rows(left), vocab.rows(right)
            keep = (a > 0) & (c > 0)  # ids missing from items.parquet have no row to train
            dropped += int((~keep).sum())
            a, c = a[keep], c[keep]
            if len(a) == 0:
                raise ValueError(f"{ds.root}: no behaviour item before ts {before_ts} is in items.parquet; "
                                 f"the items table does not describe this log")
            count = np.bincount(np.r_[a, c], minlength=vocab.n_items)
            seen |= count > 0
            neg_table = _unigram_table(count, rng)
            negs = neg_table[rng.integers(0, len(neg_table), size=(len(a), cfg.negatives))]
            a_t, c_t, n_t = torch.from_numpy(a), torch.from_numpy(c), torch.from_numpy(negs)
            for step, s in enumerate(range(0, len(a), cfg.batch_size)):
                rows = torch.cat([a_t[s:s + cfg.batch_size], c_t[s:s + cfg.batch_size],
                                  n_t[s:s + cfg.batch_size].reshape(-1)])  # (B*(2+K),)
                loss = _train_step(model, accum, rows, author_of, tag_of, cfg)
                bar.update(len(rows) // (2 + cfg.negatives))
                if step % 20 == 0:
                    loss_ema = loss if math.isnan(loss_ema) else 0.8 * loss_ema + 0.2 * loss
                    bar.set_postfix(loss=f"{loss_ema:.3f}")
        bar.close()
        rows_seen = np.flatnonzero(seen[1:]) + 1
        with torch.no_grad():
            r = torch.from_numpy(rows_seen)
            vecs = model(r, author_of[r], tag_of[r]).numpy().copy()  # (N, D)
    finally:
        torch.set_num_threads(prev_threads)
    meta = {"config": to_dict(cfg), "before_ts": before_ts, "dataset": str(ds.root),
            "pairs_per_epoch": n_pairs, "pairs_dropped_unknown_item": dropped, "final_loss": loss_ema,
            "seconds": round(time.perf_counter() - t0, 2)}
    return EmbeddingTable(vocab.item_ids[rows_seen - 1], vecs, {"trained": len(rows_seen)}, meta)


def _unigram_table(count: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Item rows repeated ∝ count^0.75 (word2vec's smoothing: rare items are drawn more than their share)."""
    p = count.astype(np.float64) ** 0.75
    p /= p.sum()
    reps = np.floor(p * _NEG_TABLE_SIZE).astype(np.int64)
    table = np.repeat(np.arange(len(count), dtype=np.int64), reps)
    if len(table) == 0:  # only when every count is tiny relative to the table; sample directly instead
        table = rng.choice(len(count), size=_NEG_TABLE_SIZE, p=p)
    return table


def sgns_loss_and_grad(e: torch.Tensor, n_neg: int) -> tuple[float, torch.Tensor]:
    """Skip-gram negative-sampling loss and its gradient with respect to `e`, in closed form.

    `e` stacks anchors (B, D), contexts (B, D) and negatives (B*K, D);
    loss = mean_b [softplus(-e_a·e_c) + sum_k softplus(e_a·e_n_k)]. One table scores both sides, so
    co-watched items get nearby vectors directly — what the clustering compares — rather than only a
    shared context vector as in word2vec. The gradient is written out because autograd's backward of a
    row gather (a serial scatter-add) was the slowest part of a step on CPU.
    """
    B = len(e) // (2 + n_neg)
    ea, ec, en = e[:B], e[B:2 * B], e[2 * B:].reshape(B, n_neg, -1)  # (B, D) (B, D) (B, K, D)
    pos = (ea * ec).sum(-1)  # (B,)
    neg = torch.bmm(en, ea.unsqueeze(-1)).squeeze(-1)  # (B, K)
    loss = (F.softplus(-pos).sum() + F.softplus(neg).sum()) / B
    g_pos = -torch.sigmoid(-pos) / B  # (B,)  d loss / d pos
    g_neg = torch.sigmoid(neg) / B  # (B, K)
    g_a = g_pos.unsqueeze(1) * ec + torch.bmm(g_neg.unsqueeze(1), en).squeeze(1)  # (B, D)
    g_c = g_pos.unsqueeze(1) * ea  # (B, D)
    g_n = g_neg.unsqueeze(2) * ea.unsqueeze(1)  # (B, K, D)
    return float(loss), torch.cat([g_a, g_c, g_n.reshape(B * n_neg, -1)])  # (B*(2+K), D)


def _train_step(model: ItemEmbedding, accum: list[torch.Tensor], items: torch.Tensor,
                author_of: torch.Tensor, tag_of: torch.Tensor, cfg: EmbedConfig) -> float:
    """One row-wise Adagrad step on the rows a batch of item rows (B*(2+K),) touches; returns the loss.

    The forward runs once per distinct item of the batch; gradients are summed per distinct item, then
    per author and per tag, so a step costs O(batch), not O(table). Row-wise Adagrad (one accumulator per
    row) keeps a tag seen thousands of times per batch from taking steps thousands of times larger than a
    rare item's. Row 0 (unknown/padding) never moves, so it stays the zero vector.
    """
    with torch.no_grad():
        uniq, inv = torch.unique(items, return_inverse=True)  # (R,), (B*(2+K),)
        fields = (uniq, author_of.index_select(0, uniq), tag_of.index_select(0, uniq))  # each (R,)
        loss, g = sgns_loss_and_grad(model(*fields).index_select(0, inv), cfg.negatives)  # g: (B*(2+K), D)
        g_item = torch.zeros(len(uniq), g.shape[1]).index_add_(0, inv, g)  # (R, D)
        for table, acc, rows in zip((model.item, model.author, model.tag), accum, fields):
            if table is model.item:
                g_rows = g_item
            elif table.num_embeddings <= len(uniq):  # small table (tags): sum into all rows, no sort
                g_rows = torch.zeros(table.num_embeddings, g.shape[1]).index_add_(0, rows, g_item)
                rows = torch.arange(table.num_embeddings)
            else:
                rows, inv_f = torch.unique(rows, return_inverse=True)
                g_rows = torch.zeros(len(rows), g.shape[1]).index_add_(0, inv_f, g_item)  # (R', D)
            if rows[0] == 0:  # rows are sorted: the padding row can only come first
                g_rows[0] = 0
            acc.index_add_(0, rows, g_rows.pow(2).mean(1))  # untouched rows add 0 and do not move
            step = g_rows * (-cfg.lr / (acc.index_select(0, rows).sqrt() + 1e-10)).unsqueeze(1)
            table.weight.index_add_(0, rows, step)
    return loss


# ---- the stage --------------------------------------------------------------------------------------------
def embed(ds_path: str | Path, out_path: str | Path | None = None, cfg: EmbedConfig | None = None,
          embeddings_file: str | Path | None = None, before_ts: int | None = None, progress: bool = True) -> Path:
    """`twinv2 embed`: train item embeddings (or load `embeddings_file`), give every item of the dataset a
    vector (fallback for the rest, see `EmbeddingTable.lookup`) and save the table to `out_path`
    (default `<dataset>/embeddings/item_embeddings.parquet`, plus its `.json` sidecar). Returns the path.

    A supplied file keeps its own dimension (`cfg` is then unused); its items missing from the dataset's
    items table are kept, and the dataset's items missing from it get the fallback."""
    cfg = cfg or EmbedConfig()
    ds = Dataset(ds_path)
    out = Path(out_path) if out_path is not None else ds.root / "embeddings" / "item_embeddings.parquet"
    items = ds.items()
    if embeddings_file is not None:
        table = EmbeddingTable.load(embeddings_file)
        table = EmbeddingTable(table.item_ids, table.vectors, {"file": len(table)},
                               {"file": str(embeddings_file), "dataset": str(ds.root)})
    else:
        table = train_item_embeddings(ds, cfg, before_ts=before_ts, progress=progress)
    table = table.complete(items)
    table.save(out)
    parts = ", ".join(f"{k} {v:,}" for k, v in table.source.items() if v)
    print(f"wrote {out} ({len(table):,} items × {table.dim} dims: {parts})")
    return out
