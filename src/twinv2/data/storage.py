"""Dataset directories: Parquet shards by hash(user_id), rows sorted by (user_id, ts), and a manifest.

Layout of a dataset directory::

    manifest.json             written last (a directory without it is incomplete): every data file's size and
                              sha256 ("files") and the manifest's own checksum ("manifest_sha256")
    .verified.json            cache of what was verified (checksum.py); safe to delete
    items.parquet             item_id, author_id, tag, duration_ms (sorted by item_id)
    users.parquet             optional user features
    behaviours/part-00007.parquet   shard 7: behaviours of users with shard_of(user_id) == 7
    samples/part-00007.parquet      impressions of the same users
    quarantine.csv            rows that failed validation, with a reason each (import only)
    truth/                    generated worlds only: ground truth that models never see

Writers stream: a shard is appended to chunk by chunk (each chunk sorted, and starting after the previous
chunk's last (user_id, ts)), so a world of any size is written in bounded memory. A whole dataset is written
into a temporary sibling folder and renamed into place (dirs.staged_dir); files of a complete one are replaced
through a journal (`replace_files`). Opening one (`Dataset`) checks the manifest's checksum, that n_shards
matches the part files, and every file's size and checksum (hashed once per change of the file), so a damaged
file stops the reader with a DataError naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from twinv2.data.checksum import MARKER, VerifiedMarker, file_entry, verify_files
from twinv2.data.dirs import JOURNAL, MANIFEST, data_files, failpoint
from twinv2.data.dirs import prepare_dir  # noqa: F401 - re-exported: where tests and tools import it from
from twinv2.schema import BEHAVIOURS, SAMPLES, DataError, TableSpec

FORMAT = "twinv2-dataset"
FORMAT_VERSION = 2  # 2: the manifest lists every data file's checksum and carries its own
DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def shard_of(user_ids: np.ndarray | Iterable[int], n_shards: int) -> np.ndarray:
    """Stable shard of each user: splitmix64(user_id) % n_shards (independent of Python's hash seed)."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    x = np.asarray(user_ids, dtype=np.int64).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x % np.uint64(n_shards)).astype(np.int64)


def part_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


DAY_KEYS = {"index", "label", "start_ms", "test_hours"}  # EvalDay's fields, as manifests store them


@dataclass(frozen=True)
class EvalDay:
    """One evaluation day: train on [start_ms, test_start_ms), test on [test_start_ms, end_ms): its last
    `test_hours` hours (1 = hour 23, the paper's protocol; more for a sparse log, see SplitRule.test_hours)."""

    index: int
    label: str
    start_ms: int
    test_hours: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.test_hours, bool) or not isinstance(self.test_hours, int) or not 1 <= self.test_hours <= 24:
            raise ValueError(f"test_hours must be an integer in 1..24, got {self.test_hours!r}")

    @property
    def end_ms(self) -> int:
        return self.start_ms + DAY_MS

    @property
    def test_start_ms(self) -> int:
        return self.end_ms - self.test_hours * HOUR_MS

    def train_mask(self, ts: np.ndarray) -> np.ndarray:
        """Which of the times `ts` are this day's training samples: [start_ms, test_start_ms). The one split
        rule of the protocol (the trainer and `twinv2 export` both ask it). (n,) bool"""
        t = np.asarray(ts)
        return (t >= self.start_ms) & (t < self.test_start_ms)

    def test_mask(self, ts: np.ndarray) -> np.ndarray:
        """Which of the times `ts` are this day's test samples: [test_start_ms, end_ms), its last `test_hours`
        hours (none for a warm-up day). (n,) bool"""
        t = np.asarray(ts)
        return (t >= self.test_start_ms) & (t < self.end_ms)


def eval_days(first_day_start_ms: int, n_days: int = 5) -> list[EvalDay]:
    """`n_days` consecutive days starting at `first_day_start_ms` (a day boundary in the data's own clock)."""
    out = []
    for i in range(n_days):
        start = first_day_start_ms + i * DAY_MS
        label = time.strftime("%Y-%m-%d", time.gmtime(start / 1000))
        out.append(EvalDay(index=i, label=label, start_ms=int(start)))
    return out


