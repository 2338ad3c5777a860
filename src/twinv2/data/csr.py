"""CSR view of one behaviour shard: `offsets[U+1]` plus one array per column, memory-mapped.

A shard's rows are sorted by (user_id, ts), so user u's history is rows offsets[i]:offsets[i+1] with
i = searchsorted(user_ids, u), and the part before a time t is a further binary search on that slice's `ts`:
both O(log n), no pandas in the loop. The arrays are cached as .npy files beside the shard
(`part-00007.csr/`) and opened with mmap, so many worker processes share one copy in the page cache and a
user with 10^6 behaviours costs nothing until it is touched.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

CACHE_VERSION = 1


def user_ranges(user_ids: np.ndarray, offsets: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) rows of each of `users` in a CSR with sorted `user_ids` (U,) and `offsets` (U+1,);
    (0, 0) for a user that is not there. (B,) each."""
    users = np.asarray(users, dtype=np.int64)
    if len(user_ids) == 0:
        zero = np.zeros(len(users), np.int64)
        return zero, zero.copy()
    i = np.searchsorted(user_ids, users)
    ic = np.minimum(i, len(user_ids) - 1)
    found = (i < len(user_ids)) & (user_ids[ic] == users)
    return (np.where(found, offsets[ic], 0).astype(np.int64),
            np.where(found, offsets[ic + 1], 0).astype(np.int64))


def cuts_before(ts: np.ndarray, starts: np.ndarray, ends: np.ndarray, before) -> np.ndarray:
    """For each row range [start, end) sorted by ts, the first row with ts >= before (its own `before`
    when an array is given): rows [start, cut) are strictly before. All ranges' binary searches run at once,
    so only ~len(starts)·log(length) elements of `ts` (often a memory map) are read. (B,)"""
    lo = np.asarray(starts, dtype=np.int64).copy()
    hi = np.asarray(ends, dtype=np.int64).copy()
    if len(ts) == 0:
        return lo
    before = np.asarray(before)
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        below = active & (np.asarray(ts[np.minimum(mid, len(ts) - 1)]) < before)
        lo = np.where(below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)


@dataclass
class BehaviourCSR:
    user_ids: np.ndarray  # (U,) int64, sorted, unique
    offsets: np.ndarray  # (U+1,) int64
    columns: dict[str, np.ndarray]  # each (N,)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    # ---- building -------------------------------------------------------------------------------------
    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray]) -> "BehaviourCSR":
        """Build from columns already sorted by (user_id, ts)."""
        uid = np.asarray(columns["user_id"])
        if len(uid) and np.any(np.diff(uid) < 0):
            raise ValueError("behaviour rows are not sorted by user_id")
        starts = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]]) if len(uid) else np.zeros(0, np.int64)
        user_ids = uid[starts].astype(np.int64)
        offsets = np.r_[starts, len(uid)].astype(np.int64)
        cols = {k: np.asarray(v) for k, v in columns.items() if k != "user_id"}
        return cls(user_ids=user_ids, offsets=offsets, columns=cols)

    @classmethod
    def open(cls, parquet_path: str | Path, cache: bool = True) -> "BehaviourCSR":
        """Open a shard; build (once) and memory-map its .npy cache when `cache` is set and writable."""
        path = Path(parquet_path)
        if not path.is_file():
            raise FileNotFoundError(f"behaviour shard not found: {path}")
        cache_dir = path.with_suffix(".csr")
        stamp = {"version": CACHE_VERSION, "size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns}
        if cache and _cache_valid(cache_dir, stamp):
            return cls._load_cache(cache_dir)
        table = pq.read_table(path)
        csr = cls.from_columns({name: table.column(name).to_numpy() for name in table.column_names})
        if cache:
            try:
                csr._save_cache(cache_dir, stamp)
                return cls._load_cache(cache_dir)
            except OSError:  # read-only dataset: keep the in-memory arrays
                pass
        return csr

    def _save_cache(self, cache_dir: Path, stamp: dict) -> None:
        tmp = cache_dir.with_name(cache_dir.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        np.save(tmp / "user_ids.npy", self.user_ids)
        np.save(tmp / "offsets.npy", self.offsets)
        for k, v in self.columns.items():
            np.save(tmp / f"col.{k}.npy", np.ascontiguousarray(v))
        (tmp / "stamp.json").write_text(json.dumps(stamp))
        shutil.rmtree(cache_dir, ignore_errors=True)
        try:
            os.replace(tmp, cache_dir)
        except OSError:  # another process won the race; its cache is equivalent
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def _load_cache(cls, cache_dir: Path) -> "BehaviourCSR":
        cols = {p.name[4:-4]: np.load(p, mmap_mode="r") for p in sorted(cache_dir.glob("col.*.npy"))}
        return cls(user_ids=np.load(cache_dir / "user_ids.npy"), offsets=np.load(cache_dir / "offsets.npy"),
                   columns=cols)

    # ---- slicing --------------------------------------------------------------------------------------
    def user_range(self, user_id: int) -> tuple[int, int]:
        """Row range [start, end) of one user's whole history; (0, 0) for a user not in this shard."""
        i = int(np.searchsorted(self.user_ids, user_id))
        if i == len(self.user_ids) or self.user_ids[i] != user_id:
            return 0, 0
        return int(self.offsets[i]), int(self.offsets[i + 1])

    def range_before(self, user_id: int, before_ts: int | None) -> tuple[int, int]:
        """Row range of the user's behaviours with ts < before_ts (strictly: an event at the sample's own
        time is not history)."""
        start, end = self.user_range(user_id)
        if before_ts is None or start == end:
            return start, end
        cut = start + int(np.searchsorted(self.columns["ts"][start:end], before_ts, side="left"))
        return start, cut

    def ranges_before(self, user_ids: np.ndarray, before_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised `range_before` for a batch: (starts (B,), ends (B,))."""
        starts, ends = user_ranges(self.user_ids, self.offsets, user_ids)
        return starts, cuts_before(self.columns["ts"], starts, ends, np.asarray(before_ts, dtype=np.int64))

    def history(self, user_id: int, before_ts: int | None = None) -> dict[str, np.ndarray]:
        """Column views of one user's history (before `before_ts` when given)."""
        s, e = self.range_before(user_id, before_ts)
        return {k: v[s:e] for k, v in self.columns.items()}


def _cache_valid(cache_dir: Path, stamp: dict) -> bool:
    try:
        return json.loads((cache_dir / "stamp.json").read_text()) == stamp
    except (OSError, ValueError):
        return False
