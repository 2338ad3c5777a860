"""Validation of an import's log: typing every cell chunk by chunk, judging whole columns and whole files.

A log reaches `read_log` as `LogPart`s (one per input file) whose columns carry the stored names (`user_id,
item_id, ts` in epoch ms, `play_ms, duration_ms, label` + feature columns); a part may stream its file in
chunks. Per chunk, `schema.check_fields` types every cell (ids exactly, as int64) and gives each bad row a
reason; bad rows go straight to `quarantine.csv` (`QuarantineWriter`, raw values cut to
`schema.MAX_RAW_CHARS`), so a garbage file never sits in memory. Once a file is read, its columns are judged
as a whole (`_finish_checks`): a time column with no readable time or none inside `Checks.time_range`, a
column with no usable value, a label column that is not 0/1 stop the import with a DataError naming the file
and the column. Then duplicates of (user_id, item_id, ts) are found over all files in input order (the first
is kept). Whether too much of a file was quarantined (`Checks.max_quarantine_share`) is judged by
`core.build_dataset`, after the outliers.
"""

from __future__ import annotations

import calendar
import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from twinv2.schema import (BEHAVIOURS, Column, DataError, FieldStats, check_fields, clip_text, first_duplicates,
                           quarantine_frame)

# The log as read: one row per impression or watch, validated before the split decides what it becomes.
LOG = dataclasses.replace(BEHAVIOURS, name="log", columns=BEHAVIOURS.columns + (Column("label", "int8"),))
CORE = [c.name for c in LOG.columns]
FILE_COL, ROW_COL = "__file", "__row"  # input file index and 0-based data row, carried with every valid row
# A label column is not a 0/1 label (refused, with the rule syntax) when values other than 0/1 fill more than half
# of it, or at least 3 distinct such values fill more than this share (a rating); a few stray values are quarantined.
LABEL_NOT01_SHARE = 0.01
YEAR_RANGE = (1678, 2262)  # what time_range may span (pandas' datetime range)


@dataclass
class LogPart:
    """One input file's rows with stored column names; `source` names the file in messages. The rows come as
    one `frame` or, for files of any size, as `chunks` (an iterable of frames, consumed once)."""

    source: str
    frame: pd.DataFrame | None = None
    chunks: Iterable[pd.DataFrame] | None = None

    def iter_chunks(self) -> Iterator[pd.DataFrame]:
        if self.frame is not None:
            yield self.frame
        else:
            yield from self.chunks or ()


def _year_ms(year: int) -> int:
    return calendar.timegm((year, 1, 1, 0, 0, 0)) * 1000


def iso_ms(ms: int) -> str:
    """An epoch-ms time as ISO text (UTC), or the number itself when it is beyond any calendar."""
    try:
        return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):
        return f"{int(ms)} ms"


@dataclass
class Checks:
    """How validation judges a log (mapping keys in brackets).

    time_range: years [first, last) a parsed time must lie in (`columns.time_range`, default 2000..2100): a
    sanity check that catches a wrong unit (seconds read as ms lands in 1970); widen it for older logs.
    max_quarantine_share: a log or feature file with more of its rows quarantined than this stops the import
    (`max_quarantine_share`, default 0.5; 1 = never).
    time_unit, shown, label_rule: how the importer names the time unit, the file's own column names (stored
    name -> file name) and the label's source in messages.
    """

    time_range: tuple[int, int] = (2000, 2100)
    max_quarantine_share: float = 0.5
    time_unit: str = "ms"
    shown: dict[str, str] = field(default_factory=dict)
    label_rule: bool = False

    def __post_init__(self) -> None:
        tr = self.time_range
        if (not isinstance(tr, (tuple, list)) or len(tr) != 2 or not all(isinstance(y, int) and not isinstance(y, bool)
                                                                         for y in tr)
                or not YEAR_RANGE[0] <= tr[0] < tr[1] <= YEAR_RANGE[1]):
            raise ValueError(f"columns.time_range must be two years [first, last] with {YEAR_RANGE[0]} <= first < "
                             f"last <= {YEAR_RANGE[1]}, got {tr!r}")
        self.time_range = (int(tr[0]), int(tr[1]))
        m = self.max_quarantine_share
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m <= 1:
            raise ValueError(f"max_quarantine_share must be a number in (0, 1], got {m!r}")

    @property
    def time_range_ms(self) -> tuple[int, int]:
        return _year_ms(self.time_range[0]), _year_ms(self.time_range[1])

    def name(self, col: str) -> str:
        return self.shown.get(col) or col


# ---- checks on raw columns (they name the file's own column) ------------------------------------------
def require_columns(columns: list[str], needed: list[str], source: str) -> None:
    """DataError naming the file and every needed column that is absent."""
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(f"{source}: required column(s) {missing} missing; columns present: {list(columns)}")


