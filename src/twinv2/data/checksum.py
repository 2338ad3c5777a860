"""File checksums, and verifying files against them cheaply: each file is hashed once, then trusted while its
stat (size, mtime, ctime, inode) is unchanged.

`sha256_file` / `sha256_tree` are the one hash of the project (datasets here, cluster snapshots in
offline/store.py, embeddings). `verify_files` checks files against recorded `{"bytes", "sha256"}` entries and
remembers what it verified in a small marker file (`.verified.json` beside them). The marker is only a cache:
deleting it costs one re-hash, and an entry is trusted only if the file's stat is the one recorded and the file
was last changed well before it was verified (git's "racy clean" rule: a change within the same timestamp tick
as the verification would leave the stat unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Mapping

from twinv2.schema import DataError

MARKER = ".verified.json"
RACY_NS = 2_000_000_000  # a file changed less than this before its verification is hashed again next time


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def sha256_tree(path: str | Path) -> str:
    """Content hash of a file, or of every file under a directory (relative names included)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"not found: {path}")
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(p.relative_to(path).as_posix().encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _changed_ns(st: os.stat_result) -> int:
    return max(st.st_mtime_ns, st.st_ctime_ns)


class VerifiedMarker:
    """What was verified, by name: {name: {"stat": [size, mtime_ns, ctime_ns, ino], "sha256", "at_ns"}}."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        self.dirty = False
        if path is not None:
            try:
                body = json.loads(path.read_text())
                if isinstance(body, dict) and isinstance(body.get("entries"), dict):
                    self.entries = body["entries"]
            except (OSError, ValueError):
                pass  # missing or unreadable: it is only a cache

    def known(self, name: str, st: os.stat_result) -> str | None:
        """The recorded sha256 of `name` if its stat is unchanged since a trustworthy verification."""
        e = self.entries.get(name)
        if not isinstance(e, dict) or e.get("stat") != _stat_key(st):
            return None
        if not isinstance(e.get("at_ns"), int) or e["at_ns"] - _changed_ns(st) < RACY_NS:
            return None
        return e.get("sha256")

    def record(self, name: str, st: os.stat_result, sha256: str) -> None:
        self.entries[name] = {"stat": _stat_key(st), "sha256": sha256, "at_ns": time.time_ns()}
        self.dirty = True

    def save(self) -> None:
        if not self.dirty or self.path is None:
            return
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps({"version": 1, "entries": self.entries}, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:  # a read-only dataset: verify again next time
            tmp.unlink(missing_ok=True)
        self.dirty = False


def hash_cached(path: Path, name: str, marker: VerifiedMarker) -> tuple[int, str]:
    """(size, sha256) of `path`, hashed only when the marker cannot vouch for it."""
    st = path.stat()
    known = marker.known(name, st)
    if known is None:
        known = sha256_file(path)
        after = path.stat()
        if _stat_key(after) == _stat_key(st):  # not changed while hashing
            marker.record(name, st, known)
    return st.st_size, known


def file_entry(path: Path, name: str | None = None, marker: VerifiedMarker | None = None) -> dict[str, int | str]:
    """{"bytes", "sha256"} of one file (from the marker when it vouches for the file)."""
    size, sha = hash_cached(path, name or path.name, marker or VerifiedMarker(None))
    return {"bytes": size, "sha256": sha}


def verify_files(files: Mapping[str, Path], expected: Mapping[str, Mapping], marker: VerifiedMarker,
                 listed_in: str | Path, fix: str) -> None:
    """Check each file `files[name]` against `expected[name]` ({"bytes", "sha256"}): sizes always (one stat),
    contents once per change (the marker). Raises DataError naming the first bad file; `fix` says what to do."""
    for name, path in files.items():
        exp = expected[name]
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DataError(f"{path}: missing, but {listed_in} lists it; {fix}") from None
        if st.st_size != exp.get("bytes"):
            raise DataError(f"{path}: {st.st_size} bytes where {listed_in} records {exp.get('bytes')} "
                            f"(truncated or changed since it was written); {fix}")
        if marker.known(name, st) == exp.get("sha256"):
            continue
        got = sha256_file(path)
        if got != exp.get("sha256"):
            raise DataError(f"{path}: checksum mismatch (sha256 {got[:12]}..., {listed_in} records "
                            f"{str(exp.get('sha256'))[:12]}...): the file is damaged or was changed after it was "
                            f"written; {fix}")
        if _stat_key(path.stat()) == _stat_key(st):
            marker.record(name, st, got)
    marker.save()
