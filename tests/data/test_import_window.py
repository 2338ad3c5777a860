"""The evaluation window and the time range (issue 14, item 7; issue 13, item 2): one outlier row cannot move
the window, a near-empty last day is not an evaluation day, a thin window is a warning (stderr + manifest),
last_days is bounded; times of any year in s/ms/us/ISO, with the 2000..2100 check a sanity range the mapping
can widen (`columns.time_range`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from twinv2.data.importers import import_mapped
from twinv2.data.storage import DAY_MS, HOUR_MS, Dataset
from twinv2.schema import DataError

T0 = 1_649_548_800_000  # 2022-04-10 00:00 UTC
COLUMNS = {"user": "uid", "item": "photo", "time": "t", "label": "clicked"}


def log(n_days: int = 8, per_day: int = 60, start: int = T0, seed: int = 0) -> pd.DataFrame:
    """`per_day` rows on each of `n_days` days, spread over every hour (so each test hour holds both labels)."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_days):
        for i in range(per_day):
            rows.append((i % 9 + 1, d * per_day + i, start + d * DAY_MS + (i * 24 * HOUR_MS) // per_day, i % 2))
    df = pd.DataFrame(rows, columns=["uid", "photo", "t", "clicked"])
    return df.iloc[rng.permutation(len(df))]


def run(tmp_path, df: pd.DataFrame, split: dict | None = None, columns: dict | None = None, name="log.csv"):
    df.to_csv(tmp_path / name, index=False)
    body = {"inputs": [name], "columns": {**COLUMNS, **(columns or {})}, "split": {"last_days": 3, **(split or {})}}
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(body))
    return Dataset(import_mapped(tmp_path / "map.yaml", tmp_path / "out"))


def labels(ds: Dataset) -> list[str]:
    return [d.label for d in ds.eval_days]


def test_one_row_dated_2099_does_not_move_the_window_and_is_quarantined(tmp_path, capsys):
    df = log()
    outlier = pd.DataFrame([(1, 99_999, 4_102_358_400_000, 1)], columns=df.columns)  # 2099-12-31
    ds = run(tmp_path, pd.concat([df, outlier]))
    assert labels(ds) == ["2022-04-15", "2022-04-16", "2022-04-17"]  # before the fix: ["2099-12-29", .., "2099-12-31"]
    assert len(ds.samples()) == 3 * 60
    q = pd.read_csv(ds.root / "quarantine.csv")
    assert q["row"].tolist() == [len(df)]
    assert q["reason"].iloc[0].startswith("outlier ts (2099-12-31T00:00:00Z): 28382 days after 2022-04-17")
    log_in = ds.manifest["inputs"][0]
    assert log_in["rows_quarantined"] == 1 and log_in["rows_in"] == len(df) + 1
    assert any("1 outlier row(s) quarantined" in w for w in ds.manifest["warnings"])
    assert "1 outlier row(s) quarantined" in capsys.readouterr().err


def test_a_near_empty_last_day_is_not_an_evaluation_day(tmp_path, capsys):
    df = log()  # 04-10 .. 04-17, 60 rows a day
    cut = pd.DataFrame([(2, 90_000 + i, T0 + 8 * DAY_MS + i * 60_000, 1) for i in range(3)], columns=df.columns)
    ds = run(tmp_path, pd.concat([df, cut]))  # the log "ends" at 00:02 on 04-18: 3 rows there
    assert labels(ds) == ["2022-04-15", "2022-04-16", "2022-04-17"]
    assert ds.manifest["eval_window"]["rows_after_window"] == 3
    assert ds.manifest["inputs"][0]["rows_quarantined"] == 0  # close after the log: history or unused, kept
    assert "near-empty days after 2022-04-17" in capsys.readouterr().err


def test_a_thin_window_is_warned_on_stderr_and_in_the_manifest(tmp_path, capsys):
    df = log()
    df = df[~((df["t"] >= T0 + 7 * DAY_MS + 23 * HOUR_MS))]  # the last day's test hour is empty
    ds = run(tmp_path, df)
    w = ds.manifest["eval_window"]
    assert w["thin"] and [d["test_samples"] for d in w["days"]][-1] == 0
    assert w["days"][0] == {"label": "2022-04-15", "samples": 60, "test_samples": 2, "test_positives": 1}
    msg = "evaluation day 2022-04-17: its test hour (23:00-24:00) holds no sample"
    assert any(msg in x for x in ds.manifest["warnings"]) and msg in capsys.readouterr().err
    (tmp_path / "ok").mkdir()
    healthy = run(tmp_path / "ok", log())
    assert not healthy.manifest["eval_window"]["thin"] and healthy.manifest["warnings"] == []


def test_a_sparse_log_can_test_more_hours_of_each_day(tmp_path):
    """split.test_hours: each evaluation day tests its last N hours and trains on the hours before; the trainer,
    the stats and the export all follow the day's own window."""
    from twinv2.data.stats import compute_stats

    for sub in "abc":
        (tmp_path / sub).mkdir()
    one = run(tmp_path / "a", log())
    twelve = run(tmp_path / "b", log(), split={"test_hours": 12})
    assert [d["test_samples"] for d in one.manifest["eval_window"]["days"]] == [2, 2, 2]
    assert [d["test_samples"] for d in twelve.manifest["eval_window"]["days"]] == [30, 30, 30]
    day = twelve.eval_days[0]
    assert day.test_hours == 12 and day.test_start_ms == day.start_ms + 12 * HOUR_MS
    ts = twelve.samples()["ts"].to_numpy()
    assert int(day.test_mask(ts).sum()) == 30 and int(day.train_mask(ts).sum()) == 30
    assert not (day.train_mask(ts) & day.test_mask(ts)).any()  # every training sample precedes every test one
    assert [r["test_hour_samples"] for r in compute_stats(twelve)["samples_per_day"]] == [30, 30, 30]
    assert "tests its last 12 hours" in twelve.manifest["split"]["rule"]
    with pytest.raises(ValueError, match=r"split\.test_hours must be an integer in 1\.\.24.*got 25"):
        run(tmp_path / "c", log(), split={"test_hours": 25})


def test_last_days_is_bounded_and_clamped_to_the_log(tmp_path):
    with pytest.raises(ValueError, match=r"split\.last_days must be an integer in 1\.\.366 .*got 3000000"):
        run(tmp_path, log(), {"last_days": 3_000_000})
    ds = run(tmp_path, log(n_days=2), {"last_days": 30})
    assert labels(ds) == ["2022-04-10", "2022-04-11"]  # no evaluation day before the log begins
    assert (ds.root / "manifest.json").stat().st_size < 100_000
    assert any("split.last_days is 30 but the log's days run only from 2022-04-10 to 2022-04-11" in w
               for w in ds.manifest["warnings"])


T1997 = 852_076_800_000  # 1997-01-01 00:00 UTC


def test_a_1997_log_needs_the_time_range_and_the_message_says_so(tmp_path):
    df = log(start=T1997)
    df["t"] //= 1000  # seconds
    with pytest.raises(DataError, match=r"no time lies in 2000\.\.2100 when read with unit 's' \(row \d+: '\d+' -> "
                                        r"1997-01-0.*widen the sanity range with `columns\.time_range"):
        run(tmp_path, df, columns={"time_unit": "s"})
    ds = run(tmp_path, df, columns={"time_unit": "s", "time_range": [1990, 2100]})
    assert labels(ds) == ["1997-01-06", "1997-01-07", "1997-01-08"]
    assert ds.manifest["validation"]["time_range"] == [1990, 2100]
    assert ds.time_range_ms == (631_152_000_000, 4_102_444_800_000)  # what later stages should accept


@pytest.mark.parametrize("unit, convert", [
    ("us", lambda ms: ms * 1000),
    ("ms", lambda ms: ms),
    ("datetime", lambda ms: pd.to_datetime(ms, unit="ms", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")),
])
def test_times_of_any_year_in_every_unit(tmp_path, unit, convert):
    start = -315_619_200_000  # 1960-01-01: before the epoch, negative ms
    df = log(start=start)
    df["t"] = convert(df["t"])
    ds = run(tmp_path, df, columns={"time_unit": unit, "time_range": [1950, 2100]})
    assert labels(ds) == ["1960-01-06", "1960-01-07", "1960-01-08"]
    s = ds.samples()
    assert s["ts"].min() == start + 5 * DAY_MS and len(s) == 180


def test_the_manifest_stays_small_and_readable(tmp_path):
    ds = run(tmp_path, log())
    body = json.loads((ds.root / "manifest.json").read_text())
    assert body["eval_window"]["median_rows_per_day"] == 60.0
    assert "outliers" in body["split"]["rule"]
