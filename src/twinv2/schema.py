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

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Earliest and latest plausible event times (ms). Anything outside is an "impossible timestamp": a unit
# mix-up (seconds read as ms) or a corrupt value, never a real event for this kind of log.
MIN_TS_MS = 946_684_800_000  # 2000-01-01
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01

UNKNOWN_PLAY = -1
UNKNOWN_ID = -1


class DataError(ValueError):
    """Input that cannot be used at all; the message names the file, the column and, where it applies, the row."""


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
        return (s.isna() | (s.astype(str).str.strip() == "")).to_numpy()
    return s.isna().to_numpy()


def _parse_numeric(s: pd.Series, integer: bool) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64 with NaN for bad cells, mask of non-blank cells that did not parse)."""
    blank = _is_blank(s)
    if pd.api.types.is_bool_dtype(s.dtype):
        s = s.astype("int64")
    num = pd.to_numeric(s, errors="coerce").astype("float64").to_numpy(copy=True)
    bad = ~blank & (np.isnan(num) | np.isinf(num))
    if integer:
        frac = ~np.isnan(num) & ~np.isinf(num) & (np.floor(num) != num)
        bad |= frac
        num[frac] = np.nan
    num[np.isinf(num)] = np.nan
    return num, bad


def validate(df: pd.DataFrame, spec: TableSpec, source: str, extras: list[str] | None = None) -> Validated:
    """Type, check and sort `df` (raw values, any dtype) against `spec`.

    `source` names the file in every message. `extras` are further numeric columns to keep (cross or user
    features); a blank extra cell is stored as NaN. Row numbers in the quarantine are 0-based data rows of the
    source (the CSV line is row + 2 with a header).
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

    n = len(df)
    rows = np.arange(n) if "__row" not in df.columns else df["__row"].to_numpy()
    reasons = np.full(n, "", dtype=object)

    def flag(mask: np.ndarray, text: str, raw: pd.Series | None = None, suffix: str = ")") -> None:
        """Give rows in `mask` without a reason yet the reason `text`, or `text` + raw value + `suffix`
        (formatted only for those rows: converting whole columns to text would dominate on big files)."""
        new = np.flatnonzero(mask & (reasons == ""))
        if len(new) == 0:
            return
        if raw is None:
            reasons[new] = text
        else:
            reasons[new] = [f"{text}{v}{suffix}" for v in raw.iloc[new].astype(str)]

    out: dict[str, np.ndarray] = {}
    for col in spec.columns:
        integer = np.issubdtype(np.dtype(col.dtype), np.integer)
        if col.name not in df.columns:
            out[col.name] = np.full(n, col.fill, dtype=col.dtype)
            continue
        raw = df[col.name]
        values, bad = _parse_numeric(raw, integer)
        blank = _is_blank(raw)
        if bad.any() and bad.sum() == (~blank).sum():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{source}: column '{col.name}' has no usable {'integer' if integer else 'numeric'} value "
                f"(row {rows[first]}: {raw.iloc[first]!r}); is it the right column?"
            )
        flag(bad, f"unparsable {col.name} (", raw)
        ok = ~np.isnan(values)  # parsed, non-blank cells: the ones the range checks apply to
        if col.fill is None:
            flag(blank, f"missing {col.name}")
        else:
            values[blank] = col.fill
        if col.nonneg:
            neg = ok & (values < 0)
            flag(neg, f"negative {col.name} (", raw)
        if col.is_time:
            out_of_range = ok & ((values < MIN_TS_MS) | (values >= MAX_TS_MS))
            flag(out_of_range, f"impossible {col.name} (", raw, " ms)")
        if col.name == "label":
            flag(ok & ~np.isin(values, (0, 1)), "label not 0/1 (", raw)
        values = np.where(np.isnan(values), 0, values)
        out[col.name] = values.astype(col.dtype)

    for e in extras:
        values, bad = _parse_numeric(df[e], integer=False)
        flag(bad, f"unparsable {e} (", df[e])
        out[e] = values.astype(spec.extra_dtype)

    typed = pd.DataFrame(out)
    typed["__row"] = rows
    good = reasons == ""
    # Duplicates on the key among otherwise good rows: the first occurrence is kept.
    if spec.key:
        dup = np.zeros(n, dtype=bool)
        gi = np.flatnonzero(good)
        d = typed.iloc[gi].duplicated(subset=list(spec.key), keep="first").to_numpy()
        dup[gi[d]] = True
        if dup.any():
            first_row = typed.iloc[gi].groupby(list(spec.key), sort=False)["__row"].transform("first").to_numpy()
            dup_of = pd.Series(np.zeros(n, dtype=np.int64))
            dup_of.iloc[gi] = first_row
            flag(dup, f"duplicate {'/'.join(spec.key)} of row ", dup_of, "")
    good = reasons == ""

    clean = typed[good].sort_values(list(spec.sort), kind="stable").drop(columns="__row").reset_index(drop=True)
    bad_idx = np.flatnonzero(~good)
    raw_bad = df.iloc[bad_idx].drop(columns=["__row"], errors="ignore").astype(str)
    quarantine = pd.concat(
        [
            pd.DataFrame({"source": source, "row": rows[bad_idx], "reason": reasons[bad_idx].astype(str)}),
            raw_bad.reset_index(drop=True),
        ],
        axis=1,
    )
    return Validated(clean=clean, quarantine=quarantine, rows_in=n)


def check_schema(df: pd.DataFrame, spec: TableSpec, source: str) -> None:
    """Cheap check of an already-typed frame (e.g. read back from storage): required columns and dtypes."""
    for col in spec.columns:
        if col.name not in df.columns:
            raise DataError(f"{source}: column '{col.name}' missing from {spec.name}")
        if str(df[col.name].dtype) != col.dtype:
            raise DataError(f"{source}: column '{col.name}' is {df[col.name].dtype}, expected {col.dtype}")
