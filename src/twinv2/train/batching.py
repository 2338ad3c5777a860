"""Collate samples into `Batch`es: each sample's history from the CSR arrays by timestamp, its clusters from
a snapshot taken before its day. Nothing padded is stored on disk; padding exists only inside a batch.
Cross columns are built by iterating the feature specs (train/features.py), user features from the dataset's
users.parquet when it declares them.

Leak rules enforced here (and tested):
- a sample's raw history is its user's behaviours with ts < the sample's ts (BehaviourCSR.ranges_before);
- its clusters come from a snapshot whose snapshot_ts is at or before the start of the sample's day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from twinv2.data.csr import cuts_before, user_ranges
from twinv2.data.storage import Dataset, EvalDay, shard_of
from twinv2.models.batch import Batch, Seq
from twinv2.models.embeddings import ItemVocab
from twinv2.offline.store import ClusterSnapshot
from twinv2.schema import completion_ratio
from twinv2.train.features import FeatureSpec, Features, UserTable


@dataclass
class _Columns:
    """Per-shard arrays in model units, computed once. A since_sample feature of `ts` (the age) reads `ts`
    itself: no copy of the largest column."""

    user_ids: np.ndarray  # (U,)
    offsets: np.ndarray  # (U+1,)
    rows: np.ndarray  # (N,) int32 item rows
    ts: np.ndarray  # (N,) float64 (behaviour time, or a cluster's mean time)
    cross: list[np.ndarray]  # per cross spec (N,): int32 buckets, or the float64 source of a since_sample one
    log_n: np.ndarray | None  # (N,) float32 for clusters

    @classmethod
    def of(cls, user_ids, offsets, rows, ts, cross, log_n=None) -> "_Columns":
        """`cross`: per spec its int bucket column, or a float source column (`ts` itself for the age)."""
        ts64 = np.asarray(ts, np.float64)
        return cls(user_ids, offsets, np.asarray(rows, np.int32), ts64,
                   [ts64 if c is ts else c if c.dtype.kind == "f" else c.astype(np.int32) for c in cross],
                   None if log_n is None else np.asarray(log_n, np.float32))

    @classmethod
    def from_elements(cls, user_ids, offsets, rows, elements: dict[str, np.ndarray], specs: tuple[FeatureSpec, ...],
                      log_n=None) -> "_Columns":
        """`elements`: the sequence's source columns by name (see train/features.py); one column per spec."""
        missing = [s.source for s in specs if s.source not in elements]
        if missing:
            raise ValueError(f"cross features need columns {missing}, which these sequence elements lack; they "
                             f"have {sorted(elements)}")
        ts = np.asarray(elements["ts"], np.float64)
        cross = [(ts if s.source == "ts" else np.asarray(elements[s.source], np.float64)) if s.since_sample
                 else np.asarray(s.bucket(elements[s.source]), np.int32) for s in specs]
        return cls.of(user_ids, offsets, rows, ts, cross, log_n)


class Batcher:
    """Builds batches for one model input kind: "recent" (latest L behaviours) or "clusters" (a snapshot).

    A batch's sequence length is min(L, the longest sequence in the batch): columns that would be padding
    for every sample are never built."""

    def __init__(self, ds: Dataset, vocab: ItemVocab, sequence: str, seq_len: int,
                 features: Features | None = None, recent_len: int = 0) -> None:
        if sequence not in ("recent", "clusters"):
            raise ValueError(f"sequence must be 'recent' or 'clusters', got {sequence!r}")
        if seq_len < 1 or recent_len < 0:
            raise ValueError(f"seq_len must be >= 1 and recent_len >= 0, got seq_len={seq_len}, "
                             f"recent_len={recent_len}")
        self.ds, self.vocab, self.sequence, self.seq_len = ds, vocab, sequence, seq_len
        # A clusters model reads the latest `recent_len` raw behaviours (Batch.recent: its short-term interest's,
        # and the TWIN + TWIN-V2 pair's TWIN part); a recent model reads the last columns of its own sequence.
        self.recent_len = recent_len if sequence == "clusters" else 0
        self.features = features if features is not None else Features.for_dataset(ds, sequence)
        self.users = UserTable(ds.users() if self.features.user else None, self.features.user)
        self.snapshot: ClusterSnapshot | None = None
        self._cache: dict[tuple[str, int], _Columns] = {}

    def use_snapshot(self, snapshot: ClusterSnapshot, day: EvalDay) -> None:
        """Use `snapshot` for the samples of `day`; refuses a snapshot taken after the day began."""
        if snapshot.snapshot_ts > day.start_ms:
            raise ValueError(f"snapshot {snapshot.path} was taken at {snapshot.snapshot_ts}, after the start of "
                             f"day {day.label} ({day.start_ms}): its clusters would leak that day's behaviours")
        if self.snapshot is None or self.snapshot.path != snapshot.path:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != "clusters"}
        self.snapshot = snapshot

    # ---- per-shard columns --------------------------------------------------------------------------------
    def _columns(self, kind: str, shard: int) -> _Columns:
        key = (kind, shard)
        if key not in self._cache:
            self._cache[key] = self._load(kind, shard)
        return self._cache[key]

    def _load(self, kind: str, shard: int) -> _Columns:
        specs = self.features.cross  # a clusters model's specs read columns that raw behaviours have too
        if kind == "recent":
            csr = self.ds.csr(shard)
            c = csr.columns
            elements = raw_elements(c)
            return _Columns.from_elements(csr.user_ids, csr.offsets, self.vocab.rows(c["item_id"]), elements, specs)
        if self.snapshot is None:
            raise ValueError("a clusters batcher needs use_snapshot(...) before the first batch")
        csr = self.snapshot.shard(shard)
        c = csr.columns
        return _Columns.from_elements(csr.user_ids, csr.offsets, self.vocab.rows(c["item_id"]), c, specs,
                                      np.log(np.asarray(c["n"], dtype=np.float32)))

    # ---- batches ------------------------------------------------------------------------------------------
    def batch(self, user_id: np.ndarray, item_id: np.ndarray, ts: np.ndarray, label: np.ndarray) -> Batch:
        user_id = np.array(user_id, np.int64)  # copies: torch wants writable arrays
        ts = np.array(ts, np.int64)
        shards = shard_of(user_id, self.ds.n_shards)
        return Batch(
            target=torch.from_numpy(self.vocab.rows(item_id)),
            seq=self._seq(self.sequence, self.seq_len, user_id, ts, shards),
            label=torch.from_numpy(np.array(label, dtype=np.float32)),  # a copy: torch wants writable arrays
            user_id=torch.from_numpy(user_id),
            ts=torch.from_numpy(ts),
            user=torch.from_numpy(self.users.lookup(user_id)) if self.features.user else None,
            recent=self._seq("recent", self.recent_len, user_id, ts, shards) if self.recent_len else None,
        )

    def _seq(self, kind: str, max_len: int, user_id: np.ndarray, ts: np.ndarray, shards: np.ndarray) -> Seq:
        """The `kind` sequence (B, L) of each sample, right-aligned (the latest last), L = min(max_len, the
        longest in the batch)."""
        B = len(user_id)
        parts = []
        for s in np.unique(shards):
            b = np.flatnonzero(shards == s)
            col = self._columns(kind, int(s))
            start, end = user_ranges(col.user_ids, col.offsets, user_id[b])
            if kind == "recent":  # only behaviours strictly before the sample
                end = cuts_before(col.ts, start, end, ts[b])
            parts.append((b, col, start, end))
        L = int(max(1, min(max_len, max(int((e - a).max(initial=0)) for _, _, a, e in parts))))
        return _fill(parts, B, L, ts, self.features.cross, kind == "clusters")


