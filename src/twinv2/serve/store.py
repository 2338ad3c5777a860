"""The online cluster store: offline cluster snapshots in LMDB, one compact value per user, versions switched
atomically (paper §3.4: the offline job's clusters are what the online GSU/ESU read per request).

Layout of one LMDB environment (a folder holding data.mdb and lock.mdb), one key space::

    \0\0\0\0 format             -> STORE_FORMAT
    \0\0\0\0 current            -> id (4 bytes, big-endian) + name of the served version
    \0\0\0\0 next_id            -> the next version's id (4 bytes, big-endian)
    \0\0\0\0 info:<name>        -> JSON about that version (its id, snapshot, counts, load time)
    <id, 4 bytes> <user key>  -> the user's clusters in version <id> (user key: 8 bytes, big-endian)

Every metadata value ends in the CRC32 of the bytes before it, as the users' values do (below): a damaged one
raises StoreCorrupt naming the store and the key. A store without the format key was written before the
metadata carried checksums and is refused (load the snapshot into a new store).

Versions share one key space (prefixed by a numeric id) rather than one named database each: named database
handles are per process and cannot be closed while another thread may use them, so a long-running server
would run out of them as versions come and go.

A user's value is columnar, in the snapshot's cluster order (so the scorer rebuilds exactly the inputs the
offline batcher builds from the Parquet parts)::

    header  <BBHI   format (VALUE_FORMAT, 2), code of n's dtype (1 = uint16, 2 = int32), 0, C
    item_id int64[C]    Eq. 6-7's representative item (raw id: the model's vocabulary maps it to a row)
    ts      float64[C]  mean behaviour time (Eq. 5); float64 because the age bucket at request time needs it
    n       uint16[C] (int32 when a cluster has >= 65,536 members): cluster size, for ln n (Eq. 9)
    play    int8[C]     play-time bucket of the mean play time (train/features.py)
    ratio   int8[C]     completion-ratio bucket of the mean ratio
    crc32   <I          zlib.crc32 of everything before it

LMDB keeps no checksums of its own, so the CRC is what stands between a damaged page and scores computed from
changed clusters: a value that fails it raises StoreCorrupt (a DataError naming the store, version and user),
which the server answers with a 500 for that request (serve/app.py). Format 1 (no CRC) is not read: a version
in a store of this format cannot occur; one found is damage like any other.

22 bytes per cluster (+ 12 per user) instead of the snapshot's 61. Play time and ratio are stored as the buckets the model
reads, which are exact; fp16 is used nowhere because ln n, the mean time and the buckets all enter the
scores, and any rounding of them would break the online == offline equality (max abs diff <= 1e-5).

Versions: `load_snapshot` writes a new named database, then switches `current` in one write transaction, so a
reader sees the old version or the new one, never a mixture; a request reads the pointer and the user's value
in a single read transaction. The least recently served versions beyond `keep` are deleted after a switch (an LMDB read
transaction still open on a dropped version keeps its pages until it ends).
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twinv2.offline.store import ClusterSnapshot
from twinv2.schema import DataError
from twinv2.train.features import N_PLAY, N_RATIO, play_bucket, ratio_bucket

VALUE_FORMAT = 2  # 2: a CRC32 after each value (1 had none)
STORE_FORMAT = b"twinv2-cluster-store 2"  # 2: a CRC32 after each metadata value too (1 had none, and no key)
_HEADER = struct.Struct("<BBHI")
_CRC = struct.Struct("<I")
_N_DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<i4")}
_ID = struct.Struct(">I")
META = _ID.pack(0)  # version id 0 is the metadata namespace
CURRENT = META + b"current"
NEXT_ID = META + b"next_id"
FORMAT_KEY = META + b"format"
INFO = META + b"info:"
# Bucket definitions the stored play/ratio values follow (recorded per version).
FEATURES = {"play_buckets": N_PLAY, "ratio_buckets": N_RATIO}
REDO = "load the snapshot into a new store (`twinv2 serve --store NEW --snapshot SNAP`)"

_ENVS: dict[str, Any] = {}  # LMDB forbids opening one environment twice in a process: share one handle
_ENVS_LOCK = threading.Lock()


class StoreNotReady(RuntimeError):
    """The store holds no snapshot yet (load one with `ClusterStore.load_snapshot`)."""


class StoreCorrupt(DataError):
    """A stored value fails its checksum or its layout: the store is damaged (a server-side fault, never the
    request's). `user_id` and `version` say which value, for a message that need not show the store's path
    (both None for a metadata value: then the whole store is unusable)."""

    def __init__(self, message: str, user_id: int | None = None, version: str | None = None) -> None:
        super().__init__(message)
        self.user_id, self.version = user_id, version


@dataclass(frozen=True)
class UserClusters:
    """One user's virtual items as read from the store: (C,) arrays; C = 0 for a user the snapshot lacks."""

    user_id: int
    version: str  # the store version they came from
    item_id: np.ndarray  # (C,) int64
    ts: np.ndarray  # (C,) float64
    n: np.ndarray  # (C,) uint16 or int32
    play: np.ndarray  # (C,) int8 bucket
    ratio: np.ndarray  # (C,) int8 bucket

    @property
    def size(self) -> int:
        return len(self.item_id)


def user_key(user_id: int) -> bytes:
    """Big-endian two's complement + 2^63, so LMDB's byte order is the numeric order of the ids."""
    return struct.pack(">Q", (int(user_id) + (1 << 63)) & 0xFFFFFFFFFFFFFFFF)


def encode(item_id: np.ndarray, ts: np.ndarray, n: np.ndarray, play: np.ndarray, ratio: np.ndarray) -> bytes:
    """One user's clusters → the value bytes (see the module docstring)."""
    C = len(item_id)
    code = 1 if C == 0 or int(np.max(n)) < 65_536 else 2
    body = b"".join([
        _HEADER.pack(VALUE_FORMAT, code, 0, C),
        np.ascontiguousarray(item_id, "<i8").tobytes(),
        np.ascontiguousarray(ts, "<f8").tobytes(),
        np.ascontiguousarray(n, _N_DTYPES[code]).tobytes(),
        np.ascontiguousarray(play, "i1").tobytes(),
        np.ascontiguousarray(ratio, "i1").tobytes(),
    ])
    return body + _CRC.pack(zlib.crc32(body))


def decode(user_id: int, version: str, value: bytes, store: str = "cluster store") -> UserClusters:
    """The value bytes → the user's clusters; StoreCorrupt (naming `store`, the version and the user) when they
    fail their CRC or their layout."""
    def corrupt(why: str) -> StoreCorrupt:
        return StoreCorrupt(f"{store}: the stored clusters of user {user_id} in version {version!r} {why}: the "
                            f"store is damaged; {REDO}", user_id, version)

    if len(value) < _HEADER.size + _CRC.size:
        raise corrupt(f"are {len(value)} bytes, shorter than a header and a checksum")
    fmt = value[0]
    if fmt != VALUE_FORMAT:  # checked first: a format-1 value has no CRC to check
        raise corrupt(f"have value format {fmt}, expected {VALUE_FORMAT} (a store written by another twinv2 "
                      f"version, or damage)")
    if zlib.crc32(memoryview(value)[:-_CRC.size]) != _CRC.unpack_from(value, len(value) - _CRC.size)[0]:
        raise corrupt("fail their CRC32")
    _, code, _, C = _HEADER.unpack_from(value, 0)
    if code not in _N_DTYPES:
        raise corrupt(f"have n-dtype code {code}")
    if len(value) != _HEADER.size + C * (18 + _N_DTYPES[code].itemsize) + _CRC.size:
        raise corrupt(f"are {len(value)} bytes, not what {C} clusters take")
    o = _HEADER.size
    item = np.frombuffer(value, "<i8", C, o)
    o += 8 * C
    ts = np.frombuffer(value, "<f8", C, o)
    o += 8 * C
    n = np.frombuffer(value, _N_DTYPES[code], C, o)
    o += _N_DTYPES[code].itemsize * C
    play = np.frombuffer(value, "i1", C, o)
    ratio = np.frombuffer(value, "i1", C, o + C)
    return UserClusters(int(user_id), version, item, ts, n, play, ratio)


def seal(raw: bytes) -> bytes:
    """A metadata value: `raw` and its CRC32."""
    return raw + _CRC.pack(zlib.crc32(raw))


def unseal(raw: bytes, key: bytes, store: str) -> bytes:
    """The bytes of a metadata value (`seal`'s input); StoreCorrupt naming the store and key if it fails its CRC."""
    if len(raw) < _CRC.size or zlib.crc32(memoryview(raw)[:-_CRC.size]) != _CRC.unpack_from(raw, len(raw) - 4)[0]:
        raise StoreCorrupt(f"{store}: the store's metadata {key[len(META):].decode(errors='replace')!r} fails its "
                           f"CRC32: the store is damaged; {REDO}")
    return bytes(raw[:-_CRC.size])


def snapshot_version(snapshot: ClusterSnapshot) -> str:
    """`<folder name>-<hash of its parts' checksums>`: a rerun with other content gets another version."""
    h = hashlib.sha256()
    for s in sorted(snapshot.manifest.get("shards", {}), key=int):
        h.update(f"{s}:{snapshot.manifest['shards'][s]['sha256']};".encode())
    return f"{snapshot.path.name}-{h.hexdigest()[:10]}"


class ClusterStore:
    """A folder holding one LMDB environment with versioned cluster snapshots (see the module docstring).

    Args:
        path: the store folder (created if missing).
        map_size: LMDB's maximum size in bytes (address space only; the file grows as it is written).
        keep: versions kept after a load (the served one included); older ones are deleted.
    """

    def __init__(self, path: str | Path, map_size: int = 1 << 36, keep: int = 2) -> None:
        import lmdb

        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an integer >= 1 (the served version), got {keep!r}")
        self.path = Path(path)
        if self.path.is_dir() and any(self.path.iterdir()) and not (self.path / "data.mdb").exists():
            raise ValueError(f"{self.path} is not a cluster store (no data.mdb) and not empty; pass a new or "
                             f"empty folder (a snapshot folder goes to --snapshot)")
        self.path.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        key = str(self.path.resolve())
        with _ENVS_LOCK:
            if key not in _ENVS:
                _ENVS[key] = lmdb.open(key, map_size=map_size, max_readers=512, subdir=True)
            self.env = _ENVS[key]
        self._check_format()

    def _check_format(self) -> None:
        """Stamp a new store with STORE_FORMAT; refuse one of another format (or none: written before it)."""
        with self.env.begin(write=True) as txn:
            have = txn.get(FORMAT_KEY)
            if have is None and txn.cursor().first():
                raise DataError(f"{self.path}: a cluster store without a format key (written by a twinv2 from "
                                f"before its metadata carried checksums, or damaged); {REDO}")
            if have is None:
                txn.put(FORMAT_KEY, STORE_FORMAT)
            elif bytes(have) != STORE_FORMAT:
                raise DataError(f"{self.path}: cluster store format {bytes(have)[:60]!r}, expected {STORE_FORMAT!r} "
                                f"(another twinv2 version, or damage); {REDO}")

    def _meta(self, txn, key: bytes) -> bytes | None:
        raw = txn.get(key)
        return None if raw is None else unseal(raw, key, str(self.path))

    def __repr__(self) -> str:
        return f"ClusterStore({str(self.path)!r}, version={self.version!r})"

    # ---- versions ------------------------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        """The version served now (None before the first load)."""
        with self.env.begin() as txn:
            v = self._meta(txn, CURRENT)
        return None if v is None else v[_ID.size:].decode()

    def versions(self) -> dict[str, dict[str, Any]]:
        """Every version in the store → its info (id, snapshot path and time, users, clusters, load time)."""
        out = {}
        with self.env.begin() as txn:
            cur = txn.cursor()
            if cur.set_range(INFO):
                for k, v in cur:
                    if not k.startswith(INFO):
                        break
                    out[k[len(INFO):].decode()] = json.loads(unseal(v, k, str(self.path)))
        return out

    def info(self, version: str | None = None) -> dict[str, Any]:
        version = version or self.version
        if version is None:
            raise StoreNotReady(f"cluster store {self.path} holds no snapshot; load one first")
        return self.versions()[version]

    def load_snapshot(self, snapshot: str | Path | ClusterSnapshot, version: str | None = None,
                      progress: bool = False) -> str:
        """Write a finished cluster snapshot into a new version and switch to it; returns the version name.

        Loading a version that is already in the store only switches to it (idempotent).
        """
        snap = snapshot if isinstance(snapshot, ClusterSnapshot) else ClusterSnapshot(snapshot)
        version = version or snapshot_version(snap)
        if not isinstance(version, str) or not version or len(version.encode()) > 200:
            raise ValueError(f"bad store version name {version!r}: a non-empty string of at most 200 bytes")
        if version not in self.versions():
            t0 = time.perf_counter()
            with self.env.begin(write=True) as txn:
                raw = self._meta(txn, NEXT_ID)
                vid = 1 if raw is None else _ID.unpack(raw)[0]
                txn.put(NEXT_ID, seal(_ID.pack(vid + 1)))
            prefix = _ID.pack(vid)
            users = clusters = 0
            for s in range(snap.n_shards):
                u, c = self._load_shard(prefix, snap, s)
                users, clusters = users + u, clusters + c
                if progress:
                    print(f"  shard {s + 1}/{snap.n_shards}: {users} users, {clusters} clusters")
            info = {"id": vid, "snapshot": str(snap.path), "snapshot_ts": snap.snapshot_ts, "users": users,
                    "clusters": clusters, "loaded_at": time.time(),
                    "load_seconds": round(time.perf_counter() - t0, 3), "value_format": VALUE_FORMAT, **FEATURES}
            with self.env.begin(write=True) as txn:
                txn.put(INFO + version.encode(), seal(json.dumps(info).encode()))
        self.switch(version)
        return version

    def _load_shard(self, prefix: bytes, snap: ClusterSnapshot, shard: int) -> tuple[int, int]:
        csr = snap.shard(shard)
        if csr.n_rows == 0:
            return 0, 0
        c = csr.columns
        item = np.asarray(c["item_id"], np.int64)
        ts = np.asarray(c["ts"], np.float64)
        n = np.asarray(c["n"], np.int64)
        play = play_bucket(c["play_ms"]).astype(np.int8)  # exactly what the batcher computes per cluster
        ratio = ratio_bucket(c["ratio"]).astype(np.int8)
        off = csr.offsets
        with self.env.begin(write=True) as txn:
            for i, uid in enumerate(csr.user_ids):
                a, b = int(off[i]), int(off[i + 1])
                txn.put(prefix + user_key(int(uid)), encode(item[a:b], ts[a:b], n[a:b], play[a:b], ratio[a:b]))
        return csr.n_users, csr.n_rows

    def switch(self, version: str) -> None:
        """Serve `version` from the next read on (one write transaction), then delete the oldest extra ones."""
        key = INFO + version.encode()
        with self.env.begin(write=True) as txn:
            raw = self._meta(txn, key)
            if raw is None:
                raise ValueError(f"store {self.path} has no version {version!r}; it has {sorted(self.versions())}")
            info = json.loads(raw)
            txn.put(key, seal(json.dumps({**info, "served_at": time.time()}).encode()))
            txn.put(CURRENT, seal(_ID.pack(info["id"]) + version.encode()))
        self._prune(version)

    def _prune(self, current: str, batch: int = 10_000) -> None:
        """Delete all but the `keep` - 1 most recently served (or loaded) versions besides `current`."""
        old = sorted(((v.get("served_at", v["loaded_at"]), k, v["id"]) for k, v in self.versions().items()
                      if k != current), reverse=True)
        for _, name, vid in old[self.keep - 1:]:
            with self.env.begin(write=True) as txn:  # unlisted first: nobody switches to a half-deleted one
                txn.delete(INFO + name.encode())
            self._delete_values(vid, batch)

    def _delete_values(self, vid: int, batch: int = 10_000) -> None:
        prefix = _ID.pack(vid)
        while True:  # bounded transactions, so a reader-heavy server never waits on one huge delete
            with self.env.begin(write=True) as txn:
                cur = txn.cursor()
                done = 0
                if cur.set_range(prefix):
                    while done < batch and cur.key().startswith(prefix):
                        if not cur.delete():
                            break
                        done += 1
            if done < batch:
                break

    # ---- reads ---------------------------------------------------------------------------------------------
    def get(self, user_id: int) -> UserClusters:
        """The user's clusters in the served version (C = 0 for a user it lacks), read in one transaction."""
        with self.env.begin() as txn:
            cur = self._meta(txn, CURRENT)
            if cur is None:
                raise StoreNotReady(f"cluster store {self.path} holds no snapshot; load one first")
            value = txn.get(cur[:_ID.size] + user_key(user_id))
        version = cur[_ID.size:].decode()
        return decode(user_id, version, _EMPTY if value is None else value, str(self.path))


_EMPTY = encode(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int8))
