"""Validation: every bad-row kind lands in the quarantine with its reason; unusable input stops with a message."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twinv2.schema import BEHAVIOURS, ITEMS, SAMPLES, DataError, completion_ratio, validate

T0 = 1_650_000_000_000


def frame(**cols):
    return pd.DataFrame(cols)


def test_good_rows_are_typed_and_sorted():
    df = frame(user_id=["2", "1", "1"], item_id=[7, 9, 8], ts=[T0 + 5, T0 + 2, T0 + 1], play_ms=[1, 2, 3],
               duration_ms=[10, 10, 10])
    v = validate(df, BEHAVIOURS, "b.csv")
    assert len(v.quarantine) == 0
    assert v.clean["user_id"].tolist() == [1, 1, 2]
    assert v.clean["item_id"].tolist() == [8, 9, 7]  # (user, ts) order
    assert str(v.clean["ts"].dtype) == "int64"


@pytest.mark.parametrize(
    "column, bad, reason",
    [
        ("user_id", "", "missing user_id"),
        ("item_id", None, "missing item_id"),
        ("play_ms", -5, "negative play_ms (-5)"),
        ("user_id", "u17", "unparsable user_id (u17)"),
        ("item_id", 2.5, "unparsable item_id (2.5)"),
        ("ts", 1_650_000_000, "impossible ts (1650000000 ms)"),  # seconds given as ms
        ("ts", 5_000_000_000_000, "impossible ts (5000000000000 ms)"),  # year 2128
    ],
)
def test_each_bad_row_kind_is_quarantined_with_reason(column, bad, reason):
    n = 11
    df = frame(user_id=list(range(n)), item_id=list(range(100, 100 + n)), ts=[T0 + i for i in range(n)],
               play_ms=[10] * n, duration_ms=[20] * n).astype(object)
    df.loc[4, column] = bad
    v = validate(df, BEHAVIOURS, "b.csv")
    assert v.rows_in == n == len(v.clean) + len(v.quarantine)
    assert v.quarantine["row"].tolist() == [4]
    assert v.quarantine["reason"].tolist() == [reason]
    assert v.quarantine["source"].tolist() == ["b.csv"]


def test_duplicates_keep_first_and_name_it():
    df = frame(user_id=[1, 1, 2, 1], item_id=[5, 5, 5, 5], ts=[T0, T0, T0, T0], play_ms=[1, 9, 1, 1],
               duration_ms=[2, 2, 2, 2])
    v = validate(df, BEHAVIOURS, "b.csv")
    assert sorted(v.quarantine["row"]) == [1, 3]
    assert set(v.quarantine["reason"]) == {"duplicate user_id/item_id/ts of row 0"}
    assert len(v.clean) == 2


def test_zero_or_missing_duration_keeps_row_with_nan_ratio():
    df = frame(user_id=[1, 1, 1], item_id=[1, 2, 3], ts=[T0, T0 + 1, T0 + 2], play_ms=[10, 10, ""],
               duration_ms=[0, "", 30])
    v = validate(df, BEHAVIOURS, "b.csv")
    assert len(v.quarantine) == 0 and len(v.clean) == 3
    r = completion_ratio(v.clean["play_ms"], v.clean["duration_ms"])
    assert np.isnan(r).all()  # zero, missing duration, missing play


def test_completion_ratio_values():
    r = completion_ratio(np.array([0, 5, 30, 7]), np.array([10, 10, 10, 0]))
    np.testing.assert_allclose(r[:3], [0.0, 0.5, 3.0])
    assert np.isnan(r[3])


def test_optional_columns_get_their_fill():
    df = frame(user_id=[1], item_id=[2], ts=[T0])
    v = validate(df, BEHAVIOURS, "b.csv")
    assert v.clean.loc[0, "play_ms"] == -1 and v.clean.loc[0, "duration_ms"] == 0


def test_empty_file_is_an_error():
    with pytest.raises(DataError, match=r"log\.csv: the file is empty"):
        validate(pd.DataFrame({"user_id": [], "item_id": [], "ts": []}), BEHAVIOURS, "log.csv")


def test_missing_required_column_names_file_and_column():
    df = frame(user_id=[1], ts=[T0])
    with pytest.raises(DataError, match=r"log\.csv: required column\(s\) \['item_id'\] missing"):
        validate(df, BEHAVIOURS, "log.csv")


def test_whole_column_of_wrong_type_names_file_column_and_row():
    df = frame(user_id=[1, 2, 3], item_id=["", "abc", "def"], ts=[T0] * 3)
    with pytest.raises(DataError, match=r"log\.csv: column 'item_id' has no usable integer value \(row 1: 'abc'\)"):
        validate(df, BEHAVIOURS, "log.csv")


def test_label_must_be_binary_and_extras_are_kept():
    df = frame(user_id=[1, 1, 2], item_id=[3, 4, 5], ts=[T0, T0 + 1, T0], label=[1, 2, 0], page=[1, "x", 3])
    v = validate(df, SAMPLES, "s.csv", extras=["page"])
    assert dict(zip(v.quarantine["row"], v.quarantine["reason"])) == {1: "label not 0/1 (2)"}
    assert v.clean["page"].tolist() == [1.0, 3.0]
    assert str(v.clean["label"].dtype) == "int8"


def test_unparsable_extra_cell_is_quarantined():
    df = frame(user_id=[1, 1], item_id=[3, 4], ts=[T0, T0 + 1], label=[1, 0], page=[1, "x"])
    v = validate(df, SAMPLES, "s.csv", extras=["page"])
    assert v.quarantine["reason"].tolist() == ["unparsable page (x)"]


def test_items_duplicate_ids():
    df = frame(item_id=[1, 2, 1], author_id=[5, 6, 7])
    v = validate(df, ITEMS, "items.csv")
    assert v.clean["item_id"].tolist() == [1, 2]
    assert v.clean["tag"].tolist() == [-1, -1]
    assert v.quarantine["reason"].tolist() == ["duplicate item_id of row 0"]


def test_conservation_on_random_garbage():
    rng = np.random.default_rng(3)
    n = 500
    pool = [1, 2, -1, "x", "", None, 3.5, T0, T0 + 1, 10**13]
    df = frame(**{c: [pool[i] for i in rng.integers(0, len(pool), n)] for c in BEHAVIOURS.names})
    df["user_id"] = rng.integers(0, 5, n)  # keep the column usable
    df["item_id"] = rng.integers(0, 5, n)
    df["ts"] = rng.choice([T0, T0 + 1, T0 + 2, 5, "bad"], n)
    v = validate(df, BEHAVIOURS, "g.csv")
    assert len(v.clean) + len(v.quarantine) == n
    assert (v.quarantine["reason"] != "").all()
    assert not v.clean.duplicated(["user_id", "item_id", "ts"]).any()