def _blank(s: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        return s.isna().to_numpy()
    return (s.isna() | (s.astype(str).str.strip() == "")).to_numpy()


def require_numeric(df: pd.DataFrame, columns: list[str], source: str, shown: dict[str, str] | None = None) -> None:
    """A column none of whose non-blank cells is a number is the wrong column: DataError with file, column, row.

    `shown` maps a column of `df` to the file's own name for it, used in the message."""
    for c in columns:
        s = df[c]
        if pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
            continue
        filled = ~_blank(s)
        parsed = pd.to_numeric(s, errors="coerce").notna().to_numpy()
        if filled.any() and not (parsed & filled).any():
            r = int(np.flatnonzero(filled)[0])
            name = (shown or {}).get(c, c)
            raise DataError(f"{source}: column '{name}' has no numeric value (row {r}: {clip_text(s.iloc[r], 60)!r}); "
                            f"is it the right column?")


def to_epoch_ms(raw: pd.Series, unit: str) -> pd.Series:
    """Times as epoch ms (Int64, NA for blank); unparsable cells keep their raw text for the quarantine.

    unit: "ms" (left to validation, which reads integers exactly) | "s" | "us" | "datetime" (ISO-like strings;
    naive ones are UTC, explicit offsets are honoured). Whether the times are plausible is judged later, on
    the whole file (`Checks.time_range`)."""
    if unit not in TIME_UNITS:
        raise ValueError(f"time unit {unit!r} is not one of {', '.join(TIME_UNITS)}")
    if unit == "ms":
        return raw
    filled = ~_blank(raw)
    if unit == "datetime":
        dt = pd.to_datetime(raw.where(filled), errors="coerce", utc=True, format="mixed")
        ms = ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).astype("float64")
    else:  # float64 is exact here: s and us times of any real year lie far below 2^53
        num = pd.to_numeric(raw, errors="coerce").astype("float64")
        ms = (num * 1000).round() if unit == "s" else np.floor(num / 1000)
    parsed = ms.notna().to_numpy()
    unparsable = filled & ~parsed
    if not unparsable.any():
        return ms.astype("Int64")
    out = ms.astype("Int64").astype(object)
    out[unparsable] = raw[unparsable].astype(str)
    return out


TIME_UNITS = ("ms", "s", "us", "datetime")


