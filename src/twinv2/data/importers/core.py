"""Shared import machinery: validate a log, split it into history and samples, derive items/users, write.

Every importer (KuaiRand layouts, generic YAML mapping) turns its input into `LogPart`s whose columns already
carry the stored names (`user_id, item_id, ts` in epoch ms, `play_ms, duration_ms, label` + feature columns)
and hands them to `build_dataset` with a `SplitRule` and the validation `Checks`. From there the path is the
same for all:

1. Validation (`validation.read_log`), chunk by chunk (a part may stream its file): every cell is typed (ids
   exactly, as int64), labels must be 0/1, times must lie in `Checks.time_range`; each bad row goes to `quarantine.csv`
   (written as it is found, raw values cut to `schema.MAX_RAW_CHARS`) with its file, 0-based data row and
   reason. Then duplicates of (user_id, item_id, ts) over all files (the first is kept). A column with no
   usable value, a label column that is not 0/1, or a file more than `Checks.max_quarantine_share`
   quarantined stops the import with a DataError naming the file and the column.
2. Split (`SplitRule`): the log's last day is the last day holding a real share of rows (at least
   `min_day_share` of the median rows per active day); rows more than `outlier_gap_days` after it are
   quarantined as outliers. Each valid row becomes a sample, a behaviour (history), both, or is *unused*
   (e.g. an unclicked impression before the sample days). Per input file the manifest records
   `rows_in = rows_stored + rows_quarantined + rows_unused`, with `rows_stored = rows_as_sample_only +
   rows_as_behaviour_only + rows_as_both`. A sample's history is every behaviour of its user with a strictly
   smaller `ts` (readers enforce it), so a clicked sample row that is also a behaviour never sees itself.
   A thin evaluation window (a day with few samples, a test hour without both labels) is a warning on stderr
   and in the manifest (`warnings`, `eval_window`).
3. Items: one row per item referenced by a stored behaviour or sample. Matched against an item-features file
   when there is one; an item without features gets `author_id = -1`, `tag = -1` and, as duration, the median
   of the positive `duration_ms` observed for it in the valid log rows (0 when none was observed). The manifest
   reports the match rate.
4. Users: one row per user with a stored behaviour or sample, features joined where the ids match (NaN where
   not); written only when user features exist.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from twinv2.data.dirs import failpoint, staged_dir
from twinv2.data.importers.validation import (CORE, FILE_COL, ROW_COL, Checks, LogPart, QuarantineWriter,
                                              reason_kind, iso_ms, read_log, write_typed_quarantine)
from twinv2.data.storage import DAY_MS, EvalDay, ShardedWriter, write_manifest, write_table
from twinv2.schema import BEHAVIOURS, ITEMS, SAMPLES, UNKNOWN_ID, DataError

_HISTORY_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*==\s*(-?\d+)\s*$")
MAX_LAST_DAYS = 366  # evaluation days: one streaming train/test step each; a year is already far beyond the protocol
MAX_SHARDS = 4096


# ---- split ------------------------------------------------------------------------------------------
def day_label(local_day: int) -> str:
    """The calendar date (YYYY-MM-DD) of a day number counted in the data's own clock."""
    return time.strftime("%Y-%m-%d", time.gmtime(local_day * 86_400))


