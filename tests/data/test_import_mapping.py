"""Generic mapping import on the hand-written fixture tests/data/fixtures/tiny_log.csv.

The fixture (times in seconds; UTC days A = 2022-04-10, B = 04-11, C = 04-12), by 0-based data row:
0 u1 A clicked -> behaviour | 1 u1 A unclicked -> unused | 2 u1 B clicked -> both | 3 u1 B unclicked -> sample
4 u2 A clicked -> behaviour | 5 u2 C 23:00 clicked, duration 0 -> both (ratio NaN)
6 u2 C 23:03 unclicked, duration blank -> sample | 7 u3 B clicked, ratio 3 -> both | 8 u3 C unclicked -> sample
9 duplicate of row 7 | 10 missing user | 11 negative play | 12 play "abc" | 13 time 1649635 s (= 1970)
14 u1 B clicked -> both | 15 u2 A unclicked -> unused | 16 label 2.   Rows 9-13 and 16 are quarantined.
tiny_items.csv: "39,68" -> tag 39, blank tag/duration, an unused item 999, a duplicate item 100 (last row).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from twinv2.data.importers import import_mapped, load_mapping
from twinv2.data.storage import Dataset
from twinv2.schema import completion_ratio

FIX = Path(__file__).parent / "fixtures"
DAY_B = 1_649_635_200_000  # 2022-04-11 00:00 UTC
DAY_C = DAY_B + 86_400_000

BASE = {
    "name": "tiny",
    "inputs": ["tiny_log.csv"],
    "columns": {"user": "uid", "item": "photo", "time": "t_s", "time_unit": "s", "label": "clicked",
                "play": "watch_ms", "duration": "len_ms"},
    "cross_features": ["liked", "page"],
    "sample_features": ["page"],
    "split": {"last_days": 2, "day_offset_hours": 0, "history": "label == 1"},
}


def write_mapping(folder: Path, body: dict, name: str = "map.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A folder holding the fixture CSVs, where mappings are written."""
    d = tmp_path / "in"
    d.mkdir()
    for f in ("tiny_log.csv", "tiny_items.csv"):
        shutil.copy(FIX / f, d / f)
    return d


def test_fixture_import_counts_and_accounting(tiny, tmp_path):
    root = import_mapped(write_mapping(tiny, BASE), tmp_path / "ds", n_shards=3)
    ds = Dataset(root)
    m = ds.manifest
    log = m["inputs"][0]
    assert log["rows_in"] == 17
    assert log["rows_quarantined"] == 6
    assert (log["rows_as_behaviour_only"], log["rows_as_sample_only"], log["rows_as_both"]) == (2, 3, 4)
    assert log["rows_stored"] == 9 and log["rows_unused"] == 2
    assert log["rows_in"] == log["rows_stored"] + log["rows_quarantined"] + log["rows_unused"]
    assert m["counts"]["behaviours"] == 6 and m["counts"]["samples"] == 7
    assert [(d["label"], d["start_ms"]) for d in m["eval_days"]] == [("2022-04-11", DAY_B), ("2022-04-12", DAY_C)]
    assert m["cross_features"] == ["liked", "page"] and m["sample_features"] == ["page"]
    assert "last 2 day(s)" in m["split"]["rule"] and "label == 1" in m["split"]["rule"]
    s = ds.samples()
    assert sorted(s["item_id"]) == [102, 103, 104, 105, 106, 107, 112]
    assert s.set_index("item_id")["label"].to_dict() == {102: 1, 103: 0, 104: 1, 105: 0, 106: 1, 107: 0, 112: 1}
    assert "page" in s.columns and "liked" not in s.columns  # outcomes stay off the samples


def test_quarantine_reasons_per_row(tiny, tmp_path):
    root = import_mapped(write_mapping(tiny, BASE), tmp_path / "ds")
    q = pd.read_csv(root / "quarantine.csv")
    assert q["source"].map(lambda s: Path(s).name).unique().tolist() == ["tiny_log.csv"]
    assert dict(zip(q["row"], q["reason"])) == {
        9: "duplicate user_id/item_id/ts of row 7",
        10: "missing user_id",
        11: "negative play_ms (-5)",
        12: "unparsable play_ms (abc)",
        13: "impossible ts (1649635000 ms)",
        16: "label not 0/1 (2)",
    }


