"""The cluster snapshot on disk: one Parquet part per behaviour shard, a manifest, and a CSR reader.

Layout of ``<dataset>/clusters/<snapshot>/``::

    manifest.json          rewritten atomically each time a shard finishes; "complete": true once all have
    part-00007.parquet     virtual items of the users of behaviour shard 7, one row per cluster,
                           sorted by (user_id, cluster); written to a temporary name and renamed
    part-00007.csr/        .npy cache of the part made by the reader (BehaviourCSR's), safe to delete
    .verified.json         what the reader verified (data/checksum.py), safe to delete

A shard counts as done only if the manifest lists it, its file exists and the file's sha256 equals the one in
the manifest, so a truncated, corrupt or half-written part is found and redone on the next run. The reader
(`ClusterSnapshot`) checks the same: the manifest's own checksum, then every part's size and sha256 (hashed
once per change of the file, remembered in `.verified.json`, as datasets are), so a damaged snapshot stops it
with a DataError naming the file. Snapshots of format version 1 (before the manifest's own checksum) are read
with their parts verified.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twinv2.data.checksum import MARKER, VerifiedMarker, verify_files
from twinv2.data.checksum import sha256_file, sha256_tree  # noqa: F401 - the project's one hash, re-exported
from twinv2.data.sealed import check_seal, read_json_file
from twinv2.data.storage import json_default, manifest_sha256, shard_of, write_json_atomic
from twinv2.schema import CLUSTER_COLUMNS, CLUSTER_ROW_BYTES, DataError

FORMAT = "twinv2-clusters"
FORMAT_VERSION = 2  # 2: the manifest carries its own checksum ("manifest_sha256")
MANIFEST = "manifest.json"
REDO = "delete the snapshot folder and run the same `twinv2 cluster` command again"

COLUMNS = CLUSTER_COLUMNS  # the snapshot's row layout, declared with the other tables in schema.py
SCHEMA = pa.schema([pa.field(k, pa.from_numpy_dtype(np.dtype(v))) for k, v in COLUMNS.items()])
ROW_BYTES = CLUSTER_ROW_BYTES


def empty_columns() -> dict[str, np.ndarray]:
    return {k: np.zeros(0, dtype=v) for k, v in COLUMNS.items()}


def to_table(cols: dict[str, np.ndarray]) -> pa.Table:
    arrays = [pa.array(np.ascontiguousarray(cols[f.name], dtype=COLUMNS[f.name])) for f in SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


class PartWriter:
    """Streams one part file to a private temporary name; `close` renames it into place atomically.

    Rows are flushed in row groups of whole users once `flush_rows` are buffered, so a shard of any size is
    written in bounded memory and the bytes depend only on the rows (not on timing or the engine).
    """

    def __init__(self, path: Path, flush_rows: int = 1 << 20) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}-{id(self):x}")
        self.flush_rows = flush_rows
        self._buf: list[dict[str, np.ndarray]] = []
        self._n = 0
        self.rows = 0
        self._w = pq.ParquetWriter(self.tmp, SCHEMA, compression="zstd")

    def append(self, cols: dict[str, np.ndarray]) -> None:
        n = len(cols["user_id"])
        if n == 0:
            return
        self._buf.append(cols)
        self._n += n
        if self._n >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        merged = {k: np.concatenate([b[k] for b in self._buf]) for k in COLUMNS}
        self._w.write_table(to_table(merged), row_group_size=self._n)
        self.rows += self._n
        self._buf, self._n = [], 0

    def close(self) -> str:
        """Finish the file, fsync it, move it into place; returns its sha256."""
        self._flush()
        self._w.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = sha256_file(self.tmp)
        os.replace(self.tmp, self.path)
        return digest

    def abort(self) -> None:
        try:
            self._w.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def read_part(path: str | Path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    return {name: table.column(name).to_numpy() for name in table.column_names}


def read_manifest(snapshot_dir: str | Path) -> dict[str, Any] | None:
    """The parsed manifest (None when there is none), its own checksum checked; DataError naming it when it is
    unreadable, foreign or damaged."""
    p = Path(snapshot_dir) / MANIFEST
    if not p.is_file():
        return None
    m = read_json_file(p, REDO)
    if not isinstance(m, dict):
        raise DataError(f"{p}: not a cluster snapshot manifest (a JSON {type(m).__name__}); {REDO}")
    if m.get("format") != FORMAT:
        raise DataError(f"{p}: format is {m.get('format')!r}, expected {FORMAT!r}")
    # Version 1 had no checksum of its own; anything else (a damaged version or key too) must carry one.
    check_seal(p, m, REDO, field="manifest_sha256", required=m.get("version") != 1)
    return m


def write_manifest(snapshot_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json atomically (temporary file, fsync, rename), with its own checksum."""
    body = {k: v for k, v in manifest.items() if k not in ("format", "version", "manifest_sha256")}
    body = json.loads(json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **body}, default=json_default))
    body["manifest_sha256"] = manifest_sha256(body)  # of the plain JSON, so that it reads back equal
    write_json_atomic(Path(snapshot_dir) / MANIFEST, body)