@dataclass(frozen=True)
class SplitRule:
    """How valid log rows become samples and behaviours.

    kind "last_days": every row whose local day (day boundaries at UTC + `day_offset_hours`) is among the last
    `last_days` (1..366) consecutive days ending with the log's last day is a sample; eval days are those days
    (fewer when the log spans fewer days: no evaluation day precedes the log).
    The log's last day is the last day holding at least `min_day_share` of the median rows per active day
    (so a trailing near-empty day, e.g. a log cut at 00:30, does not become an evaluation day: its rows stay
    history or unused); rows more than `outlier_gap_days` days after it (one stray row dated 2099) are
    quarantined as outliers, so they cannot move the window.
    kind "last_half_per_user": each user's last max(1, n_u // 2) rows in time order are samples; eval days
    are the local days the samples span.
    Behaviours (either kind): rows with `history` true at any time: "all", or "<column> == <integer>".
    `test_hours` (1..24): each evaluation day tests its last `test_hours` hours and trains on the hours before
    (1 = hour 23, the paper's protocol). For a sparse log whose hour 23 holds a few dozen samples, e.g. 12
    tests the second half of each day (about 12 times the samples); 24 tests whole days (the model
    then trains on none of the evaluation days' samples, only on the history before them).
    """

    kind: str = "last_days"
    last_days: int = 5
    day_offset_hours: float = 0.0
    history: str = "label == 1"
    min_day_share: float = 0.1
    outlier_gap_days: int = 7
    test_hours: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("last_days", "last_half_per_user"):
            raise ValueError(f"split kind {self.kind!r} is not one of last_days, last_half_per_user")
        if self.kind == "last_days" and (isinstance(self.last_days, bool) or not isinstance(self.last_days, int)
                                         or not 1 <= self.last_days <= MAX_LAST_DAYS):
            raise ValueError(f"split.last_days must be an integer in 1..{MAX_LAST_DAYS} (evaluation days, one "
                             f"streaming train/test step each), got {self.last_days!r}")
        if not isinstance(self.day_offset_hours, (int, float)) or not -24 < self.day_offset_hours < 24:
            raise ValueError(f"split.day_offset_hours must be a number in (-24, 24), got {self.day_offset_hours!r}")
        if isinstance(self.min_day_share, bool) or not isinstance(self.min_day_share, (int, float)) \
                or not 0 <= self.min_day_share <= 1:
            raise ValueError(f"split.min_day_share must be a number in [0, 1], got {self.min_day_share!r}")
        if isinstance(self.outlier_gap_days, bool) or not isinstance(self.outlier_gap_days, int) \
                or self.outlier_gap_days < 1:
            raise ValueError(f"split.outlier_gap_days must be an integer >= 1, got {self.outlier_gap_days!r}")
        if isinstance(self.test_hours, bool) or not isinstance(self.test_hours, int) or not 1 <= self.test_hours <= 24:
            raise ValueError(f"split.test_hours must be an integer in 1..24 (the last hours of each evaluation "
                             f"day that are tested), got {self.test_hours!r}")
        self.history_column()

    def history_column(self) -> tuple[str, int] | None:
        """(column, value) of the history filter, None for "all"."""
        if not isinstance(self.history, str):
            raise ValueError(f"split.history must be a string like 'label == 1', got {self.history!r}")
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

    def local_day(self, ts: np.ndarray) -> np.ndarray:
        return (np.asarray(ts, dtype=np.int64) + self.offset_ms) // DAY_MS

    def text(self) -> str:
        tz = f"UTC{self.day_offset_hours:+g}"
        if self.kind == "last_days":
            s = (f"samples: every valid row in the last {self.last_days} day(s) of the log (day boundaries at "
                 f"midnight {tz}; the last day is the last one with at least {self.min_day_share:g} of the median "
                 f"rows per day; rows more than {self.outlier_gap_days} days after it are quarantined as "
                 f"outliers), whatever its label")
        else:
            s = "samples: each user's last max(1, n_u // 2) valid rows in time order"
        h = self.history_column()
        b = "every valid row at any time" if h is None else f"every valid row with {h[0]} == {h[1]}, at any time"
        test = "hour 23" if self.test_hours == 1 else f"its last {self.test_hours} hours"
        return (f"{s}; each evaluation day tests {test} and trains on the hours before; behaviours (history): "
                f"{b}; a sample sees only its user's behaviours with ts strictly before its own; other valid rows "
                f"are counted as unused")

    def last_day(self, ts: np.ndarray) -> tuple[int, float, np.ndarray]:
        """(the log's last day, median rows per active day, mask of outlier rows) for kind last_days (see the
        class docstring); for the other kind the last day is simply the latest and nothing is an outlier."""
        day = self.local_day(ts)
        days, counts = np.unique(day, return_counts=True)
        med = float(np.median(counts))
        if self.kind != "last_days":
            return int(days[-1]), med, np.zeros(len(day), dtype=bool)
        real = np.flatnonzero(counts >= self.min_day_share * med)  # never empty: the busiest day qualifies
        end = int(days[real[-1]])
        return end, med, day > end + self.outlier_gap_days

    def assign(self, clean: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[EvalDay]]:
        """(is_sample, is_behaviour, eval days) for `clean` sorted by (user_id, ts)."""
        ts = clean["ts"].to_numpy()
        local_day = self.local_day(ts)
        if self.kind == "last_days":
            end = self.last_day(ts)[0]
            first = max(end - self.last_days + 1, int(local_day.min()))  # no evaluation day before the log
            is_sample = (local_day >= first) & (local_day <= end)
            days = range(first, end + 1)
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
                                 f"{list(clean.columns.drop([FILE_COL, ROW_COL], errors='ignore'))}")
            is_beh = (clean[h[0]].to_numpy() == h[1])
        evals = [EvalDay(index=i, label=day_label(d), start_ms=d * DAY_MS - self.offset_ms,
                         test_hours=self.test_hours) for i, d in enumerate(days)]
        return is_sample, is_beh, evals