@dataclass(frozen=True)
class WarmupDay(EvalDay):
    """One train-only warm-up day before the evaluation days: every hour [start_ms, end_ms) is training and
    nothing of it is ever tested (generated worlds' `warmup_days`): an EvalDay whose test hour is empty."""

    @property
    def test_start_ms(self) -> int:
        return self.end_ms


def warmup_days(first_eval_start_ms: int, n_days: int) -> list[WarmupDay]:
    """The `n_days` consecutive days that end where the first evaluation day starts, in time order."""
    first = first_eval_start_ms - n_days * DAY_MS
    return [WarmupDay(index=d.index, label=d.label, start_ms=d.start_ms) for d in eval_days(first, n_days)]


def _schema_for(spec: TableSpec, extras: dict[str, str]) -> pa.Schema:
    fields = [pa.field(c.name, pa.from_numpy_dtype(np.dtype(c.dtype))) for c in spec.columns]
    fields += [pa.field(name, pa.from_numpy_dtype(np.dtype(dt))) for name, dt in extras.items()]
    return pa.schema(fields)


class ShardedWriter:
    """Appends sorted chunks of one table (behaviours or samples) to its shard files.

    Files are written under a temporary name and renamed on `close`, so a crash never leaves a shard that
    looks complete. Chunks for one shard must arrive in (user_id, ts) order; this is checked.
    """

    def __init__(self, root: Path, spec: TableSpec, n_shards: int, extras: dict[str, str] | None = None,
                 compression: str = "zstd", use_dictionary: bool | list[str] = True) -> None:
        self.dir = Path(root) / spec.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        self.n_shards = n_shards
        self.schema = _schema_for(spec, extras or {})
        self.compression = compression
        self.use_dictionary = use_dictionary  # False or a column list saves time on high-cardinality columns
        self._writers: dict[int, pq.ParquetWriter] = {}
        self._last: dict[int, tuple[int, int]] = {}
        self.rows = np.zeros(n_shards, dtype=np.int64)

    def _tmp(self, shard: int) -> Path:
        return self.dir / (part_name(shard) + ".tmp")

    def append(self, shard: int, columns: dict[str, np.ndarray]) -> None:
        """Append one chunk (all rows of shard `shard`, sorted by (user_id, ts))."""
        n = len(columns["user_id"])
        if n == 0:
            return
        uid, ts = columns["user_id"], columns["ts"]
        first = (int(uid[0]), int(ts[0]))
        if shard in self._last and first < self._last[shard]:
            raise ValueError(f"{self.spec.name} shard {shard}: chunk starts at {first}, before {self._last[shard]}")
        self._last[shard] = (int(uid[-1]), int(ts[-1]))
        arrays = [pa.array(np.ascontiguousarray(columns[f.name]).astype(f.type.to_pandas_dtype(), copy=False))
                  for f in self.schema]
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        w = self._writers.get(shard)
        if w is None:
            w = pq.ParquetWriter(self._tmp(shard), self.schema, compression=self.compression,
                                 use_dictionary=self.use_dictionary)
            self._writers[shard] = w
        w.write_table(table, row_group_size=1 << 20)
        self.rows[shard] += n

    def append_frame(self, df: pd.DataFrame) -> None:
        """Split a whole typed frame by shard (sorting it) and append each part."""
        df = df.sort_values(["user_id", "ts"], kind="stable")
        shards = shard_of(df["user_id"].to_numpy(), self.n_shards)
        for s in np.unique(shards):
            part = df[shards == s]
            self.append(int(s), {c: part[c].to_numpy() for c in part.columns})

    def close(self, shards: Iterable[int] | None = None) -> None:
        """Finish every shard (or only `shards`, when each worker process writes its own); shards that got no
        rows are written empty so every part exists."""
        for s in range(self.n_shards) if shards is None else shards:
            w = self._writers.pop(s, None)
            if w is None:
                pq.write_table(self.schema.empty_table(), self._tmp(s), compression=self.compression)
            else:
                w.close()
            os.replace(self._tmp(s), self.dir / part_name(s))


