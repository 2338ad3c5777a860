"""KuaiRand logs (Gao et al., CIKM 2022; CC BY-SA 4.0) -> a twinv2 dataset.

Files expected in `src_dir`:

- `kuairand27k_likehate_k15.tsv` (layout "27k"): a TAB-separated subset of KuaiRand-27K's standard log, one
  row per impression: user_id, video_id, date, hourmin, time_ms, is_click, is_follow, is_comment, is_forward,
  long_view, play_time_ms, duration_ms, comment_stay_time, is_profile_enter, label, timestamp.
- `kuairand1k_random_sample.csv` (layout "1k"): a sample of KuaiRand-1K's random-exposure log, with NO time
  column: user_id, video_id, is_click, play_time_ms, duration_ms, profile_stay_time, comment_stay_time, tab,
  then user and video features (ignored here: the feature files below carry the same values).
- `video_features_basic_pure.csv`: video_id, author_id, video_duration (ms), tag ("39" or "39,68": the first
  tag is kept). Only ~1% of the 27K subset's video ids (~3% of its rows) are in it; an item without features
  gets author_id -1, tag -1 and the median positive duration_ms observed for it in the log. The manifest's
  `item_features_match` reports the rates.
- `user_features_pure.csv`: user_id and numeric user features; `user_active_degree` (text) is stored as the
  integer code in `ACTIVITY_CODES` (the codes of the four degrees that also occur in the 1K file agree with
  that file's own codes) and the `*_range` text columns are dropped (they bucket the numeric counts kept).

Rules, 27K layout (times are `time_ms`, epoch ms; days are Beijing days, midnight UTC+8):
- samples: every valid impression in the last 5 Beijing days of the log (2022-04-17..21 for this file),
  label = is_click. The day is taken from `time_ms`, not from the `date` column: KuaiRand rounds
  date/hourmin to the nearest hour, so an impression at 23:30-23:59 carries the next day's date (the manifest
  counts these rows as `date_disagrees_with_time_ms`).
- behaviours (history): every valid row with is_click = 1, at any time (sample days included); a sample sees
  only behaviours with ts strictly before its own (readers enforce it).
- unused: valid unclicked rows before the sample days. Quarantined: invalid rows (e.g. the log's repeated
  (user_id, video_id, time_ms) rows: the first is kept, the repeats are quarantined as duplicates).
- cross features on behaviours: is_follow, is_comment, is_forward, long_view, is_profile_enter,
  comment_stay_time (they are outcomes of the impression, so samples do not carry them). The file's own
  `label` column (undocumented like/hate label of this subset) and `timestamp` (= time_ms as text) are not
  imported; eval days: the 5 sample days, each starting at Beijing midnight.

Rules, 1K layout (no time column):
- synthetic time: row i of n (file order) gets ts = 2022-04-22 00:00 Beijing + floor(i * 24h / n), i.e. the
  rows are spread evenly over one nominal day in file order (so the hour-23 test slice holds the last ~1/24
  of the file). A repeated (user_id, video_id) gets the time of its first occurrence and is therefore
  quarantined as a duplicate (without times a repeat cannot be told from a second impression).
- samples: each user's last max(1, n_u // 2) rows in file order, label = is_click; behaviours: every valid
  row with is_click = 1; unused: earlier unclicked rows. Eval days: the one nominal day.
- cross features on behaviours: tab, profile_stay_time, comment_stay_time; on samples: tab (the page the
  request comes from is known at request time).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from twinv2.data.importers.core import SplitRule, build_dataset
from twinv2.data.importers.validation import Checks, LogPart, require_numeric
from twinv2.data.importers.reading import read_items, read_table, read_users
from twinv2.data.storage import DAY_MS

LOG_27K = "kuairand27k_likehate_k15.tsv"
LOG_1K = "kuairand1k_random_sample.csv"
VIDEO_FEATURES = "video_features_basic_pure.csv"
USER_FEATURES = "user_features_pure.csv"
BEIJING_HOURS = 8.0
DAY0_1K_MS = 1_650_556_800_000  # 2022-04-22 00:00 Beijing (UTC+8) = 2022-04-21 16:00 UTC

ACTIVITY_CODES = {"high_active": 0, "full_active": 1, "middle_active": 2, "low_active": 3, "2_14_day_new": 4,
                  "single_low_active": 5, "30day_retention": 6, "day_new": 7, "UNKNOWN": -1}
USER_COLUMNS = (["user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
                 "follow_user_num", "fans_user_num", "friend_user_num", "register_days"]
                + [f"onehot_feat{i}" for i in range(18)])
CROSS_27K = ["is_follow", "is_comment", "is_forward", "long_view", "is_profile_enter", "comment_stay_time"]
CROSS_1K = ["tab", "profile_stay_time", "comment_stay_time"]
SAMPLE_1K = ["tab"]
LAYOUTS = ("27k", "1k")
IDS = ["user_id", "video_id"]  # read as text: parsed exactly as int64 by validation


def _log_frame(raw: pd.DataFrame, ts: pd.Series | np.ndarray, extras: list[str]) -> pd.DataFrame:
    df = pd.DataFrame({"user_id": raw["user_id"], "item_id": raw["video_id"], "ts": ts, "label": raw["is_click"],
                       "play_ms": raw["play_time_ms"], "duration_ms": raw["duration_ms"]})
    for e in extras:
        df[e] = raw[e]
    return df


def read_27k(path: Path) -> tuple[LogPart, dict[str, int]]:
    """The 27K subset as a LogPart, plus notes for the manifest."""
    need = ["user_id", "video_id", "date", "time_ms", "is_click", "play_time_ms", "duration_ms", *CROSS_27K]
    raw = read_table(path, need, sep="\t", text_columns=IDS)
    require_numeric(raw, need, str(path))
    t = pd.to_numeric(raw["time_ms"], errors="coerce")
    bj_date = pd.to_datetime(t + BEIJING_HOURS * 3_600_000, unit="ms", errors="coerce").dt.strftime("%Y%m%d")
    disagree = int((t.notna() & (bj_date != raw["date"].astype(str))).sum())
    return LogPart(str(path), _log_frame(raw, raw["time_ms"], CROSS_27K)), {"date_disagrees_with_time_ms": disagree}


def read_1k(path: Path) -> LogPart:
    """The 1K random sample as a LogPart with synthetic times (see the module docstring)."""
    need = ["user_id", "video_id", "is_click", "play_time_ms", "duration_ms", *CROSS_1K]
    raw = read_table(path, need, text_columns=IDS)
    require_numeric(raw, need, str(path))
    n = len(raw)
    if n > DAY_MS:
        raise ValueError(f"{path}: {n} rows cannot get distinct synthetic ms times within one day")
    ts = pd.Series(DAY0_1K_MS + (np.arange(n, dtype=np.int64) * DAY_MS) // n, index=raw.index)
    key = raw["user_id"].astype(str) + "/" + raw["video_id"].astype(str)
    ts = ts.groupby(key, sort=False).transform("first")
    return LogPart(str(path), _log_frame(raw, ts, CROSS_1K))


def import_kuairand(src_dir: str | Path, out: str | Path, layout: str = "27k", n_shards: int = 4,
                    overwrite: bool = False, max_quarantine_share: float = 0.5) -> Path:
    """Import a KuaiRand log (`layout` "27k" or "1k", see the module docstring) from `src_dir` into a dataset
    directory at `out`, joined with the video and user feature files there; returns the dataset path. A file
    with more than `max_quarantine_share` of its rows quarantined stops the import (core.Checks)."""
    if layout not in LAYOUTS:
        raise ValueError(f"KuaiRand layout {layout!r} is not one of {LAYOUTS}")
    src = Path(src_dir)
    notes: dict[str, int] = {}
    if layout == "27k":
        part, notes = read_27k(src / LOG_27K)
        rule = SplitRule(kind="last_days", last_days=5, day_offset_hours=BEIJING_HOURS, history="label == 1")
        cross, sample_feats = CROSS_27K, []
    else:
        part = read_1k(src / LOG_1K)
        rule = SplitRule(kind="last_half_per_user", day_offset_hours=BEIJING_HOURS, history="label == 1")
        cross, sample_feats = CROSS_1K, SAMPLE_1K
    vpath, upath = src / VIDEO_FEATURES, src / USER_FEATURES
    items, iq, n_items = read_items(vpath, "video_id", "author_id", "tag", "video_duration")
    users, uq, n_users = read_users(upath, "user_id", USER_COLUMNS, codes={"user_active_degree": ACTIVITY_CODES})
    side = [{"file": str(vpath), "role": "items", "rows_in": n_items, "rows_quarantined": len(iq)},
            {"file": str(upath), "role": "users", "rows_in": n_users, "rows_quarantined": len(uq)}]
    extra = {"layout": f"kuairand-{layout}", "codes": {"user_active_degree": ACTIVITY_CODES},
             "activity_column": "user_active_degree", "notes": notes,
             "time": ("time_ms (epoch ms); days are Beijing days (UTC+8)" if layout == "27k" else
                      "synthetic: file order spread evenly over 2022-04-22 (Beijing); "
                      "see twinv2.data.importers.kuairand")}
    return build_dataset(out, name=f"kuairand-{layout}", source=f"KuaiRand {layout} layout from {src}",
                         parts=[part], rule=rule, cross_features=cross, sample_features=sample_feats,
                         n_shards=n_shards, overwrite=overwrite, item_features=items, user_features=users,
                         side_quarantine=[iq, uq], side_inputs=side, extra_manifest=extra,
                         checks=Checks(max_quarantine_share=max_quarantine_share, shown={"label": "is_click"}))
