"""Shared import machinery: validate a log, split it into history and samples, derive items/users, write.

Every importer (KuaiRand layouts, generic YAML mapping) turns its input into `LogPart`s whose columns already
carry the stored names (`user_id, item_id, ts` in epoch ms, `play_ms, duration_ms, label` + feature columns)
and hands them to `build_dataset` with a `SplitRule`. From there the path is the same for all:

1. Validation (`validate_log`): the parts are validated as one table (so duplicates across files are found),
   labels must be 0/1; each bad row goes to `quarantine.csv` with its file, 0-based data row and reason.
2. Split (`SplitRule.assign`): each valid row becomes a sample, a behaviour (history), both, or is *unused*
   (e.g. an unclicked impression before the sample days). Per input file the manifest records
   `rows_in = rows_stored + rows_quarantined + rows_unused`, with `rows_stored = rows_as_sample_only +
   rows_as_behaviour_only + rows_as_both`. A sample's history is every behaviour of its user with a strictly
   smaller `ts` (readers enforce it), so a clicked sample row that is also a behaviour never sees itself.
3. Items: one row per item referenced by a stored behaviour or sample. Matched against an item-features file
   when there is one; an item without features gets `author_id = -1`, `tag = -1` and, as duration, the median
   of the positive `duration_ms` observed for it in the valid log rows (0 when none was observed). The manifest
   reports the match rate.
4. Users: one row per user with a stored behaviour or sample, features joined where the ids match (NaN where
   not); written only when user features exist.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinv2.data.dirs import staged_dir
from twinv2.data.storage import DAY_MS, EvalDay, ShardedWriter, write_manifest, write_table
from twinv2.schema import (BEHAVIOURS, ITEMS, SAMPLES, UNKNOWN_ID, Column, DataError,
                           MAX_TS_MS, MIN_TS_MS, validate)

# The log as read: one row per impression or watch, validated before the split decides what it becomes.
LOG = dataclasses.replace(BEHAVIOURS, name="log", columns=BEHAVIOURS.columns + (Column("label", "int8"),))
CORE = [c.name for c in LOG.columns]
FILE_COL = "__file"  # index of the input file, carried through validation as a (small, exact) float extra
_HISTORY_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*==\s*(-?\d+)\s*$")


@dataclass
class LogPart:
    """One input file's rows with stored column names; `source` names the file in messages."""

    source: str
    frame: pd.DataFrame


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
            raise DataError(f"{source}: column '{name}' has no numeric value (row {r}: {s.iloc[r]!r}); "
                            f"is it the right column?")


def to_epoch_ms(raw: pd.Series, unit: str, source: str, column: str) -> pd.Series:
    """Times as epoch ms (Int64, NA for blank); unparsable cells keep their raw text for the quarantine.

    unit: "ms" | "s" | "datetime" (ISO-like strings; naive ones are UTC, explicit offsets are honoured).
    A column with no plausible time at all (e.g. seconds declared as ms) is a DataError naming the unit.
    """
    if unit not in ("ms", "s", "datetime"):
        raise ValueError(f"{source}: time unit {unit!r} for column '{column}' is not one of ms, s, datetime")
    filled = ~_blank(raw)
    if unit == "datetime":
        dt = pd.to_datetime(raw.where(filled), errors="coerce", utc=True, format="mixed")
        ms = ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).astype("float64")
    else:
        ms = pd.to_numeric(raw, errors="coerce").astype("float64")
        if unit == "s":
            ms = (ms * 1000).round()
    parsed = ms.notna().to_numpy()
    if filled.any() and not (parsed & filled).any():
        r = int(np.flatnonzero(filled)[0])
        raise DataError(f"{source}: column '{column}' has no value readable as time unit '{unit}' "
                        f"(row {r}: {raw.iloc[r]!r})")
    vals = ms.to_numpy()
    if parsed.any() and not ((vals[parsed] >= MIN_TS_MS) & (vals[parsed] < MAX_TS_MS)).any():
        r = int(np.flatnonzero(parsed)[0])
        raise DataError(f"{source}: column '{column}': no time lies in 2000..2100 when read with unit '{unit}' "
                        f"(row {r}: {raw.iloc[r]!r} -> {int(vals[r])} ms); is the time unit right?")
    if unit == "ms":
        return raw  # validate parses it and shows the raw text in any reason
    unparsable = filled & ~parsed
    if not unparsable.any():
        return ms.astype("Int64")
    out = ms.astype("Int64").astype(object)
    out[unparsable] = raw[unparsable].astype(str)
    return out


