"""The data model: behaviour log, items, samples and users, and the validation that guards it.

Tables (DESIGN.md "Data model"); times are epoch milliseconds:

- behaviours: user_id, item_id, ts, play_ms, duration_ms [+ cross features]. One row per watched item.
  `play_ms = -1` means the play time is unknown; `duration_ms = 0` means the duration is unknown or zero.
  Either way the completion ratio is NaN and the row is kept (offline grouping puts it in its own group).
- items: item_id, author_id, tag, duration_ms. `author_id = -1` / `tag = -1` mean unknown.
- samples: user_id, item_id, ts, label (0/1) [+ p_true for generated data].
- users (optional): user_id [+ user features].

Validation never drops a row silently: every input row is either stored or written to the quarantine with a
reason, so rows in = rows stored + rows quarantined. Input that cannot be used at all (empty file, a required
column missing, a whole column of the wrong type) raises `DataError` naming the file, the column and the row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Earliest and latest plausible event times (ms). Anything outside is an "impossible timestamp": a unit
# mix-up (seconds read as ms) or a corrupt value, never a real event for this kind of log.
MIN_TS_MS = 946_684_800_000  # 2000-01-01
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01

UNKNOWN_PLAY = -1
UNKNOWN_ID = -1


class DataError(ValueError):
    """Input that cannot be used at all; the message names the file, the column and, where it applies, the row."""


class JobFailed(RuntimeError):
    """A job stopped by a fault of the machine, not of its inputs (a worker process killed, out of memory): the
    message says what was kept and how to resume; the CLI prints it as one line and exits 1."""


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # numpy dtype of the stored column
    required: bool = True
    nonneg: bool = True  # negative values are quarantined
    is_time: bool = False  # must lie in [MIN_TS_MS, MAX_TS_MS)
    fill: float | int | None = None  # value stored for a blank cell; None = a blank cell is a bad row


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # rows equal on the key are duplicates
    sort: tuple[str, ...]
    extra_dtype: str = "float32"  # dtype of any extra (feature) column
    extras_allowed: bool = True

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


BEHAVIOURS = TableSpec(
    name="behaviours",
    columns=(
        Column("user_id", "int64"),
        Column("item_id", "int64"),
        Column("ts", "int64", is_time=True),
        Column("play_ms", "int64", required=False, fill=UNKNOWN_PLAY),
        Column("duration_ms", "int64", required=False, fill=0),
    ),
    key=("user_id", "item_id", "ts"),
    sort=("user_id", "ts"),
)

ITEMS = TableSpec(
    name="items",
    columns=(
        Column("item_id", "int64"),
        Column("author_id", "int64", required=False, fill=UNKNOWN_ID),
        Column("tag", "int64", required=False, fill=UNKNOWN_ID),
        Column("duration_ms", "int64", required=False, fill=0),
    ),
    key=("item_id",),
    sort=("item_id",),
)

SAMPLES = TableSpec(
    name="samples",
    columns=(
        Column("user_id", "int64"),
        Column("item_id", "int64"),
        Column("ts", "int64", is_time=True),
        Column("label", "int8"),
    ),
    key=("user_id", "item_id", "ts"),
    sort=("user_id", "ts"),
)

USERS = TableSpec(
    name="users",
    columns=(Column("user_id", "int64"),),
    key=("user_id",),
    sort=("user_id",),
)

SPECS = {s.name: s for s in (BEHAVIOURS, ITEMS, SAMPLES, USERS)}

# Bytes of one stored behaviour row (the five required int64 columns): what a cluster replaces.
BEHAVIOUR_ROW_BYTES = sum(np.dtype(c.dtype).itemsize for c in BEHAVIOURS.columns)

# A cluster snapshot (offline/store.py), written by the offline job and read by training and serving.
# One row per cluster (virtual item, Eq. 5-7). `user_n` / `user_last_ts` repeat the user's history
# fingerprint on each of their rows: a later snapshot compares them to decide whether the user changed.
CLUSTER_COLUMNS: dict[str, str] = {
    "user_id": "int64",
    "cluster": "int32",  # 0..C-1 within the user: by completion group, then Algorithm 1's queue order
    "n": "int32",  # cluster size n_i (used as ln n in attention, Eq. 9)
    "group": "int8",  # completion-ratio group; len(edges)+1 = unknown ratio
    "item_id": "int64",  # Eq. 6-7: categorical features of the member nearest the centroid
    "author_id": "int64",
    "tag": "int64",
    "duration_ms": "float32",  # Eq. 5: means over members with a known value (NaN if none)
    "play_ms": "float32",
    "ratio": "float32",  # mean completion ratio; NaN in the unknown-ratio group
    "ts": "float64",  # mean behaviour time (float64: epoch ms do not fit float32)
    "user_n": "int64",  # behaviours of the user before the snapshot (T)
    "user_last_ts": "int64",  # time of the user's last behaviour before the snapshot
}
# Bytes of one virtual item as the model reads it (everything but the per-user fingerprint columns).
CLUSTER_ROW_BYTES = sum(np.dtype(v).itemsize for k, v in CLUSTER_COLUMNS.items()
                        if not k.startswith("user_") or k == "user_id")


def completion_ratio(play_ms: np.ndarray, duration_ms: np.ndarray) -> np.ndarray:
    """p = play / duration as float32; NaN where the duration is unknown/zero or the play time unknown."""
    play = np.asarray(play_ms, dtype=np.float64)
    dur = np.asarray(duration_ms, dtype=np.float64)
    ok = (dur > 0) & (play >= 0)
    out = np.full(play.shape, np.nan, dtype=np.float32)
    np.divide(play, dur, out=out, where=ok, casting="unsafe")
    return out


@dataclass
class Validated:
    """The outcome of `validate`: the rows kept (typed, sorted) and the rows quarantined with a reason each."""

    clean: pd.DataFrame
    quarantine: pd.DataFrame  # columns: source, row, reason, then the raw values
    rows_in: int
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.rows_in == len(self.clean) + len(self.quarantine), "row conservation broken"


def _is_blank(s: pd.Series) -> np.ndarray:
    if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
        return (s.isna() | (s.astype(str).str.strip() == "")).to_numpy(dtype=bool)
    return s.isna().to_numpy(dtype=bool)


def _parse_numeric(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64 with NaN for bad cells, mask of non-blank cells that did not parse)."""
    blank = _is_blank(s)
    if pd.api.types.is_bool_dtype(s.dtype):
        s = s.astype("float64")
    num = pd.to_numeric(s, errors="coerce").astype("float64").to_numpy(copy=True)
    bad = ~blank & (np.isnan(num) | np.isinf(num))
    num[np.isinf(num)] = np.nan
    return num, bad