def write_table(path: Path, df: pd.DataFrame) -> None:
    tmp = Path(str(path) + ".tmp")
    df.to_parquet(tmp, index=False, compression="zstd")
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, body: Any) -> None:
    """Write JSON to a temporary file, fsync it and rename it into place: readers see the old or the new
    file, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(body, indent=2, sort_keys=True, default=json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def manifest_sha256(body: dict[str, Any], field: str = "manifest_sha256") -> str:
    """The manifest's own checksum: sha256 of its canonical JSON (sorted keys, no spaces), the checksum field
    itself (`field`; a run's metrics.json uses "metrics_sha256") left out."""
    rest = {k: v for k, v in body.items() if k != field}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), default=json_default, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_body(root: Path, manifest: dict[str, Any], files: dict[str, dict] | None = None) -> dict[str, Any]:
    """The full manifest of the dataset at `root`: `manifest`'s fields, every data file's size and sha256
    (hashing only files the verified-marker cannot vouch for; `files` overrides entries), and the manifest's
    own checksum. Any "files"/"manifest_sha256" given in `manifest` are recomputed, never copied."""
    root = Path(root)
    marker = VerifiedMarker(root / MARKER)
    entries = {rel: file_entry(root / rel, rel, marker) for rel in data_files(root)}
    entries.update(files or {})
    marker.save()
    body = {k: v for k, v in manifest.items() if k not in ("format", "version", "files", "manifest_sha256")}
    body = json.loads(json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **body, "files": entries},
                                 default=json_default))  # plain JSON types, so the checksum reads back equal
    body["manifest_sha256"] = manifest_sha256(body)
    return body


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json atomically, with every data file's checksum and its own; this marks the dataset
    complete, so it comes after every data file."""
    write_json_atomic(Path(root) / MANIFEST, manifest_body(root, manifest))


def replace_files(root: Path, tmp_files: dict[str, Path], manifest: dict[str, Any]) -> None:
    """Replace some data files of a complete dataset in place (`tmp_files`: relative path -> a finished
    temporary file beside it) and rewrite the manifest, so that a kill at any instant leaves the old dataset
    or the new one: the new manifest and the renames are first written to a journal (manifest.json.next, the
    commit point), then carried out; a reader that finds the journal finishes them (`_roll_forward`)."""
    root = Path(root)
    for p in tmp_files.values():
        with open(p, "rb+") as f:
            os.fsync(f.fileno())
    entries = {rel: file_entry(Path(p), rel) for rel, p in tmp_files.items()}
    body = manifest_body(root, manifest, entries)
    renames = {rel: Path(p).relative_to(root).as_posix() for rel, p in tmp_files.items()}
    failpoint("replace")
    write_json_atomic(root / JOURNAL, {"manifest": body, "renames": renames})
    failpoint("journal")
    _roll_forward(root)


def _roll_forward(root: Path) -> None:
    """Finish an interrupted `replace_files` (idempotent: renames already done are skipped)."""
    journal = root / JOURNAL
    try:
        j = json.loads(journal.read_text())
        for rel, tmp in j["renames"].items():
            if (root / tmp).exists():
                os.replace(root / tmp, root / rel)
                failpoint("renamed")
        write_json_atomic(root / MANIFEST, j["manifest"])
        journal.unlink()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{journal}: an interrupted update of {root} could not be finished ({e}); "
                        f"regenerate or re-import the dataset") from None


def json_default(o: Any) -> Any:
    """`json.dumps(default=...)` for numpy scalars and arrays and paths in manifests and sidecars."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


REDO = "regenerate or re-import the dataset (`twinv2 generate ... --overwrite` or `twinv2 import ... --overwrite`)"


