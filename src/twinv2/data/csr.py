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
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from twinv2.data.checksum import MARKER, VerifiedMarker, file_entry, hash_cached, verify_files
from twinv2.schema import DataError

CACHE_VERSION = 2  # 2: the stamp records the source's sha256 and each .npy file's
SOURCE = "source"  # the shard's name in the cache's verified-marker


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


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Row numbers of the ranges [starts[i], starts[i] + lengths[i]) one after another: one gather then reads
    many users' slices of a CSR column at once. (sum(lengths),) int64"""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    first = np.cumsum(lengths) - lengths  # where each range begins in the output
    return np.repeat(starts - first, lengths) + np.arange(total, dtype=np.int64)


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
    def open(cls, parquet_path: str | Path, cache: bool = True, source_sha256: str | None = None) -> "BehaviourCSR":
        """Open a shard; build (once) and memory-map its .npy cache when `cache` is set and writable.

        The cache is used only if it was built from this very file (its stamp records the source's size and
        sha256: `source_sha256` when the caller has verified it, e.g. from the dataset's manifest, else hashed
        here once per change of the file) and its own files still have the checksums it was written with;
        a damaged or stale cache is rebuilt, with a warning naming it.
        """
        path = Path(parquet_path)
        if not path.is_file():
            raise FileNotFoundError(f"behaviour shard not found: {path}")
        cache_dir = path.with_suffix(".csr")
        if cache:
            marker = VerifiedMarker(cache_dir / MARKER if cache_dir.is_dir() else None)
            size = path.stat().st_size
            sha = source_sha256 or hash_cached(path, SOURCE, marker)[1]
            source = {"bytes": size, "sha256": sha}
            stamp = _read_stamp(cache_dir)
            if stamp is not None and stamp.get("version") == CACHE_VERSION and stamp.get("source") == source:
                try:
                    verify_files({n: cache_dir / n for n in stamp["files"]}, stamp["files"], marker,
                                 cache_dir / "stamp.json", fix="rebuilding it from the shard")
                    return cls._load_cache(cache_dir, stamp)
                except (DataError, KeyError, TypeError, ValueError) as e:
                    warnings.warn(f"damaged behaviour cache: {e}", RuntimeWarning, stacklevel=2)
        table = pq.read_table(path)
        csr = cls.from_columns({name: table.column(name).to_numpy() for name in table.column_names})
        if cache:
            try:
                csr._save_cache(cache_dir, source, marker)
                return cls._load_cache(cache_dir, _read_stamp(cache_dir))
            except (OSError, DataError, TypeError):  # read-only dataset (or a racing writer): keep the arrays
                pass
        return csr

    def _save_cache(self, cache_dir: Path, source: dict, old: VerifiedMarker | None = None) -> None:
        tmp = cache_dir.with_name(cache_dir.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        arrays = {"user_ids.npy": self.user_ids, "offsets.npy": self.offsets,
                  **{f"col.{k}.npy": np.ascontiguousarray(v) for k, v in self.columns.items()}}
        marker = VerifiedMarker(tmp / MARKER)
        if old is not None and SOURCE in old.entries:  # the shard's own hash stays vouched for
            marker.entries[SOURCE] = old.entries[SOURCE]
        files = {}
        for name, arr in arrays.items():
            np.save(tmp / name, arr)
            files[name] = file_entry(tmp / name, name, marker)
        marker.save()
        (tmp / "stamp.json").write_text(json.dumps({"version": CACHE_VERSION, "source": source, "files": files}))
        shutil.rmtree(cache_dir, ignore_errors=True)
        try:
            os.replace(tmp, cache_dir)
        except OSError:  # another process won the race; its cache is equivalent
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def _load_cache(cls, cache_dir: Path, stamp: dict | None) -> "BehaviourCSR":
        if stamp is None:
            raise DataError(f"{cache_dir}: no stamp.json")
        cols = {n[4:-4]: np.load(cache_dir / n, mmap_mode="r") for n in sorted(stamp["files"]) if n.startswith("col.")}
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


def _read_stamp(cache_dir: Path) -> dict | None:
    try:
        stamp = json.loads((cache_dir / "stamp.json").read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and isinstance(stamp.get("files"), dict) else None