# ---- exact integers ---------------------------------------------------------------------------------
# Status of each cell read by `parse_int64`.
INT_OK, INT_BLANK, INT_UNPARSABLE, INT_FRACTION, INT_RANGE, INT_INEXACT = range(6)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT_EXACT = 2**53  # float64 holds every integer below 2^53; from there on, neighbouring ids share one float
_DIGITS = re.compile(r"[+-]?\d+")


def _int_of_text(t: str) -> tuple[int, int]:
    """(status, value) of one stripped text cell that is not a plain run of at most 18 digits."""
    if "_" in t:  # int() and Decimal() accept "1_000"; no log writes numbers that way
        return INT_UNPARSABLE, 0
    if _DIGITS.fullmatch(t):
        if len(t.lstrip("+-").lstrip("0")) > 19:  # before int(): Python refuses > 4300 digits, and it is out anyway
            return INT_RANGE, 0
        v = int(t)
        return (INT_OK, v) if INT64_MIN <= v <= INT64_MAX else (INT_RANGE, 0)
    try:
        d = Decimal(t)
    except (InvalidOperation, ValueError):
        return INT_UNPARSABLE, 0
    if not d.is_finite():
        return INT_UNPARSABLE, 0
    if d.adjusted() >= 19:  # |d| >= 10^19 > 2^63
        return INT_RANGE, 0
    if d != d.to_integral_value():
        return INT_FRACTION, 0
    v = int(d)
    if not INT64_MIN <= v <= INT64_MAX:
        return INT_RANGE, 0
    if abs(v) >= FLOAT_EXACT:  # "1.2345678901234567e18": the digits came out of a float and may be a neighbour's
        return INT_INEXACT, 0
    return INT_OK, v


def _ints_of_floats(f: np.ndarray, vals: np.ndarray, st: np.ndarray) -> None:
    nan, inf = np.isnan(f), np.isinf(f)
    st[nan] = INT_BLANK
    st[inf] = INT_UNPARSABLE
    fin = ~nan & ~inf
    frac = fin & (np.floor(np.where(fin, f, 0)) != np.where(fin, f, 0))
    st[frac] = INT_FRACTION
    whole = fin & ~frac
    rng = whole & ((f >= 2.0**63) | (f < -(2.0**63)))
    st[rng] = INT_RANGE
    inexact = whole & ~rng & (np.abs(np.where(whole, f, 0)) >= float(FLOAT_EXACT))
    st[inexact] = INT_INEXACT
    ok = whole & ~rng & ~inexact
    vals[ok] = f[ok].astype(np.int64)