def _load_manifest(mf: Path) -> dict[str, Any]:
    """The parsed manifest, its own checksum checked (manifests written since format version 2 carry one)."""
    try:
        m = json.loads(mf.read_text())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{mf}: unreadable manifest ({str(e)[:120]}); the file is damaged; {REDO}") from None
    if not isinstance(m, dict):
        raise DataError(f"{mf}: not a twinv2 manifest (a JSON {type(m).__name__}); {REDO}")
    if m.get("format") != FORMAT:
        raise DataError(f"{mf}: format is {m.get('format')!r}, expected {FORMAT!r}")
    checksummed = "files" in m or "manifest_sha256" in m or not isinstance(m.get("version"), int) or m["version"] >= 2
    if checksummed and m.get("manifest_sha256") != manifest_sha256(m):
        raise DataError(f"{mf}: checksum mismatch (manifest_sha256): the manifest was edited or damaged after it "
                        f"was written; {REDO}")
    if checksummed and not isinstance(m.get("files"), dict):
        raise DataError(f"{mf}: no list of files; {REDO}")
    for rel, e in (m.get("files") or {}).items():
        if not isinstance(e, dict):
            raise DataError(f"{mf}: files[{rel!r}] is {str(e)[:80]!r}, not {{bytes, sha256}}; {REDO}")
    for key in ("cross_features", "sample_features", "user_features"):
        v = m.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise DataError(f"{mf}: '{key}' must be a list of column names, got {str(v)[:80]!r}; {REDO}")
    n = m.get("n_shards")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"{mf}: n_shards must be an integer >= 1, got {n!r}; {REDO}")
    for key, required in (("eval_days", True), ("warmup_days", False)):
        _check_days(mf, key, m.get(key), required)
    return m


def _check_days(mf: Path, key: str, days: Any, required: bool) -> None:
    """`eval_days` / `warmup_days` of a manifest: a list of {index: int, label: str, start_ms: int} (and
    test_hours: int in 1..24, absent in manifests written before it: 1)."""
    if days is None and not required:
        return
    if days is None:
        raise DataError(f"{mf}: key '{key}' missing; {REDO}")
    if not isinstance(days, list) or (required and not days):
        raise DataError(f"{mf}: '{key}' must be a non-empty list of days, got {str(days)[:80]!r}; {REDO}")
    for d in days:
        if (not isinstance(d, dict) or not {"index", "label", "start_ms"} <= set(d) <= DAY_KEYS
                or not all(isinstance(d[k], int) and not isinstance(d[k], bool) for k in d.keys() - {"label"})
                or not isinstance(d["label"], str) or not 1 <= d.get("test_hours", 1) <= 24):
            raise DataError(f"{mf}: '{key}' holds {str(d)[:80]!r}, not a day {{index: int, label: str, "
                            f"start_ms: int[, test_hours: 1..24]}}; {REDO}")


def _check_shards(root: Path, mf: Path, n_shards: int, files: dict[str, dict]) -> None:
    """Every table's part files, listed and on disk, are exactly part-00000 .. part-{n_shards-1}: a manifest
    whose n_shards disagrees with the files would silently drop (or invent) users."""
    want = {part_name(s) for s in range(n_shards)}
    for table in (BEHAVIOURS.name, SAMPLES.name):
        d = root / table
        listed = {rel.split("/", 1)[1] for rel in files if rel.startswith(table + "/")}
        on_disk = {p.name for p in d.iterdir() if p.name.startswith("part-") and p.name.endswith(".parquet")} \
            if d.is_dir() else set()
        for where, names in ((mf, listed), (d, on_disk)):
            if names and names != want:  # no part files at all: a table this dataset does not have
                extra, missing = sorted(names - want), sorted(want - names)
                what = "; ".join(([f"{table} parts beyond it: {', '.join(extra)}"] if extra else [])
                                 + ([f"{table} parts missing: {', '.join(missing)}"] if missing else []))
                raise DataError(f"{where}: n_shards is {n_shards} but {what}; {REDO}")