# ---- validation -------------------------------------------------------------------------------------
def validate_log(parts: list[LogPart], features: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate all parts as one table. Returns (clean rows with FILE_COL, quarantine with file/row/reason)."""
    for p in parts:
        if len(p.frame) == 0:
            raise DataError(f"{p.source}: the file is empty (no data rows)")
    sizes = np.array([len(p.frame) for p in parts])
    starts = np.r_[0, np.cumsum(sizes)]
    names = np.array([p.source for p in parts], dtype=object)
    df = pd.concat([p.frame.assign(**{FILE_COL: i}) for i, p in enumerate(parts)], ignore_index=True)
    v = validate(df, LOG, ", ".join(names), extras=features + [FILE_COL])  # labels outside 0/1 included
    q = v.quarantine.drop(columns=[FILE_COL], errors="ignore")
    g = q["row"].to_numpy(dtype=np.int64)
    f = np.searchsorted(starts, g, side="right") - 1
    q["source"], q["row"] = names[f], g - starts[f]
    q = q.assign(__f=f).sort_values(["__f", "row"], kind="stable").drop(columns="__f").reset_index(drop=True)
    if len(v.clean) == 0:
        raise DataError(f"{', '.join(names)}: no usable rows: all {len(df)} rows quarantined "
                        f"(first reasons: {q['reason'].head(3).tolist()})")
    return v.clean, q


# ---- split ------------------------------------------------------------------------------------------
def day_label(local_day: int) -> str:
    """The calendar date (YYYY-MM-DD) of a day number counted in the data's own clock."""
    return time.strftime("%Y-%m-%d", time.gmtime(local_day * 86_400))


@dataclass(frozen=True)
class SplitRule:
    """How valid log rows become samples and behaviours.

    kind "last_days": every row whose local day (day boundaries at UTC + `day_offset_hours`) is among the last
    `last_days` consecutive days ending with the latest day in the log is a sample; eval days are those days.
    kind "last_half_per_user": each user's last max(1, n_u // 2) rows in time order are samples; eval days
    are the local days the samples span.
    Behaviours (either kind): rows with `history` true at any time: "all", or "<column> == <integer>".
    """

    kind: str = "last_days"
    last_days: int = 5
    day_offset_hours: float = 0.0
    history: str = "label == 1"

    def __post_init__(self) -> None:
        if self.kind not in ("last_days", "last_half_per_user"):
            raise ValueError(f"split kind {self.kind!r} is not one of last_days, last_half_per_user")
        if self.kind == "last_days" and (not isinstance(self.last_days, int) or self.last_days < 1):
            raise ValueError(f"split.last_days must be an integer >= 1, got {self.last_days!r}")
        if not isinstance(self.day_offset_hours, (int, float)) or not -24 < self.day_offset_hours < 24:
            raise ValueError(f"split.day_offset_hours must be a number in (-24, 24), got {self.day_offset_hours!r}")
        self.history_column()

    def history_column(self) -> tuple[str, int] | None:
        """(column, value) of the history filter, None for "all"."""
        if self.history.strip() == "all":
            return None
        m = _HISTORY_RE.match(self.history)
        if m is None:
            raise ValueError(f"split.history {self.history!r} must be 'all' or '<column> == <integer>', "
                             f"e.g. 'label == 1'")
        return m.group(1), int(m.group(2))

    @property
    def offset_ms(self) -> int:
        return int(round(self.day_offset_hours * 3_600_000))

    def text(self) -> str:
        tz = f"UTC{self.day_offset_hours:+g}"
        if self.kind == "last_days":
            s = (f"samples: every valid row in the last {self.last_days} day(s) of the log (day boundaries at "
                 f"midnight {tz}), whatever its label")
        else:
            s = "samples: each user's last max(1, n_u // 2) valid rows in time order"
        h = self.history_column()
        b = "every valid row at any time" if h is None else f"every valid row with {h[0]} == {h[1]}, at any time"
        return (f"{s}; behaviours (history): {b}; a sample sees only its user's behaviours with ts strictly "
                f"before its own; other valid rows are counted as unused")

    def assign(self, clean: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[EvalDay]]:
        """(is_sample, is_behaviour, eval days) for `clean` sorted by (user_id, ts)."""
        ts = clean["ts"].to_numpy()
        local_day = (ts + self.offset_ms) // DAY_MS
        if self.kind == "last_days":
            first = int(local_day.max()) - self.last_days + 1
            is_sample = local_day >= first
            days = range(first, first + self.last_days)
        else:
            uid = clean["user_id"]
            from_end = uid.groupby(uid, sort=False).cumcount(ascending=False).to_numpy()
            n_u = uid.groupby(uid, sort=False).transform("size").to_numpy()
            is_sample = from_end < np.maximum(1, n_u // 2)
            days = range(int(local_day[is_sample].min()), int(local_day[is_sample].max()) + 1)
        h = self.history_column()
        if h is None:
            is_beh = np.ones(len(clean), dtype=bool)
        else:
            if h[0] not in clean.columns:
                raise ValueError(f"split.history uses column '{h[0]}', which is not among the imported columns "
                                 f"{list(clean.columns.drop(FILE_COL, errors='ignore'))}")
            is_beh = (clean[h[0]].to_numpy() == h[1])
        evals = [EvalDay(index=i, label=day_label(d), start_ms=d * DAY_MS - self.offset_ms)
                 for i, d in enumerate(days)]
        return is_sample, is_beh, evals


# ---- items and users --------------------------------------------------------------------------------
def derive_items(clean: pd.DataFrame, item_ids: np.ndarray, features: pd.DataFrame | None) -> pd.DataFrame:
    """Items table for `item_ids` (see module docstring); `features` is a validated ITEMS frame or None."""
    d = clean.loc[clean["duration_ms"] > 0, ["item_id", "duration_ms"]]
    observed = d.groupby("item_id")["duration_ms"].median().round().astype("int64")
    items = pd.DataFrame({"item_id": np.sort(item_ids).astype("int64")})
    obs = items["item_id"].map(observed).fillna(0).astype("int64")
    if features is None:
        items["author_id"], items["tag"], items["duration_ms"] = UNKNOWN_ID, UNKNOWN_ID, obs
        return items[ITEMS.names]
    f = features.set_index("item_id")
    items["author_id"] = items["item_id"].map(f["author_id"]).fillna(UNKNOWN_ID).astype("int64")
    items["tag"] = items["item_id"].map(f["tag"]).fillna(UNKNOWN_ID).astype("int64")
    fd = items["item_id"].map(f["duration_ms"]).fillna(0).astype("int64")
    items["duration_ms"] = np.where(fd > 0, fd, obs).astype("int64")
    return items[ITEMS.names]


def join_users(user_ids: np.ndarray, features: pd.DataFrame) -> pd.DataFrame:
    """One row per user id; feature columns (float32) NaN where the user has no features."""
    users = pd.DataFrame({"user_id": np.sort(user_ids).astype("int64")})
    return users.merge(features, on="user_id", how="left", validate="one_to_one")


def side_accounting(entry: dict[str, Any], clean_ids: np.ndarray, used_ids: np.ndarray) -> dict[str, Any]:
    """Complete the accounting of an item/user features file ({file, role, rows_in, rows_quarantined}):
    stored = valid rows whose id the dataset uses, unused = valid rows for ids it does not use."""
    stored = int(np.isin(clean_ids, used_ids).sum())
    out = {**entry, "rows_stored": stored, "rows_unused": entry["rows_in"] - stored - entry["rows_quarantined"]}
    assert out["rows_unused"] >= 0, out
    return out


# ---- writing ----------------------------------------------------------------------------------------
def build_dataset(out: str | Path, *, name: str, source: str, parts: list[LogPart], rule: SplitRule,
                  cross_features: list[str], sample_features: list[str], n_shards: int, overwrite: bool,
                  item_features: pd.DataFrame | None = None, user_features: pd.DataFrame | None = None,
                  side_quarantine: list[pd.DataFrame] | None = None, side_inputs: list[dict] | None = None,
                  log_features: list[str] | None = None, users_from_log: list[str] | None = None,
                  extra_manifest: dict[str, Any] | None = None) -> Path:
    """Validate, split and write a dataset directory; returns its path. Nothing is written before the input
    has been read and validated, so a DataError leaves an existing `out` untouched.

    `log_features` are further numeric log columns needed by the rule (history filter). `users_from_log` are
    user features read from the log itself: per user, the values on the user's latest valid row.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    from_log = list(users_from_log or [])
    if from_log and user_features is not None:
        raise ValueError("user features come either from the log or from a users file, not both")
    feats = list(dict.fromkeys(cross_features + sample_features + list(log_features or []) + from_log))
    clean, quarantine = validate_log(parts, feats)
    if from_log:  # clean is sorted by (user_id, ts): the last row per user is the latest
        user_features = clean.groupby("user_id", sort=True).tail(1)[["user_id", *from_log]].reset_index(drop=True)
    is_sample, is_beh, days = rule.assign(clean)
    fidx = clean[FILE_COL].to_numpy().astype(np.int64)
    used = is_sample | is_beh

    beh = clean.loc[is_beh, BEHAVIOURS.names + cross_features]
    smp = clean.loc[is_sample, SAMPLES.names + sample_features]
    users_used = np.union1d(beh["user_id"].unique(), smp["user_id"].unique())
    items_used = np.union1d(beh["item_id"].unique(), smp["item_id"].unique())
    items = derive_items(clean, items_used, item_features)
    users = join_users(users_used, user_features) if user_features is not None else None

    inputs = []
    for i, p in enumerate(parts):
        mine = fidx == i
        n_in, n_q = len(p.frame), int((quarantine["source"] == p.source).sum())
        row = {"file": p.source, "role": "log", "rows_in": n_in, "rows_stored": int((mine & used).sum()),
               "rows_quarantined": n_q, "rows_unused": int((mine & ~used).sum()),
               "rows_as_sample_only": int((mine & is_sample & ~is_beh).sum()),
               "rows_as_behaviour_only": int((mine & is_beh & ~is_sample).sum()),
               "rows_as_both": int((mine & is_beh & is_sample).sum())}
        assert row["rows_in"] == row["rows_stored"] + row["rows_quarantined"] + row["rows_unused"], row
        inputs.append(row)
    for e in side_inputs or []:
        if e["role"] == "items":
            assert item_features is not None
            inputs.append(side_accounting(e, item_features["item_id"].to_numpy(), items_used))
        else:
            assert user_features is not None
            inputs.append(side_accounting(e, user_features["user_id"].to_numpy(), users_used))

    matched = int(np.isin(items["item_id"], item_features["item_id"]).sum()) if item_features is not None else 0
    item_rows = pd.concat([beh["item_id"], smp["item_id"]])
    row_match = float(item_rows.isin(item_features["item_id"]).mean()) if item_features is not None else 0.0
    manifest: dict[str, Any] = {
        "name": name, "source": source, "n_shards": n_shards,
        "counts": {"behaviours": len(beh), "samples": len(smp), "items": len(items),
                   "users": len(users_used),
                   "quarantined": len(quarantine) + sum(len(q) for q in side_quarantine or [])},
        "eval_days": [asdict(d) for d in days],
        "cross_features": cross_features, "sample_features": sample_features,
        "user_features": [c for c in users.columns if c != "user_id"] if users is not None else [],
        "split": {"rule": rule.text(), **{k: v for k, v in asdict(rule).items()
                                          if k != "last_days" or rule.kind == "last_days"}},
        "inputs": inputs,
        "item_features_match": {"items": len(items), "matched": matched,
                                "item_match_rate": matched / max(len(items), 1), "row_match_rate": row_match},
        **(extra_manifest or {}),
    }
    if users is not None:
        has = users.drop(columns="user_id").notna().any(axis=1)
        manifest["user_features_match"] = {"users": len(users), "matched": int(has.sum()),
                                           "user_match_rate": float(has.mean()) if len(users) else 0.0}

    # Into a temporary sibling, renamed into place once complete: a kill leaves no dataset or a whole one.
    with staged_dir(Path(out), overwrite) as root:
        for table, spec, frame, extras in ((BEHAVIOURS.name, BEHAVIOURS, beh, cross_features),
                                           (SAMPLES.name, SAMPLES, smp, sample_features)):
            w = ShardedWriter(root, spec, n_shards, extras={c: "float32" for c in extras})
            w.append_frame(frame)
            w.close()
        write_table(root / "items.parquet", items)
        if users is not None:
            write_table(root / "users.parquet", users)
        allq = pd.concat([quarantine, *(side_quarantine or [])], ignore_index=True)
        if len(allq) == 0:
            allq = pd.DataFrame(columns=["source", "row", "reason"])
        allq.to_csv(root / "quarantine.csv", index=False)
        write_manifest(root, manifest)
    return Path(out)