def eval_window(smp: pd.DataFrame, days: list[EvalDay], median_rows: float, min_share: float) -> dict[str, Any]:
    """Samples per evaluation day, in its test hours (23:00-24:00 by default) and positives there, a warning for each
    thin day: fewer samples than `min_share` of the median rows per log day, a test hour without samples, or
    one whose samples all share one label (AUC undefined)."""
    ts, label = smp["ts"].to_numpy(), smp["label"].to_numpy()
    order = np.argsort(ts, kind="stable")
    ts, label = ts[order], label[order]
    per_day, warnings = [], []
    for d in days:
        a, t, b = np.searchsorted(ts, [d.start_ms, d.test_start_ms, d.end_ms])
        n, nt, pos = int(b - a), int(b - t), int(label[t:b].sum())
        per_day.append({"label": d.label, "samples": n, "test_samples": nt, "test_positives": pos})
        if n < min_share * median_rows:
            warnings.append(f"evaluation day {d.label} holds {n} sample(s), under {min_share:g} of the log's median "
                            f"{median_rows:g} rows per day")
        if nt == 0:
            hours = f"{24 - d.test_hours:02d}:00-24:00"
            warnings.append(f"evaluation day {d.label}: its test hour{'s' if d.test_hours > 1 else ''} ({hours}) "
                            f"holds no sample: nothing to test")
        elif pos in (0, nt):
            warnings.append(f"evaluation day {d.label}: all {nt} test-hour sample(s) have label {int(pos > 0)}: "
                            f"AUC undefined")
    return {"median_rows_per_day": median_rows, "days": per_day, "thin": bool(warnings), "warnings": warnings}


def import_summary(manifest: dict[str, Any], min_test_samples: int = 0) -> tuple[list[str], list[str]]:
    """What an import did, from its manifest: (lines for stdout, warnings). Per input file rows in = stored +
    quarantined + unused (and how the stored rows split), the dataset's counts, and per evaluation day its
    samples and test-hour (23:00-24:00) samples and positives; a warning when a test hour holds fewer than
    `min_test_samples` samples (the trainer's usable-day threshold, passed in by the caller: the data layer does
    not import train)."""
    def n(x: Any) -> str:
        return f"{int(x):,}"

    lines = []
    for f in manifest.get("inputs", []):
        split = (f" ({n(f['rows_as_both'])} as sample and behaviour, {n(f['rows_as_sample_only'])} sample only, "
                 f"{n(f['rows_as_behaviour_only'])} behaviour only)" if "rows_as_both" in f else "")
        lines.append(f"{Path(f['file']).name} ({f['role']}): {n(f['rows_in'])} rows in = {n(f['rows_stored'])} "
                     f"stored{split} + {n(f['rows_quarantined'])} quarantined + {n(f['rows_unused'])} unused")
    c = manifest["counts"]
    lines.append(f"dataset: {n(c['users'])} users, {n(c['items'])} items, {n(c['behaviours'])} behaviours, "
                 f"{n(c['samples'])} samples, {n(c['quarantined'])} rows quarantined (quarantine.csv)")
    days = (manifest.get("eval_window") or {}).get("days") or []
    warnings = []
    if days:
        lines.append(f"evaluation window: {len(days)} day(s), {days[0]['label']} .. {days[-1]['label']}; per day "
                     f"samples / test-hour (23:00-24:00) samples / test-hour positives:")
        lines += [f"  {d['label']}: {n(d['samples'])} / {n(d['test_samples'])} / {n(d['test_positives'])}"
                  for d in days]
        small = [d for d in days if d["test_samples"] < min_test_samples]
        if small:
            listed = ", ".join(f"{d['label']}: {d['test_samples']}" for d in small[:8])
            listed += f", and {len(small) - 8} more" if len(small) > 8 else ""
            hold = "holds" if len(small) == 1 else "hold"
            warnings.append(f"{len(small)} of {len(days)} test hours {hold} fewer than {min_test_samples} samples "
                            f"({listed}): their day AUCs are unreliable and count as unusable days; read the "
                            f"pooled AUC (over "
                            f"{sum(d['test_samples'] for d in days):,} test samples in all), or import more days "
                            f"(split.last_days)")
    return lines, warnings


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
def _stage(stack: ExitStack, out: Path, overwrite: bool) -> Path:
    """The staging folder for `out` (dirs.staged_dir); an OS refusal to create it is a DataError naming `out`."""
    try:
        return stack.enter_context(staged_dir(out, overwrite))
    except FileExistsError as e:
        if e.errno is None:  # staged_dir's own refusal: it names `out` and says what to do
            raise
        raise DataError(f"{out}: cannot create the dataset there: {e.filename} is a file, not a folder") from None
    except OSError as e:
        raise DataError(f"{out}: cannot create the dataset there ({e.strerror or e}"
                        f"{f': {e.filename}' if e.filename else ''})") from None