def shard_is_done(snapshot_dir: Path, manifest: dict[str, Any] | None, shard: int,
                  input_fingerprint: str | None = None) -> bool:
    """True iff the manifest lists the shard, its file exists and has the listed sha256 (and, when given,
    the shard's input fingerprint is the recorded one)."""
    entry = (manifest or {}).get("shards", {}).get(str(shard))
    if not entry:
        return False
    if input_fingerprint is not None and entry.get("input_fingerprint") != input_fingerprint:
        return False
    path = Path(snapshot_dir) / entry["file"]
    return path.is_file() and path.stat().st_size == entry.get("bytes") and sha256_file(path) == entry["sha256"]


class UserIndex:
    """One part file in memory with a per-user index, for copying unchanged users into a refreshed snapshot."""

    def __init__(self, cols: dict[str, np.ndarray]) -> None:
        uid = cols["user_id"]
        first = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]]) if len(uid) else np.zeros(0, np.int64)
        self.cols = cols
        self.user_ids = uid[first]
        self.offsets = np.r_[first, len(uid)].astype(np.int64)
        self.n = cols["user_n"][first]
        self.last_ts = cols["user_last_ts"][first]

    @classmethod
    def open(cls, path: str | Path) -> "UserIndex":
        return cls(read_part(path))

    def unchanged(self, user_ids: np.ndarray, n: np.ndarray, last_ts: np.ndarray) -> np.ndarray:
        """(U,) bool: does this part hold the user with the same (n, last_ts) history fingerprint?"""
        if len(self.user_ids) == 0:
            return np.zeros(len(user_ids), dtype=bool)
        pos = np.minimum(np.searchsorted(self.user_ids, user_ids), len(self.user_ids) - 1)
        return (self.user_ids[pos] == user_ids) & (self.n[pos] == n) & (self.last_ts[pos] == last_ts)

    def rows(self, user_id: int) -> dict[str, np.ndarray]:
        i = int(np.searchsorted(self.user_ids, user_id))
        a, b = self.offsets[i], self.offsets[i + 1]
        return {k: v[a:b] for k, v in self.cols.items()}


class ClusterSnapshot:
    """A finished cluster snapshot opened for reading: each user's virtual items in O(log n).

    Parts are read through BehaviourCSR (a memory-mapped .npy cache beside each part), so opening is cheap
    and a lookup is a binary search over the shard's user ids.

    Attributes:
        path: the snapshot folder.
        snapshot_ts: only behaviours with ts < snapshot_ts were clustered (epoch ms).
        config: the clustering settings used (dict, as in the manifest).
        n_shards: behaviour shards of the dataset (users are found by `shard_of(user_id, n_shards)`).
        parts: {shard: its manifest entry (file, bytes, sha256, ...)}; every part was verified on open.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        m = read_manifest(self.path)
        if m is None:
            raise DataError(f"{self.path}: not a cluster snapshot (no {MANIFEST}); run `twinv2 cluster` first")
        if not m.get("complete"):
            done = len(m.get("shards", {}))
            raise DataError(f"{self.path}: snapshot incomplete ({done} of {m.get('n_shards')} shards); "
                            f"run the same `twinv2 cluster` command again to finish it")
        try:
            self.snapshot_ts: int = int(m["snapshot_ts"])
            self.config: dict[str, Any] = dict(m["config"])
            self.n_shards: int = int(m["n_shards"])
            self.parts: dict[int, dict[str, Any]] = {s: dict(m["shards"][str(s)]) for s in range(self.n_shards)}
            files = {e["file"]: self.path / e["file"] for e in self.parts.values()}
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{self.path / MANIFEST}: malformed snapshot manifest ({type(e).__name__}: {e}); "
                            f"{REDO}") from None
        verify_files(files, {e["file"]: e for e in self.parts.values()}, VerifiedMarker(self.path / MARKER),
                     self.path / MANIFEST, fix=REDO)
        self.manifest = m
        self._csr: dict[int, Any] = {}

    def __repr__(self) -> str:
        return f"ClusterSnapshot({str(self.path)!r}, snapshot_ts={self.snapshot_ts})"

    def shard(self, shard: int):  # -> BehaviourCSR over the part's columns (user_id excluded)
        from twinv2.data.csr import BehaviourCSR

        if shard not in self._csr:
            e = self.parts[shard]  # verified on open: its cache need not hash it again
            self._csr[shard] = BehaviourCSR.open(self.path / e["file"], source_sha256=e["sha256"])
        return self._csr[shard]

    def clusters(self, user_id: int) -> dict[str, np.ndarray]:
        """The user's virtual items as column arrays (C,), ordered by cluster; C = 0 for an unknown user."""
        s = int(shard_of([user_id], self.n_shards)[0])
        csr = self.shard(s)
        a, b = csr.user_range(int(user_id))
        out = {k: np.asarray(v[a:b]) for k, v in csr.columns.items()}
        out["user_id"] = np.full(b - a, int(user_id), dtype=np.int64)
        return out

    def user_ids(self) -> np.ndarray:
        """Every user with at least one cluster, sorted."""
        return np.sort(np.concatenate([self.shard(s).user_ids for s in range(self.n_shards)]))

    def frame(self):
        """The whole snapshot as one pandas DataFrame (small data and tests)."""
        import pandas as pd

        return pd.concat([pd.read_parquet(self.path / self.parts[s]["file"]) for s in range(self.n_shards)],
                         ignore_index=True)