def test_zero_and_missing_duration_kept_with_nan_ratio(tiny, tmp_path):
    ds = Dataset(import_mapped(write_mapping(tiny, BASE), tmp_path / "ds"))
    b = pd.concat([ds.behaviours_frame(s) for s in range(ds.n_shards)])
    zero = b[b["item_id"] == 104]
    assert zero["duration_ms"].tolist() == [0]
    assert np.isnan(completion_ratio(zero["play_ms"].to_numpy(), zero["duration_ms"].to_numpy())).all()
    assert 105 in set(ds.samples()["item_id"])  # blank duration: the sample is kept


def test_items_derived_without_item_file(tiny, tmp_path):
    ds = Dataset(import_mapped(write_mapping(tiny, BASE), tmp_path / "ds"))
    items = ds.items().set_index("item_id")
    assert sorted(items.index) == [100, 102, 103, 104, 105, 106, 107, 112]  # 101 only in an unused row
    assert (items["author_id"] == -1).all() and (items["tag"] == -1).all()
    assert items["duration_ms"].to_dict() == {100: 10000, 102: 10000, 103: 8000, 104: 0, 105: 0, 106: 3000,
                                             107: 10000, 112: 10000}


def test_items_file_joined_first_tag_units_and_match_rate(tiny, tmp_path):
    body = {**BASE, "items": {"path": "tiny_items.csv", "item": "photo", "author": "author", "tag": "tags",
                              "duration": "secs", "duration_unit": "s"}}
    ds = Dataset(import_mapped(write_mapping(tiny, body), tmp_path / "ds"))
    items = ds.items().set_index("item_id")
    assert items.loc[100].tolist() == [7, 39, 10000]
    assert items.loc[102].tolist() == [8, 5, 10000]  # blank duration: the observed one
    assert items.loc[106].tolist() == [9, -1, 3500]
    assert items.loc[103].tolist() == [-1, -1, 8000]
    assert 999 not in items.index
    match = ds.manifest["item_features_match"]
    assert (match["matched"], match["items"]) == (3, 8)
    side = ds.manifest["inputs"][1]
    assert (side["role"], side["rows_in"], side["rows_stored"], side["rows_quarantined"], side["rows_unused"]) == \
        ("items", 5, 3, 1, 1)
    q = pd.read_csv(ds.root / "quarantine.csv")
    assert q[q["source"].str.endswith("tiny_items.csv")]["reason"].tolist() == ["duplicate item_id of row 0"]


def test_parquet_with_renamed_columns_and_datetime_times(tiny, tmp_path):
    df = pd.read_csv(FIX / "tiny_log.csv", dtype=str, keep_default_na=False)
    good = df.drop(index=[9, 10, 11, 12, 13, 16])
    when = pd.to_datetime(good["t_s"].astype(int), unit="s", utc=True)
    # Offsets in the strings are honoured: the same instants written in UTC+8.
    pq_df = pd.DataFrame({"who": good["uid"].astype(int), "what": good["photo"].astype(int),
                          "when": (when + pd.Timedelta(hours=8)).dt.strftime("%Y-%m-%dT%H:%M:%S+08:00"),
                          "y": good["clicked"].astype(int), "w": pd.to_numeric(good["watch_ms"]),
                          "len": pd.to_numeric(good["len_ms"])})
    pq_df.to_parquet(tiny / "log.parquet", index=False)
    body = {"inputs": "log.parquet",
            "columns": {"user": "who", "item": "what", "time": "when", "time_unit": "datetime", "label": "y",
                        "play": "w", "duration": "len"},
            "split": {"last_days": 2}}
    ds = Dataset(import_mapped(write_mapping(tiny, body), tmp_path / "ds"))
    ref = Dataset(import_mapped(write_mapping(tiny, BASE, "ref.yaml"), tmp_path / "ref"))
    cols = ["user_id", "item_id", "ts", "label"]
    pd.testing.assert_frame_equal(ds.samples()[cols], ref.samples()[cols])
    assert ds.manifest["inputs"][0]["rows_quarantined"] == 0 and ds.manifest["name"] == "map"