def _warn(text: str) -> None:
    print(f"twinv2: warning: {text}", file=sys.stderr)


def build_dataset(out: str | Path, *, name: str, source: str, parts: list[LogPart], rule: SplitRule,
                  cross_features: list[str], sample_features: list[str], n_shards: int, overwrite: bool,
                  item_features: pd.DataFrame | None = None, user_features: pd.DataFrame | None = None,
                  side_quarantine: list[pd.DataFrame] | None = None, side_inputs: list[dict] | None = None,
                  log_features: list[str] | None = None, users_from_log: list[str] | None = None,
                  extra_manifest: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
                  checks: Checks | None = None) -> Path:
    """Validate, split and write a dataset directory; returns its path. Everything is written into a hidden
    staging folder beside `out` that becomes `out` only once complete, so a DataError (raised while reading,
    before anything of `out` is touched) leaves an existing `out` as it was.

    `log_features` are further numeric log columns needed by the rule (history filter). `users_from_log` are
    user features read from the log itself: per user, the values on the user's latest valid row.
    `extra_manifest` (or a function returning it, called once the log was read) adds manifest fields.
    """
    if isinstance(n_shards, bool) or not isinstance(n_shards, int) or not 1 <= n_shards <= MAX_SHARDS:
        raise ValueError(f"n_shards must be an integer in 1..{MAX_SHARDS}, got {n_shards!r}")
    checks = checks or Checks()
    from_log = list(users_from_log or [])
    if from_log and user_features is not None:
        raise ValueError("user features come either from the log or from a users file, not both")
    feats = list(dict.fromkeys(cross_features + sample_features + list(log_features or []) + from_log))
    side_q = [q for q in side_quarantine or [] if len(q)]
    side_cols = [c for q in side_q for c in q.columns]
    warnings: list[str] = []
    with ExitStack() as stack:
        root = _stage(stack, Path(out), overwrite)
        qw = QuarantineWriter(root / "quarantine.csv", CORE + feats + side_cols)
        stack.callback(qw.close)
        log = read_log(parts, feats, checks, qw)
        failpoint("import-read")
        clean = log.clean
        end, median_rows, outlier = rule.last_day(clean["ts"].to_numpy())
        if outlier.any():
            oi = np.flatnonzero(outlier)
            day = rule.local_day(clean["ts"].to_numpy()[oi])
            reasons = np.array([f"outlier ts ({iso_ms(t)}): {int(d - end)} days after {day_label(end)}, the log's "
                                f"last day with a real share of rows" for t, d in zip(clean["ts"].to_numpy()[oi], day)],
                               dtype=object)
            write_typed_quarantine(qw, clean.iloc[oi], reasons, parts)
            for f_idx, r in zip(clean[FILE_COL].to_numpy()[oi], reasons):
                log.files[f_idx].add([r])
            warnings.append(f"{len(oi)} outlier row(s) quarantined: dated more than {rule.outlier_gap_days} days "
                            f"after {day_label(end)}, the log's last day with a real share of rows "
                            f"(latest: {iso_ms(clean['ts'].to_numpy()[oi].max())})")
            clean = clean.drop(index=oi).reset_index(drop=True)
        shares = [(f.source, f.rows_in, f.quarantined, f.summary()) for f in log.files]
        shares += [(e["file"], e["rows_in"], e["rows_quarantined"],
                    ", ".join(f"{k} ({n})" for k, n in Counter(map(reason_kind, q["reason"])).most_common(3)))
                   for e, q in zip(side_inputs or [], side_quarantine or [])]
        for src, n_in, n_q, summary in shares:
            if n_in and n_q > checks.max_quarantine_share * n_in:
                raise DataError(f"{src}: {n_q} of {n_in} rows ({n_q / n_in:.0%}) would be quarantined, more than "
                                f"max_quarantine_share = {checks.max_quarantine_share:g}; most common: {summary}. "
                                f"Is it the right file and mapping? (set `max_quarantine_share` in the mapping to "
                                f"import it anyway)")
        if from_log:  # clean is sorted by (user_id, ts): the last row per user is the latest
            user_features = clean.groupby("user_id", sort=True).tail(1)[["user_id", *from_log]].reset_index(drop=True)
        is_sample, is_beh, days = rule.assign(clean)
        fidx = clean[FILE_COL].to_numpy().astype(np.int64)
        used = is_sample | is_beh

        beh = clean.loc[is_beh, BEHAVIOURS.names + cross_features]
        smp = clean.loc[is_sample, SAMPLES.names + sample_features]
        after = int((rule.local_day(clean["ts"].to_numpy()) > rule.local_day(np.array([days[-1].start_ms]))[0]).sum())
        window = eval_window(smp, days, median_rows, rule.min_day_share)
        if after:
            window["rows_after_window"] = after
            warnings.append(f"{after} row(s) on near-empty days after {days[-1].label} (each under "
                            f"{rule.min_day_share:g} of the median rows per day) are not samples: history or unused")
        if rule.kind == "last_days" and len(days) < rule.last_days:
            warnings.append(f"split.last_days is {rule.last_days} but the log's days run only from {days[0].label} "
                            f"to {days[-1].label}: {len(days)} evaluation day(s)")
        warnings += window["warnings"]
        users_used = np.union1d(beh["user_id"].unique(), smp["user_id"].unique())
        items_used = np.union1d(beh["item_id"].unique(), smp["item_id"].unique())
        items = derive_items(clean, items_used, item_features)
        users = join_users(users_used, user_features) if user_features is not None else None

        inputs = []
        for i, f in enumerate(log.files):
            mine = fidx == i
            row = {"file": f.source, "role": "log", "rows_in": f.rows_in, "rows_stored": int((mine & used).sum()),
                   "rows_quarantined": f.quarantined, "rows_unused": int((mine & ~used).sum()),
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
        extra = extra_manifest() if callable(extra_manifest) else dict(extra_manifest or {})
        manifest: dict[str, Any] = {
            "name": name, "source": source, "n_shards": n_shards,
            "counts": {"behaviours": len(beh), "samples": len(smp), "items": len(items),
                       "users": len(users_used),
                       "quarantined": sum(f.quarantined for f in log.files) + sum(len(q) for q in side_q)},
            "eval_days": [asdict(d) for d in days],
            "eval_window": window,
            "warnings": warnings,
            "validation": {"time_range": list(checks.time_range), "max_quarantine_share": checks.max_quarantine_share},
            "cross_features": cross_features, "sample_features": sample_features,
            "user_features": [c for c in users.columns if c != "user_id"] if users is not None else [],
            "split": {"rule": rule.text(), **{k: v for k, v in asdict(rule).items()
                                              if k != "last_days" or rule.kind == "last_days"}},
            "inputs": inputs,
            "item_features_match": {"items": len(items), "matched": matched,
                                    "item_match_rate": matched / max(len(items), 1), "row_match_rate": row_match},
            **extra,
        }
        if users is not None:
            has = users.drop(columns="user_id").notna().any(axis=1)
            manifest["user_features_match"] = {"users": len(users), "matched": int(has.sum()),
                                               "user_match_rate": float(has.mean()) if len(users) else 0.0}

        for table, spec, frame, extras in ((BEHAVIOURS.name, BEHAVIOURS, beh, cross_features),
                                           (SAMPLES.name, SAMPLES, smp, sample_features)):
            w = ShardedWriter(root, spec, n_shards, extras={c: "float32" for c in extras})
            w.append_frame(frame)
            w.close()
        failpoint("import-shards")
        write_table(root / "items.parquet", items)
        if users is not None:
            write_table(root / "users.parquet", users)
        for q in side_q:
            qw.write(q)
        qw.close()
        failpoint("import-manifest")
        write_manifest(root, manifest)
    for w in warnings:
        _warn(f"{out}: {w}")
    return Path(out)
