"""Unusable input stops with a DataError/ValueError naming the file, the column and, where it applies, the row;
an existing dataset is left untouched by a failed import."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import yaml

from twinv2.data.importers import import_kuairand, import_mapped
from twinv2.schema import DataError

HEADER = "uid,photo,t_ms,watch,len,clicked\n"
ROWS = ["1,10,1649552400000,5,10,1", "1,11,1649552500000,5,10,0", "2,10,1649552600000,5,10,1"]
COLUMNS = {"user": "uid", "item": "photo", "time": "t_ms", "label": "clicked", "play": "watch", "duration": "len"}


def setup(tmp_path, text: str | None, body: dict | None = None, name: str = "log.csv"):
    if text is not None:
        (tmp_path / name).write_text(text)
    body = body or {"inputs": [name], "columns": COLUMNS}
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(body))
    return tmp_path / "map.yaml"


def run(tmp_path, text, body=None, name="log.csv"):
    return import_mapped(setup(tmp_path, text, body, name), tmp_path / "out")


def test_good_baseline_imports(tmp_path):
    assert (run(tmp_path, HEADER + "\n".join(ROWS) + "\n") / "manifest.json").exists()


def test_missing_required_column_names_file_and_column(tmp_path):
    text = "uid,photo,t_ms,watch,len\n1,10,1649552400000,5,10\n"
    with pytest.raises(DataError, match=r"log\.csv: required column\(s\) \['clicked'\] missing"):
        run(tmp_path, text)


def test_whole_column_wrong_type_names_file_column_and_row(tmp_path):
    rows = ["1,10,1649552400000,,10,1", "1,11,1649552500000,fast,10,0", "2,10,1649552600000,slow,10,1"]
    with pytest.raises(DataError, match=r"log\.csv: column 'watch' has no usable integer value \(row 1: 'fast'\)"):
        run(tmp_path, HEADER + "\n".join(rows) + "\n")


@pytest.mark.parametrize("text", ["", HEADER])
def test_empty_file(tmp_path, text):
    with pytest.raises(DataError, match=r"log\.csv: the file is empty"):
        run(tmp_path, text)


def test_missing_file_named(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.csv: file not found"):
        run(tmp_path, None, {"inputs": ["nothere.csv"], "columns": COLUMNS})


def test_missing_mapping_file(tmp_path):
    with pytest.raises(DataError, match="mapping file not found: .*nope.yaml"):
        import_mapped(tmp_path / "nope.yaml", tmp_path / "out")


def test_seconds_declared_as_ms_is_named(tmp_path):
    rows = ["1,10,1649552400,5,10,1", "2,10,1649552600,5,10,1"]
    with pytest.raises(DataError, match=r"column 't_ms': no time lies in 2000\.\.2100 when read with unit 'ms' "
                                        r"\(row 0: '1649552400' -> 1970-01-20T02:12:32Z\); if the unit is right, "
                                        r"widen .*columns\.time_range.*; if not, fix `columns\.time_unit`"):
        run(tmp_path, HEADER + "\n".join(rows) + "\n")


def test_unparsable_datetime_column(tmp_path):
    rows = ["1,10,yesterday,5,10,1", "2,10,soon,5,10,1"]
    body = {"inputs": ["log.csv"], "columns": {**COLUMNS, "time_unit": "datetime"}}
    with pytest.raises(DataError, match=r"column 't_ms' has no value readable as time unit 'datetime' \(row 0"):
        run(tmp_path, HEADER + "\n".join(rows) + "\n", body)


def test_all_rows_bad_is_an_error_not_an_empty_dataset(tmp_path):
    rows = ["1,10,1649552400000,-1,10,1", "2,10,1649552600000,-4,10,1"]
    with pytest.raises(DataError, match=r"no usable rows: all 2 rows quarantined .*negative play_ms"):
        run(tmp_path, HEADER + "\n".join(rows) + "\n")


@pytest.mark.parametrize("body, key", [
    ({"inputs": ["log.csv"], "colums": COLUMNS}, "colums"),
    ({"inputs": ["log.csv"], "columns": {**COLUMNS, "playtime": "watch"}}, "playtime"),
    ({"inputs": ["log.csv"], "columns": COLUMNS, "split": {"last_dayz": 3}}, "last_dayz"),
    ({"inputs": ["log.csv"], "columns": COLUMNS, "items": {"path": "i.csv", "item": "photo", "autor": "a"}}, "autor"),
])
def test_unknown_yaml_key_is_named(tmp_path, body, key):
    with pytest.raises(ValueError, match=rf"unknown key\(s\) \['{key}'\]"):
        run(tmp_path, HEADER + "\n".join(ROWS) + "\n", body)


def test_malformed_yaml(tmp_path):
    (tmp_path / "map.yaml").write_text("inputs: [log.csv\ncolumns: {user: uid\n")
    with pytest.raises(ValueError, match=r"map\.yaml: malformed YAML"):
        import_mapped(tmp_path / "map.yaml", tmp_path / "out")


@pytest.mark.parametrize("body, message", [
    ({"inputs": ["log.csv"]}, "required key 'columns' missing"),
    ({"inputs": ["log.csv"], "columns": {"user": "uid"}}, "section 'columns'.*item"),
    ({"inputs": ["log.csv"], "columns": {**COLUMNS, "time_unit": "minutes"}},
     "columns.time_unit 'minutes' is not one of ms, s, us, datetime"),
    ({"inputs": ["log.csv"], "columns": COLUMNS, "split": {"last_days": 0}},
     r"split\.last_days must be an integer in 1\.\.366 .*, got 0"),
    ({"inputs": ["log.csv"], "columns": COLUMNS, "split": {"history": "label > 0"}}, "split.history 'label > 0'"),
    ({"inputs": ["log.csv"], "columns": COLUMNS, "split": {"history": "liked == 1"}},
     r"log\.csv: required column\(s\) \['liked'\] missing"),
    ({"inputs": ["log.csv"], "columns": COLUMNS, "cross_features": ["label"]}, "feature 'label' has the name"),
    ({"inputs": ["log.csv"], "columns": COLUMNS, "cross_features": "watch"}, "cross_features: expected a list of str, got 'watch'"),
])
def test_bad_mapping_values(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, HEADER + "\n".join(ROWS) + "\n", body)


def test_failed_import_leaves_existing_dataset(tmp_path):
    good = run(tmp_path, HEADER + "\n".join(ROWS) + "\n")
    before = (good / "manifest.json").read_text()
    (tmp_path / "log.csv").write_text(HEADER)
    with pytest.raises(DataError):
        import_mapped(tmp_path / "map.yaml", tmp_path / "out", overwrite=True)
    assert (good / "manifest.json").read_text() == before


def test_existing_dataset_needs_overwrite(tmp_path):
    run(tmp_path, HEADER + "\n".join(ROWS) + "\n")
    with pytest.raises(FileExistsError, match="overwrite"):
        import_mapped(tmp_path / "map.yaml", tmp_path / "out")


def test_kuairand_missing_dir_and_bad_layout(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "kuairand27k_likehate_k15.tsv")) + ": file not found"):
        import_kuairand(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="layout '5k' is not one of"):
        import_kuairand(tmp_path, tmp_path / "out", layout="5k")


def test_kuairand_missing_column_named(tmp_path):
    pd.DataFrame({"user_id": [1], "video_id": [2]}).to_csv(tmp_path / "kuairand27k_likehate_k15.tsv", sep="\t",
                                                           index=False)
    with pytest.raises(DataError, match=r"kuairand27k_likehate_k15\.tsv: required column\(s\) \['date', 'time_ms'"):
        import_kuairand(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("unit, good, bad, reason", [
    ("datetime", "2022-04-10 01:00:00", "not-a-time", "unparsable ts (not-a-time)"),
    ("s", "1649552400", "12:00", "unparsable ts (12:00)"),
    ("s", "1649552400.5", "1649552", "impossible ts (1649552000 ms)"),
])
def test_bad_time_cell_is_quarantined_with_unit(tmp_path, unit, good, bad, reason):
    rows = [f"1,10,{good},5,10,1", f"2,10,{bad},5,10,1", f"3,10,{good},5,10,0"]
    body = {"inputs": ["log.csv"], "columns": {**COLUMNS, "time_unit": unit}}
    root = run(tmp_path, HEADER + "\n".join(rows) + "\n", body)
    q = pd.read_csv(root / "quarantine.csv")
    assert q["row"].tolist() == [1] and q["reason"].tolist() == [reason]
    s = pd.read_parquet(root / "samples")
    assert sorted(s["ts"]) == [1_649_552_400_000 + (500 if unit == "s" and "." in good else 0)] * 2
