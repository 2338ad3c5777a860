"""Collate samples into `Batch`es: each sample's history from the CSR arrays by timestamp, its clusters from
a snapshot taken before its day. Nothing padded is stored on disk; padding exists only inside a batch.

Leak rules enforced here (and tested):
- a sample's raw history is its user's behaviours with ts < the sample's ts (BehaviourCSR.ranges_before);
- its clusters come from a snapshot whose snapshot_ts is at or before the start of the sample's day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from twinv2.data.storage import Dataset, EvalDay, shard_of
from twinv2.models.batch import Batch, Seq
from twinv2.models.embeddings import ItemVocab
from twinv2.offline.store import ClusterSnapshot
from twinv2.schema import completion_ratio
from twinv2.train.features import age_bucket, play_bucket, ratio_bucket


@dataclass
class _Columns:
    """Per-shard arrays in model units, computed once: item rows, play and ratio buckets, times, ln n."""

    user_ids: np.ndarray  # (U,)
    offsets: np.ndarray  # (U+1,)
    rows: np.ndarray  # (N,) int64 item rows
    play: np.ndarray  # (N,) int64
    ratio: np.ndarray  # (N,) int64
    ts: np.ndarray  # (N,) float64 (behaviour time, or a cluster's mean time)
    log_n: np.ndarray | None  # (N,) float32 for clusters

    def ranges(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) of each user's rows; (0, 0) for a user with none."""
        i = np.searchsorted(self.user_ids, users)
        ic = np.minimum(i, max(len(self.user_ids) - 1, 0))
        found = (i < len(self.user_ids)) & (self.user_ids[ic] == users) if len(self.user_ids) else np.zeros(
            len(users), bool)
        start = np.where(found, self.offsets[ic], 0)
        end = np.where(found, self.offsets[np.minimum(ic + 1, len(self.offsets) - 1)], 0)
        return start.astype(np.int64), end.astype(np.int64)


class Batcher:
    """Builds batches for one model input kind: "recent" (latest L behaviours) or "clusters" (a snapshot)."""

    def __init__(self, ds: Dataset, vocab: ItemVocab, sequence: str, seq_len: int) -> None:
        if sequence not in ("recent", "clusters"):
            raise ValueError(f"sequence must be 'recent' or 'clusters', got {sequence!r}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.ds, self.vocab, self.sequence, self.seq_len = ds, vocab, sequence, seq_len
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
    def _columns(self, shard: int) -> _Columns:
        key = (self.sequence, shard)
        if key not in self._cache:
            self._cache[key] = self._load(shard)
        return self._cache[key]

    def _load(self, shard: int) -> _Columns:
        if self.sequence == "recent":
            csr = self.ds.csr(shard)
            c = csr.columns
            ratio = completion_ratio(c["play_ms"], c["duration_ms"])
            return _Columns(csr.user_ids, csr.offsets, self.vocab.rows(c["item_id"]),
                            play_bucket(np.where(np.asarray(c["play_ms"]) >= 0, c["play_ms"], np.nan)),
                            ratio_bucket(ratio), np.asarray(c["ts"], dtype=np.float64), None)
        if self.snapshot is None:
            raise ValueError("a clusters batcher needs use_snapshot(...) before the first batch")
        csr = self.snapshot.shard(shard)
        c = csr.columns
        return _Columns(csr.user_ids, csr.offsets, self.vocab.rows(c["item_id"]), play_bucket(c["play_ms"]),
                        ratio_bucket(c["ratio"]), np.asarray(c["ts"], dtype=np.float64),
                        np.log(np.asarray(c["n"], dtype=np.float32)))

    # ---- batches ------------------------------------------------------------------------------------------
    def batch(self, user_id: np.ndarray, item_id: np.ndarray, ts: np.ndarray, label: np.ndarray) -> Batch:
        B, L = len(user_id), self.seq_len
        user_id = np.asarray(user_id, np.int64)
        ts = np.asarray(ts, np.int64)
        rows = np.zeros((B, L), np.int64)
        cross = np.zeros((B, L, 3), np.int64)
        mask = np.zeros((B, L), bool)
        log_n = np.zeros((B, L), np.float32) if self.sequence == "clusters" else None
        shards = shard_of(user_id, self.ds.n_shards)
        for s in np.unique(shards):
            b = np.flatnonzero(shards == s)
            col = self._columns(int(s))
            start, end = col.ranges(user_id[b])
            if self.sequence == "recent":
                end = start + np.array([np.searchsorted(col.ts[a:e], t, side="left")
                                        for a, e, t in zip(start, end, ts[b])], dtype=np.int64).reshape(-1)
            pos, valid = self._positions(col, start, end, L)  # (b, L) each
            rows[b] = np.where(valid, col.rows[pos], 0)
            cross[b, :, 0] = np.where(valid, col.play[pos], 0)
            cross[b, :, 1] = np.where(valid, col.ratio[pos], 0)
            cross[b, :, 2] = np.where(valid, age_bucket(ts[b, None], col.ts[pos]), 0)
            mask[b] = valid
            if log_n is not None:
                log_n[b] = np.where(valid, col.log_n[pos], 0.0)
        return Batch(
            target=torch.from_numpy(self.vocab.rows(item_id)),
            seq=Seq(rows=torch.from_numpy(rows), cross=torch.from_numpy(cross), mask=torch.from_numpy(mask),
                    log_n=None if log_n is None else torch.from_numpy(log_n)),
            label=torch.as_tensor(np.asarray(label), dtype=torch.float32),
            user_id=torch.from_numpy(user_id),
            ts=torch.from_numpy(ts),
        )

    def _positions(self, col: _Columns, start: np.ndarray, end: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
        """Row positions (b, L) of the last L elements of each [start, end), left-padded; and their mask.

        Raw behaviours are in time order, so the last L are the latest L. A user with more than L clusters
        keeps the L with the latest mean time (clusters are stored by group, not by time)."""
        pos = end[:, None] - L + np.arange(L)[None, :]  # (b, L)
        valid = pos >= start[:, None]
        pos = np.where(valid, pos, 0)
        if self.sequence == "clusters":
            for i in np.flatnonzero(end - start > L):
                a, e = start[i], end[i]
                keep = a + np.sort(np.argsort(col.ts[a:e], kind="stable")[-L:])
                pos[i], valid[i] = keep, True
        return pos, valid
