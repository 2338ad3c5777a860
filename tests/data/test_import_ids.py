"""Ids are integers end to end (issue 14, item 4): read exactly from CSV text and Parquet integers, never
through float64; what cannot be an exact int64 id is quarantined with its reason, never rounded onto a
neighbour's id or wrapped to -2^63. Also: reading in chunks changes nothing (duplicates across chunks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from twinv2.data.importers import import_mapped, reading
from twinv2.data.storage import Dataset
from twinv2 import schema

T = 1_649_552_400_000  # 2022-04-10 01:00 UTC
BIG = 2**63 - 1
COLUMNS = {"user": "uid", "item": "photo", "time": "t_ms", "label": "clicked"}


def run(tmp_path, rows: list[str], body: dict | None = None, name: str = "log.csv"):
    (tmp_path / name).write_text("uid,photo,t_ms,clicked\n" + "\n".join(rows) + "\n")
    body = {"inputs": [name], "columns": COLUMNS, **(body or {})}
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(body))
    root = import_mapped(tmp_path / "map.yaml", tmp_path / "out")
    return Dataset(root), pd.read_csv(root / "quarantine.csv", dtype=str)


def test_parse_int64_is_exact_and_names_each_failure():
    from twinv2.schema import INT_BLANK, INT_FRACTION, INT_INEXACT, INT_OK, INT_RANGE, INT_UNPARSABLE, parse_int64

    s = pd.Series(["9223372036854775807", "-9223372036854775808", "9007199254740993", " 42 ", "", "12.0",
                   "2.5", "9223372036854775808", "1e30", "9.007199254740993e15", "abc", "1_000", "inf", "1e999999999"],
                  dtype=object)
    vals, st = parse_int64(s)
    assert st.tolist() == [INT_OK, INT_OK, INT_OK, INT_OK, INT_BLANK, INT_OK, INT_FRACTION, INT_RANGE, INT_RANGE,
                           INT_INEXACT, INT_UNPARSABLE, INT_UNPARSABLE, INT_UNPARSABLE, INT_RANGE]
    assert vals[:4].tolist() == [BIG, -BIG - 1, 2**53 + 1, 42] and vals[5] == 12


@pytest.mark.parametrize("series, status", [
    (pd.Series([2**64 - 1, 5], dtype="uint64"), ["INT_RANGE", "INT_OK"]),
    (pd.Series([2.0**53, 5.0, np.nan, 0.5]), ["INT_INEXACT", "INT_OK", "INT_BLANK", "INT_FRACTION"]),
    (pd.Series([BIG, None], dtype="Int64"), ["INT_OK", "INT_BLANK"]),
    (pd.Series([True, False]), ["INT_OK", "INT_OK"]),
])
def test_parse_int64_on_typed_columns(series, status):
    assert schema.parse_int64(series)[1].tolist() == [getattr(schema, s) for s in status]


def test_large_csv_ids_stay_distinct_and_out_of_range_ones_are_quarantined(tmp_path):
    rows = [f"9223372036854775808,10,{T},1",  # 2^63: out of int64 (wrapped to -2^63 before the fix)
            f"9223372036854775809,11,{T + 1},1",  # 2^63 + 1: the same wrapped id before the fix
            f"9007199254740993,10,{T + 2},1",  # 2^53 + 1: rounded onto 2^53 through float64 before the fix
            f"9007199254740992,10,{T + 2},1",  # 2^53: a different user
            f"9223372036854775807,12,{T + 3},0",  # int64 max: a valid id
            f"3,12,{T + 4},0"]
    ds, q = run(tmp_path, rows)
    s = ds.samples()
    assert sorted(s["user_id"].tolist()) == [3, 2**53, 2**53 + 1, BIG]  # four users, none merged, none wrapped
    assert (s["user_id"] >= 0).all()
    assert dict(zip(q["row"].astype(int), q["reason"])) == {
        0: "user_id out of the int64 range (9223372036854775808)",
        1: "user_id out of the int64 range (9223372036854775809)"}
    assert q["user_id"].tolist() == ["9223372036854775808", "9223372036854775809"]  # the raw text, exact


def test_float_formatted_ids_are_judged_exactly(tmp_path):
    rows = [f"7.0,10,{T},1",  # float text of an exact small integer: the id 7
            f"9.007199254740993e15,10,{T + 1},1",  # float text beyond 2^53: its digits may be a neighbour's
            f"8.5,10,{T + 2},1",  # not an integer
            f"9,1.2e1,{T + 3},0"]  # item 12
    ds, q = run(tmp_path, rows)
    assert sorted(map(tuple, ds.samples()[["user_id", "item_id"]].to_numpy().tolist())) == [(7, 10), (9, 12)]
    reasons = dict(zip(q["row"].astype(int), q["reason"]))
    assert reasons[1].startswith("inexact user_id (9.007199254740993e15; a float at or beyond 2^53")
    assert reasons[2] == "unparsable user_id (8.5)"


def test_parquet_id_columns_of_each_type(tmp_path):
    n = 4
    t = pa.table({"uid": pa.array([2**64 - 1, 2**63 - 1, 5, 6], pa.uint64()),
                  "photo": pa.array([1.0, 2.0, 2.0**53 + 2, 3.0]),  # float ids: exact below 2^53 only
                  "t_ms": pa.array([T + i for i in range(n)], pa.int64()),
                  "clicked": pa.array([1, 0, 1, 0], pa.int8())})
    pq.write_table(t, tmp_path / "log.parquet")
    body = {"inputs": ["log.parquet"], "columns": COLUMNS}
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(body))
    root = import_mapped(tmp_path / "map.yaml", tmp_path / "out")
    s = Dataset(root).samples()
    assert sorted(map(tuple, s[["user_id", "item_id"]].to_numpy().tolist())) == [(6, 3), (BIG, 2)]
    q = pd.read_csv(root / "quarantine.csv")
    assert q["reason"].str.split(" \\(").str[0].tolist() == ["user_id out of the int64 range", "inexact item_id"]


def test_reading_in_chunks_finds_duplicates_across_chunks(tmp_path, monkeypatch):
    rows = [f"{u},{u % 3},{T + u},{u % 2}" for u in range(50)] + [f"7,1,{T + 7},1"]  # a duplicate of row 7
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole, qw = run(tmp_path / "a", rows)
    monkeypatch.setattr(reading, "CHUNK_ROWS", 4)  # 13 chunks of at most 4 rows
    chunked, qc = run(tmp_path / "b", rows)
    pd.testing.assert_frame_equal(whole.samples(), chunked.samples())
    assert qc["reason"].tolist() == qw["reason"].tolist() == ["duplicate user_id/item_id/ts of row 7"]
    assert chunked.manifest["inputs"][0]["rows_in"] == 51


def test_a_compressed_tsv_is_read_through_with_its_separator(tmp_path):
    import gzip

    text = "uid\tphoto\tt_ms\tclicked\n" + "".join(f"{2**62 + u}\t{u}\t{T + u}\t{u % 2}\n" for u in range(6))
    (tmp_path / "log.tsv.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "map.yaml").write_text(yaml.safe_dump({"inputs": ["log.tsv.gz"], "columns": COLUMNS}))
    s = Dataset(import_mapped(tmp_path / "map.yaml", tmp_path / "out")).samples()
    assert sorted(s["user_id"].tolist()) == [2**62 + u for u in range(6)]