def test_two_input_files_duplicates_across_files_and_per_file_accounting(tiny, tmp_path):
    df = pd.read_csv(tiny / "tiny_log.csv", dtype=str, keep_default_na=False)
    df.iloc[:8].to_csv(tiny / "a.csv", index=False)
    df.iloc[8:].to_csv(tiny / "b.csv", index=False)
    body = {**BASE, "inputs": ["a.csv", "b.csv"], "max_quarantine_share": 1.0}  # b.csv: 6 of its 9 rows are bad
    m = Dataset(import_mapped(write_mapping(tiny, body), tmp_path / "ds")).manifest
    a, b = m["inputs"][0], m["inputs"][1]
    assert (a["rows_in"], a["rows_quarantined"], b["rows_in"], b["rows_quarantined"]) == (8, 0, 9, 6)
    q = pd.read_csv(Path(tmp_path / "ds" / "quarantine.csv"))
    assert q.loc[q["row"] == 1, "reason"].tolist() == [f"duplicate user_id/item_id/ts of {tiny / 'a.csv'} row 7"]
    for f in (a, b):
        assert f["rows_in"] == f["rows_stored"] + f["rows_quarantined"] + f["rows_unused"]
    assert m["counts"]["samples"] == 7


def test_history_all_and_user_features_from_log(tiny, tmp_path):
    body = {**BASE, "split": {"last_days": 1, "history": "all"}, "cross_features": [], "sample_features": [],
            "user_features": ["page"]}
    ds = Dataset(import_mapped(write_mapping(tiny, body), tmp_path / "ds"))
    log = ds.manifest["inputs"][0]
    assert log["rows_unused"] == 0 and ds.manifest["counts"]["behaviours"] == 11
    assert [d.label for d in ds.eval_days] == ["2022-04-12"]
    users = ds.users().set_index("user_id")
    assert users["page"].to_dict() == {1: 2.0, 2: 1.0, 3: 3.0}  # the value on each user's latest row


def test_history_filter_on_another_column(tiny, tmp_path):
    body = {**BASE, "split": {"last_days": 2, "history": "liked == 1"}}
    ds = Dataset(import_mapped(write_mapping(tiny, body), tmp_path / "ds"))
    b = pd.concat([ds.behaviours_frame(s) for s in range(ds.n_shards)])
    assert sorted(b["item_id"]) == [102, 112]


def test_day_offset_moves_day_boundaries(tiny, tmp_path):
    # At UTC+2 the 23:00 UTC rows of day C fall on 04-13 local: the last day is 04-13 and day B leaves.
    body = {**BASE, "split": {"last_days": 1, "day_offset_hours": 2}}
    ds = Dataset(import_mapped(write_mapping(tiny, body), tmp_path / "ds"))
    assert [(d["label"], d["start_ms"]) for d in ds.manifest["eval_days"]] == [("2022-04-13", DAY_C + 22 * 3_600_000)]
    assert sorted(ds.samples()["item_id"]) == [104, 105]


def test_load_mapping_resolves_tuples_and_defaults(tiny):
    m = load_mapping(write_mapping(tiny, BASE))
    assert m.inputs == ("tiny_log.csv",) and m.columns.time_unit == "s" and m.split.last_days == 2
    assert m.items is None and m.users is None


def test_manifest_is_json_and_shards_sorted(tiny, tmp_path):
    root = import_mapped(write_mapping(tiny, BASE), tmp_path / "ds", n_shards=2)
    json.loads((root / "manifest.json").read_text())
    ds = Dataset(root)
    for s in range(2):
        b = ds.behaviours_frame(s)
        assert b.equals(b.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True))