def parse_int64(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Exact int64 values of `s` (0 where not OK) and a status per cell: INT_OK, INT_BLANK, INT_UNPARSABLE,
    INT_FRACTION (2.5), INT_RANGE (outside int64, e.g. 2^63) or INT_INEXACT (a float, or float-formatted text,
    at or beyond 2^53: float64 cannot hold every digit, so the value may be a neighbour's id).

    Text and integer input never pass through float64: "9223372036854775807" keeps every digit."""
    n = len(s)
    vals = np.zeros(n, dtype=np.int64)
    st = np.full(n, INT_OK, dtype=np.int8)
    dt = s.dtype
    if pd.api.types.is_bool_dtype(dt) or pd.api.types.is_integer_dtype(dt):
        st[s.isna().to_numpy(dtype=bool)] = INT_BLANK
        if pd.api.types.is_unsigned_integer_dtype(dt):
            u = np.array(s.to_numpy(dtype=np.uint64, na_value=0), copy=True)
            big = u > np.uint64(INT64_MAX)
            st[big] = INT_RANGE
            u[big] = 0
            return u.astype(np.int64), st
        return np.array(s.to_numpy(dtype=np.int64, na_value=0), copy=True), st
    if pd.api.types.is_float_dtype(dt):
        _ints_of_floats(s.to_numpy(dtype=np.float64, na_value=np.nan), vals, st)
        return vals, st
    blank = _is_blank(s)
    st[blank] = INT_BLANK
    idx = np.flatnonzero(~blank)
    if len(idx) == 0:
        return vals, st
    sub = s.iloc[idx]
    if pd.api.types.is_string_dtype(sub.dtype):
        try:  # the common case, all plain integers: one exact Arrow cast (it refuses overflow, fractions, text)
            arr = pc.utf8_trim_whitespace(pa.array(sub, type=pa.string()))
            vals[idx] = pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False)
            return vals, st
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass  # some cell is not a plain integer: judge each below
    text = sub.astype(str).str.strip()
    simple = text.str.fullmatch(r"[+-]?\d{1,18}").to_numpy(dtype=bool, na_value=False)
    if simple.any():  # at most 18 digits always fit int64: the fast, exact path for nearly every cell
        vals[idx[simple]] = text[simple].astype(np.int64).to_numpy()
    for j, t in zip(idx[~simple], text[~simple]):
        st[j], vals[j] = _int_of_text(t)
    return vals, st


# ---- quarantine rows --------------------------------------------------------------------------------
MAX_RAW_CHARS = 200  # raw text kept per quarantined cell: enough to see what it was, bounded for garbage input
REASON_VALUE_CHARS = 60  # a value quoted inside a reason; a longer one is only in its raw column


def clip_text(v: object, limit: int = MAX_RAW_CHARS) -> str:
    """`str(v)`, cut to `limit` characters with a note of how many were left out."""
    t = str(v)
    return t if len(t) <= limit else f"{t[:limit]}...(+{len(t) - limit} chars)"


def quarantine_frame(raw: pd.DataFrame, bad: np.ndarray, rows: np.ndarray, reasons: np.ndarray,
                     source: str) -> pd.DataFrame:
    """The quarantine rows for the positions `bad` of `raw`: source, row, reason, then each raw value as text
    cut to MAX_RAW_CHARS (a quarantined row never stores more than that per cell)."""
    part = raw.iloc[bad].drop(columns=["__row"], errors="ignore")
    cols = {}
    for c in part.columns:
        t = part[c].to_numpy(dtype=object, copy=True)
        for j, x in enumerate(t):
            if isinstance(x, str) and len(x) > MAX_RAW_CHARS:
                t[j] = clip_text(x)
        cols[c] = t
    head = pd.DataFrame({"source": source, "row": np.asarray(rows)[bad],
                         "reason": np.asarray(reasons)[bad].astype(str)})
    return pd.concat([head, pd.DataFrame(cols, index=head.index)], axis=1)


# ---- validation -------------------------------------------------------------------------------------
class FieldStats:
    """What `check_fields` saw in each column, summed over every chunk of one input: non-blank cells, cells
    that did not parse (and the first one), and for the time column the parsed cells and those inside the
    time range (and the first parsed one), for the label the parsed values other than 0/1 (and the first)."""

    def __init__(self) -> None:
        self.cols: dict[str, dict] = {}

    def col(self, name: str, integer: bool) -> dict:
        return self.cols.setdefault(name, {"integer": integer, "filled": 0, "bad": 0, "first_bad": None,
                                           "parsed": 0, "in_range": 0, "first_parsed": None,
                                           "not01": 0, "first_not01": None, "not01_values": set()})

    def unusable(self, source: str, shown: dict[str, str] | None = None,
                 hints: dict[str, str] | None = None) -> None:
        """DataError for the first column none of whose non-blank cells parsed (the wrong column)."""
        for name, c in self.cols.items():
            if c["filled"] and c["bad"] == c["filled"]:
                r, v = c["first_bad"]
                kind = "integer" if c["integer"] else "numeric"
                raise DataError(f"{source}: column '{(shown or {}).get(name, name)}' has no usable {kind} value "
                                f"(row {r}: {clip_text(v, REASON_VALUE_CHARS)!r}); "
                                f"{(hints or {}).get(name, 'is it the right column?')}")


def check_fields(df: pd.DataFrame, spec: TableSpec, extras: list[str], stats: FieldStats,
                 time_range_ms: tuple[int, int] = (MIN_TS_MS, MAX_TS_MS), strict_extras: bool = False,
                 ) -> tuple[pd.DataFrame, np.ndarray]:
    """Type every cell of `df` (raw values, any dtype) against `spec` without judging rows against each other:
    (typed frame with `__row`, reason per row, "" = good). Integer columns are read exactly (`parse_int64`);
    time columns must lie in `time_range_ms` (default 2000..2100). `stats` accumulates what each column held
    (extras only with `strict_extras`), so that a caller reading in chunks can judge whole columns."""
    lo, hi = time_range_ms
    n = len(df)
    rows = np.arange(n) if "__row" not in df.columns else df["__row"].to_numpy()
    reasons = np.full(n, "", dtype=object)
    open_ = np.ones(n, dtype=bool)  # rows without a reason yet (cheaper than comparing the reasons each time)

    def flag(mask: np.ndarray, text: str, raw: pd.Series | None = None, suffix: str = ")") -> None:
        """Give rows in `mask` without a reason yet the reason `text`, or `text` + raw value + `suffix`
        (formatted only for those rows: converting whole columns to text would dominate on big files). A long
        value is not repeated: the reason points to its (clipped) raw column."""
        new = np.flatnonzero(mask & open_)
        if len(new) == 0:
            return
        open_[new] = False
        if raw is None:
            reasons[new] = text
        else:
            reasons[new] = [f"{text}{v if len(v) <= REASON_VALUE_CHARS else f'{len(v)} chars: see column {raw.name}'}"
                            f"{suffix}" for v in raw.iloc[new].astype(object).map(str)]

    def record(c: dict, blank: np.ndarray, bad: np.ndarray, raw: pd.Series) -> None:
        c["filled"] += int((~blank).sum())
        c["bad"] += int(bad.sum())
        if c["first_bad"] is None and bad.any():
            i = int(np.flatnonzero(bad)[0])
            c["first_bad"] = (int(rows[i]), raw.iloc[i])

    out: dict[str, np.ndarray] = {}
    for col in spec.columns:
        integer = np.issubdtype(np.dtype(col.dtype), np.integer)
        if col.name not in df.columns:
            out[col.name] = np.full(n, col.fill, dtype=col.dtype)
            continue
        raw = df[col.name]
        c = stats.col(col.name, integer)
        if integer:
            values, st = parse_int64(raw)
            blank = st == INT_BLANK
            ok = st == INT_OK
            record(c, blank, ~blank & ~ok, raw)
            flag((st == INT_UNPARSABLE) | (st == INT_FRACTION), f"unparsable {col.name} (", raw)
            flag(st == INT_RANGE, f"{col.name} out of the int64 range (", raw)
            flag(st == INT_INEXACT, f"inexact {col.name} (", raw, "; a float at or beyond 2^53 cannot hold "
                                                                  "every digit: write the ids as integers)")
        else:
            values, bad = _parse_numeric(raw)
            blank = _is_blank(raw)
            ok = ~np.isnan(values)
            record(c, blank, bad, raw)
            flag(bad, f"unparsable {col.name} (", raw)
        if col.fill is None:
            flag(blank, f"missing {col.name}")
        else:
            values[blank] = col.fill
        if col.is_time:  # the range check replaces the sign check: a time range may start before 1970
            inside = ok & (values >= lo) & (values < hi)
            c["parsed"] += int(ok.sum())
            c["in_range"] += int(inside.sum())
            if c["first_parsed"] is None and ok.any():
                i = int(np.flatnonzero(ok)[0])
                c["first_parsed"] = (int(rows[i]), raw.iloc[i], int(values[i]))
            flag(ok & ~inside, f"impossible {col.name} (", raw, " ms)")
        elif col.nonneg:
            flag(ok & (values < 0), f"negative {col.name} (", raw)
        if col.name == "label":
            not01 = ok & (values != 0) & (values != 1)
            c["not01"] += int(not01.sum())
            if len(c["not01_values"]) < 10:
                c["not01_values"].update(np.unique(values[not01])[:10].tolist())
            if c["first_not01"] is None and not01.any():
                i = int(np.flatnonzero(not01)[0])
                c["first_not01"] = (int(rows[i]), raw.iloc[i])
            flag(not01, "label not 0/1 (", raw)
        if not integer:
            values = np.where(np.isnan(values), 0, values)
        out[col.name] = values.astype(col.dtype)

    for e in extras:
        values, bad = _parse_numeric(df[e])
        if strict_extras:
            record(stats.col(e, False), _is_blank(df[e]), bad, df[e])
        flag(bad, f"unparsable {e} (", df[e])
        out[e] = values.astype(spec.extra_dtype)

    typed = pd.DataFrame(out)
    typed["__row"] = rows
    return typed, reasons


def first_duplicates(typed: pd.DataFrame, good: np.ndarray, key: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows equal on `key` to an earlier good row (the first occurrence is kept): (mask, position of that first
    occurrence for each masked row; -1 elsewhere)."""
    n = len(typed)
    dup = np.zeros(n, dtype=bool)
    first = np.full(n, -1, dtype=np.int64)
    gi = np.flatnonzero(good)
    if not key or len(gi) == 0:
        return dup, first
    g = typed.iloc[gi]
    d = g.duplicated(subset=key, keep="first").to_numpy()
    if d.any():
        dup[gi[d]] = True
        pos = pd.Series(np.arange(len(g)), index=g.index)
        first_pos = pos.groupby([g[k] for k in key], sort=False).transform("first").to_numpy()
        first[gi[d]] = gi[first_pos[d]]
    return dup, first


def validate(df: pd.DataFrame, spec: TableSpec, source: str, extras: list[str] | None = None,
             time_range_ms: tuple[int, int] | None = None) -> Validated:
    """Type, check and sort `df` (raw values, any dtype) against `spec`.

    `source` names the file in every message. `extras` are further numeric columns to keep (cross or user
    features); a blank extra cell is stored as NaN. Row numbers in the quarantine are 0-based data rows of the
    source (the CSV line is row + 2 with a header). Ids and other integer columns are read exactly: a value
    outside int64, a fraction, or a float at or beyond 2^53 is quarantined with its reason, never rounded.
    """
    if len(df.columns) == 0 or len(df) == 0:
        raise DataError(f"{source}: the file is empty (no {spec.name} rows)")
    missing = [c.name for c in spec.columns if c.required and c.name not in df.columns]
    if missing:
        raise DataError(
            f"{source}: required column(s) {missing} missing for {spec.name}; columns present: {list(df.columns)}"
        )
    extras = list(extras or [])
    for e in extras:
        if e not in df.columns:
            raise DataError(f"{source}: feature column '{e}' missing; columns present: {list(df.columns)}")

    stats = FieldStats()
    typed, reasons = check_fields(df, spec, extras, stats, time_range_ms or (MIN_TS_MS, MAX_TS_MS))
    stats.unusable(source)
    rows = typed["__row"].to_numpy()
    dup, first = first_duplicates(typed, reasons == "", list(spec.key))
    for i in np.flatnonzero(dup):
        reasons[i] = f"duplicate {'/'.join(spec.key)} of row {rows[first[i]]}"
    good = reasons == ""
    clean = typed[good].sort_values(list(spec.sort), kind="stable").drop(columns="__row").reset_index(drop=True)
    quarantine = quarantine_frame(df, np.flatnonzero(~good), rows, reasons, source)
    return Validated(clean=clean, quarantine=quarantine, rows_in=len(df))


def check_schema(df: pd.DataFrame, spec: TableSpec, source: str) -> None:
    """Cheap check of an already-typed frame (e.g. read back from storage): required columns and dtypes."""
    for col in spec.columns:
        if col.name not in df.columns:
            raise DataError(f"{source}: column '{col.name}' missing from {spec.name}")
        if str(df[col.name].dtype) != col.dtype:
            raise DataError(f"{source}: column '{col.name}' is {df[col.name].dtype}, expected {col.dtype}")