def _fill(parts: list, B: int, L: int, ts: np.ndarray, specs: tuple[FeatureSpec, ...], clusters: bool) -> Seq:
    """The (B, L) sequence of `parts` [(sample positions, columns, start, end)]: each sample's last elements
    in [start, end), right-aligned (the latest last)."""
    rows = np.zeros((B, L), np.int32)  # padding: row 0, bucket 0, ln n 0, mask False
    mask = np.zeros((B, L), bool)
    cross = np.zeros((B, L, len(specs)), np.int32)
    log_n = np.zeros((B, L), np.float32) if clusters else None
    for b, col, start, end in parts:
        for i, s, e, t in zip(b.tolist(), start.tolist(), end.tolist(), ts[b].tolist()):
            n = min(e - s, L)
            # The last n elements: a contiguous slice (raw behaviours are in time order), except a user
            # with more than L clusters, who keeps the L with the latest mean time (stored by group).
            at = s + latest_by_time(col.ts[s:e], L) if clusters and e - s > L else slice(e - n, e)
            rows[i, L - n:] = col.rows[at]
            mask[i, L - n:] = True
            for j, spec in enumerate(specs):  # an age is bucketed per sample: its slice stays in cache
                cross[i, L - n:, j] = spec.bucket(t - col.cross[j][at]) if spec.since_sample else col.cross[j][at]
            if log_n is not None:
                log_n[i, L - n:] = col.log_n[at]
    return Seq(rows=torch.from_numpy(rows), cross=torch.from_numpy(cross), mask=torch.from_numpy(mask),
               log_n=None if log_n is None else torch.from_numpy(log_n))


def raw_elements(c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Raw behaviour columns as the cross specs read them: play_ms with unknown (< 0) as NaN, and the
    completion ratio."""
    return {**c, "play_ms": np.where(np.asarray(c["play_ms"]) >= 0, c["play_ms"], np.nan),
            "ratio": completion_ratio(c["play_ms"], c["duration_ms"])}


def recent_seq(behaviours: dict[str, np.ndarray], ts: int, vocab: ItemVocab, specs: tuple[FeatureSpec, ...],
               S: int) -> Seq:
    """One user's latest `S` raw behaviours strictly before `ts` as the batcher builds them (1, S'):
    `behaviours` holds item_id, ts, play_ms (< 0 unknown) and duration_ms columns in time order (serving's
    short-term input; the same elements, buckets and cut as `Batcher`)."""
    c = {k: np.asarray(behaviours[k]) for k in ("item_id", "ts", "play_ms", "duration_ms")}
    n = len(c["ts"])
    if n and np.any(np.diff(c["ts"]) < 0):
        raise ValueError("recent behaviours must be in time order (oldest first)")
    col = _Columns.from_elements(np.zeros(1, np.int64), np.array([0, n]), vocab.rows(c["item_id"]), raw_elements(c),
                                 specs)
    t = np.array([ts], np.int64)
    end = cuts_before(col.ts, np.zeros(1, np.int64), np.array([n]), t)
    return _fill([(np.zeros(1, np.int64), col, np.zeros(1, np.int64), end)], 1, max(1, min(S, int(end[0]))), t,
                 specs, False)


def latest_by_time(ts: np.ndarray, L: int) -> np.ndarray:
    """Positions of the L elements with the latest `ts`, in stored order (ties: the later stored one wins).
    The rule for a user with more clusters than the model reads; serving (serve/scorer.py) uses it too."""
    return np.sort(np.argsort(ts, kind="stable")[-L:])