# ---- validation -------------------------------------------------------------------------------------
class QuarantineWriter:
    """quarantine.csv, appended to as bad rows are found (so a garbage file never sits in memory): a fixed
    header `source, row, reason` + the raw columns; a frame missing some of them leaves those cells blank."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.columns = ["source", "row", "reason", *dict.fromkeys(c for c in columns
                                                                if c not in ("source", "row", "reason"))]
        self.file = open(path, "w", newline="")
        pd.DataFrame(columns=self.columns).to_csv(self.file, index=False)
        self.rows = 0

    def write(self, q: pd.DataFrame) -> None:
        if len(q):
            q.reindex(columns=self.columns).to_csv(self.file, header=False, index=False)
            self.rows += len(q)

    def close(self) -> None:
        self.file.close()


def reason_kind(reason: str) -> str:
    """What a reason says without its value: "unparsable ts (abc)" -> "unparsable ts"."""
    return reason.split(" (", 1)[0].split(" of row", 1)[0]


@dataclass
class FileCount:
    """Rows of one input file: read, quarantined, and what the quarantined ones were."""

    source: str
    rows_in: int = 0
    quarantined: int = 0
    kinds: Counter = field(default_factory=Counter)
    first: list[str] = field(default_factory=list)

    def add(self, reasons: Iterable[str]) -> None:
        for r in reasons:
            self.quarantined += 1
            self.kinds[reason_kind(r)] += 1
            if len(self.first) < 3:
                self.first.append(r)

    def summary(self) -> str:
        return ", ".join(f"{k} ({n})" for k, n in self.kinds.most_common(3))


def _finish_checks(source: str, stats: FieldStats, checks: Checks) -> None:
    """Judge whole columns of one file once every chunk was seen."""
    ts = stats.cols.get("ts")
    name = checks.name("ts")
    if ts and ts["filled"] and ts["bad"] == ts["filled"]:
        r, v = ts["first_bad"]
        raise DataError(f"{source}: column '{name}' has no value readable as time unit '{checks.time_unit}' "
                        f"(row {r}: {clip_text(v, 60)!r})")
    if ts and ts["parsed"] and not ts["in_range"]:
        r, v, ms = ts["first_parsed"]
        y0, y1 = checks.time_range
        raise DataError(f"{source}: column '{name}': no time lies in {y0}..{y1} when read with unit "
                        f"'{checks.time_unit}' (row {r}: {clip_text(v, 60)!r} -> {iso_ms(ms)}); if the unit is "
                        f"right, widen the sanity range with `columns.time_range: [first_year, last_year]`; if not, "
                        f"fix `columns.time_unit` (one of {', '.join(TIME_UNITS)})")
    rule = ("derive the label with a rule, e.g. `label: {column: " + checks.name("label") + ", ge: 4}`, "
            "`label: {column: " + checks.name("label") + ", in: [click, like]}` or `label: {const: 1}`")
    hints = {"label": "a label column must hold 0/1 (or true/false); " + rule}
    for c in stats.cols:
        if c not in CORE:
            hints[c] = "is it the right column? a text column of categories needs `categorical: [" + c + "]`"
    stats.unusable(source, {c: checks.name(c) for c in stats.cols}, hints)
    lab = stats.cols.get("label")
    if lab and not checks.label_rule and (lab["not01"] > 0.5 * lab["filled"] or (
            len(lab["not01_values"]) >= 3 and lab["not01"] > LABEL_NOT01_SHARE * lab["filled"])):
        r, v = lab["first_not01"]
        raise DataError(f"{source}: label column '{checks.name('label')}' holds values other than 0/1 in "
                        f"{lab['not01']} of {lab['filled']} rows (row {r}: {clip_text(v, 60)!r}): it is not a 0/1 "
                        f"label; {rule}")


@dataclass
class LogRead:
    """The valid log rows (sorted by (user_id, ts), with FILE_COL and ROW_COL) and the count per input file."""

    clean: pd.DataFrame
    files: list[FileCount]


def read_log(parts: list[LogPart], features: list[str], checks: Checks, qw: QuarantineWriter) -> LogRead:
    """Validate every part chunk by chunk (bad rows straight to `qw`), judge whole columns per file, then drop
    duplicates of (user_id, item_id, ts) over all files in input order (the first is kept)."""
    kept: list[pd.DataFrame] = []
    files = []
    for i, p in enumerate(parts):
        fc = FileCount(p.source)
        files.append(fc)
        stats = FieldStats()
        for chunk in p.iter_chunks():
            if len(chunk) == 0:
                continue
            chunk = chunk.reset_index(drop=True)
            chunk[ROW_COL] = np.arange(fc.rows_in, fc.rows_in + len(chunk), dtype=np.int64)
            typed, reasons = check_fields(chunk, LOG, features, stats, checks.time_range_ms, strict_extras=True)
            bad = np.flatnonzero(reasons != "")
            if len(bad):
                qw.write(quarantine_frame(chunk, bad, typed[ROW_COL].to_numpy(), reasons, p.source))
                fc.add(reasons[bad])
            good = typed.drop(index=bad) if len(bad) else typed
            kept.append(good.assign(**{FILE_COL: np.int32(i)}))
            fc.rows_in += len(chunk)
        if fc.rows_in == 0:
            raise DataError(f"{p.source}: the file is empty (no data rows)")
        _finish_checks(p.source, stats, checks)
    clean = pd.concat(kept, ignore_index=True)
    if len(clean) == 0:
        names = ", ".join(f.source for f in files)
        first = [r for f in files for r in f.first][:3]
        raise DataError(f"{names}: no usable rows: all {sum(f.rows_in for f in files)} rows quarantined "
                        f"(first reasons: {first})")
    dup, first = first_duplicates(clean, np.ones(len(clean), dtype=bool), list(LOG.key))
    if dup.any():
        di = np.flatnonzero(dup)
        fi, rows = clean[FILE_COL].to_numpy(), clean[ROW_COL].to_numpy()
        key = "/".join(LOG.key)
        reasons = np.array([f"duplicate {key} of row {rows[first[j]]}" if fi[first[j]] == fi[j] else
                            f"duplicate {key} of {parts[fi[first[j]]].source} row {rows[first[j]]}" for j in di],
                           dtype=object)
        write_typed_quarantine(qw, clean.iloc[di], reasons, parts)
        for f_idx, r in zip(fi[di], reasons):
            files[f_idx].add([r])
        clean = clean.drop(index=di)
    clean = clean.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    return LogRead(clean, files)


def write_typed_quarantine(qw: QuarantineWriter, rows: pd.DataFrame, reasons: np.ndarray,
                           parts: list[LogPart]) -> None:
    """Quarantine rows already typed (duplicates, outliers): they show the values as stored."""
    names = np.array([p.source for p in parts], dtype=object)
    q = rows.drop(columns=[FILE_COL, ROW_COL])
    head = pd.DataFrame({"source": names[rows[FILE_COL].to_numpy()], "row": rows[ROW_COL].to_numpy(),
                         "reason": reasons}, index=q.index)
    qw.write(pd.concat([head, q], axis=1))