class Dataset:
    """A dataset directory opened for reading. Histories come from memory-mapped CSR shards (see csr.py)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        mf = self.root / MANIFEST
        if (self.root / JOURNAL).is_file():
            _roll_forward(self.root)  # an update was interrupted after its commit point: finish it
        if not mf.is_file():
            raise DataError(f"{self.root}: not a complete twinv2 dataset (no manifest.json); "
                            f"create one with `twinv2 generate` or `twinv2 import`")
        self.manifest: dict[str, Any] = _load_manifest(mf)
        self.n_shards: int = self.manifest["n_shards"]
        self.files: dict[str, dict] = self.manifest.get("files") or {}
        _check_shards(self.root, mf, self.n_shards, self.files)
        if self.files:
            verify_files({rel: self.root / rel for rel in self.files}, self.files, VerifiedMarker(self.root / MARKER),
                         mf, fix=REDO)
        self._csr: dict[int, Any] = {}

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, n_shards={self.n_shards})"

    @property
    def eval_days(self) -> list[EvalDay]:
        return [EvalDay(**d) for d in self.manifest["eval_days"]]

    @property
    def warmup_days(self) -> list[WarmupDay]:
        """Train-only days before the evaluation days, in time order ([] when the manifest has none: imported
        data, or a world generated with warmup_days = 0)."""
        return [WarmupDay(**d) for d in self.manifest.get("warmup_days", [])]

    @property
    def first_train_day_ms(self) -> int:
        """Start of the first day with training samples: the first warm-up day, else the first evaluation day.
        Offline stages that must see nothing of any sample day (cluster snapshots) cut here."""
        days = self.warmup_days or self.eval_days
        return int(days[0].start_ms)

    @property
    def time_range_ms(self) -> tuple[int, int]:
        """[start, end) in epoch ms of the times this dataset's import accepted (the manifest's
        `validation.time_range` in years, 2000..2100 when absent): what later stages should accept as its times."""
        import calendar

        years = (self.manifest.get("validation") or {}).get("time_range") or [2000, 2100]
        return tuple(calendar.timegm((int(y), 1, 1, 0, 0, 0)) * 1000 for y in years)  # type: ignore[return-value]

    @property
    def cross_features(self) -> list[str]:
        return list(self.manifest.get("cross_features", []))

    def shard_path(self, table: str, shard: int) -> Path:
        return self.root / table / part_name(shard)

    def items(self) -> pd.DataFrame:
        return pd.read_parquet(self.root / "items.parquet")

    def users(self) -> pd.DataFrame | None:
        p = self.root / "users.parquet"
        return pd.read_parquet(p) if p.exists() else None

    def samples(self, shards: Iterable[int] | None = None) -> pd.DataFrame:
        """All samples (or those of some shards), sorted by (ts, user_id) as a streaming trainer reads them."""
        parts = [pd.read_parquet(self.shard_path(SAMPLES.name, s)) for s in (shards or range(self.n_shards))]
        df = pd.concat(parts, ignore_index=True)
        return df.sort_values(["ts", "user_id", "item_id"], kind="stable").reset_index(drop=True)

    def behaviours_frame(self, shard: int) -> pd.DataFrame:
        return pd.read_parquet(self.shard_path(BEHAVIOURS.name, shard))

    def csr(self, shard: int):  # -> BehaviourCSR (import kept local to avoid a cycle)
        from twinv2.data.csr import BehaviourCSR

        if shard not in self._csr:
            entry = self.files.get(f"{BEHAVIOURS.name}/{part_name(shard)}") or {}
            self._csr[shard] = BehaviourCSR.open(self.shard_path(BEHAVIOURS.name, shard),
                                                 source_sha256=entry.get("sha256"))
        return self._csr[shard]

    def history_lengths(self, users: np.ndarray, before_ts) -> np.ndarray:
        """Behaviours of each user with ts < before_ts (one time, or one per user; 0 for a user with none),
        one vectorised search per shard. (n,) int64"""
        from twinv2.data.csr import cuts_before, user_ranges

        users = np.asarray(users, dtype=np.int64)
        before = np.broadcast_to(np.asarray(before_ts, dtype=np.int64), users.shape)
        out = np.zeros(len(users), np.int64)
        shard = shard_of(users, self.n_shards)
        for s in np.unique(shard):
            idx = np.flatnonzero(shard == s)
            csr = self.csr(int(s))
            a, b = user_ranges(csr.user_ids, csr.offsets, users[idx])
            out[idx] = cuts_before(csr.columns["ts"], a, b, before[idx]) - a
        return out

    def history(self, user_id: int, before_ts: int | None = None) -> dict[str, np.ndarray]:
        """One user's behaviours (all, or those with ts < before_ts) as column views."""
        shard = int(shard_of([user_id], self.n_shards)[0])
        return self.csr(shard).history(user_id, before_ts)

