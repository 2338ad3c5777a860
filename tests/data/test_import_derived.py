"""Bring your own log (issue 13, item 3): the mapping derives a label from a rule (threshold, set of values,
boolean column, constant), takes constants for play/duration, derives play time from a watch fraction, and
codes categorical text columns (first value of a multi-valued cell) with the code table in the manifest. A
label column that is not 0/1 is refused with the rule syntax, not imported with most rows quarantined."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from twinv2.data.importers import import_mapped
from twinv2.data.storage import DAY_MS, Dataset
from twinv2.schema import DataError

T0 = 1_649_548_800_000  # 2022-04-10 00:00 UTC
N = 40


@pytest.fixture
def ratings(tmp_path) -> pd.DataFrame:
    """A MovieLens-like log: ratings 1..5, an action text, a watch fraction, genres "Action|Comedy"."""
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"uid": rng.integers(1, 6, N), "movie": np.arange(N) % 13 + 1,
                       "t": T0 + (np.arange(N) * DAY_MS) // 10, "rating": np.arange(N) % 5 + 1,
                       "action": np.array(["click", "like", "skip", "view"])[np.arange(N) % 4],
                       "liked": np.array(["true", "False", "TRUE", "false"])[np.arange(N) % 4],
                       "frac": np.round(np.arange(N) / N, 3), "genres": np.array(["Action|Comedy", "Drama", "",
                                                                                  "Comedy|Romance"])[np.arange(N) % 4]})
    df.to_csv(tmp_path / "log.csv", index=False)
    return df


def run(tmp_path, columns: dict, **more) -> Dataset:
    body = {"inputs": ["log.csv"], "columns": {"user": "uid", "item": "movie", "time": "t", **columns},
            "split": {"last_days": 2, "history": "all"}, **more}
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(body))
    return Dataset(import_mapped(tmp_path / "map.yaml", tmp_path / "out", n_shards=2))


def rows(ds: Dataset) -> pd.DataFrame:
    """Every stored row (history is "all": every valid row is a behaviour), with its sample label where it is one."""
    b = pd.concat([ds.behaviours_frame(s) for s in range(ds.n_shards)])
    return b.merge(ds.samples(), on=["user_id", "item_id", "ts"], how="left").sort_values("ts").reset_index(drop=True)


def test_a_rating_as_label_is_refused_with_the_rule_syntax(tmp_path, ratings):
    # Before the fix: exit 0 with 80% of the rows quarantined and rating 1 silently a click.
    with pytest.raises(DataError, match=r"log\.csv: label column 'rating' holds values other than 0/1 in 32 of 40 "
                                        r"rows .*label: \{column: rating, ge: 4\}"):
        run(tmp_path, {"label": "rating"})


@pytest.mark.parametrize("label, expected", [
    ({"column": "rating", "ge": 4}, lambda df: (df["rating"] >= 4).astype(int)),
    ({"column": "rating", "lt": 2}, lambda df: (df["rating"] < 2).astype(int)),
    ({"column": "action", "in": ["click", "like"]}, lambda df: df["action"].isin(["click", "like"]).astype(int)),
    ({"column": "action", "eq": "view"}, lambda df: (df["action"] == "view").astype(int)),
    ("liked", lambda df: (df["liked"].str.lower() == "true").astype(int)),
    ({"column": "liked", "in": [True]}, lambda df: (df["liked"].str.lower() == "true").astype(int)),
    ({"const": 1}, lambda df: pd.Series(1, index=df.index)),
])
def test_label_rules(tmp_path, ratings, label, expected):
    ds = run(tmp_path, {"label": label})
    s = ds.samples().set_index("ts")["label"]
    want = expected(ratings).set_axis(ratings["t"])
    assert len(s) == 20 and (s == want.loc[s.index]).all()
    assert ds.manifest["inputs"][0]["rows_quarantined"] == 0


def test_constants_and_play_from_a_watch_fraction(tmp_path, ratings):
    ds = run(tmp_path, {"label": {"column": "rating", "ge": 4}, "play": {"ratio": "frac"},
                        "duration": {"const": 30}, "duration_unit": "s"})
    r = rows(ds)
    assert (r["duration_ms"] == 30_000).all()
    np.testing.assert_array_equal(r["play_ms"], np.round(ratings.sort_values("t")["frac"] * 30_000))
    assert ds.manifest["mapping"]["derived"] == {"label": "1 where rating ge 4, else 0",
                                                 "play": "round(frac x duration)", "duration": "constant 30"}
    assert (ds.items()["duration_ms"] == 30_000).all()


def test_play_ratio_with_an_unknown_duration_is_an_unknown_play(tmp_path, ratings):
    ratings["len"] = np.where(np.arange(N) % 2 == 0, 1000, 0)  # 0 = unknown duration
    ratings.to_csv(tmp_path / "log.csv", index=False)
    r = rows(run(tmp_path, {"label": {"const": 0}, "play": {"ratio": "frac"}, "duration": "len"}))
    assert (r.loc[r["duration_ms"] == 0, "play_ms"] == -1).all()
    assert (r.loc[r["duration_ms"] > 0, "play_ms"] >= 0).all()


def test_categorical_text_columns_become_codes_with_the_table_in_the_manifest(tmp_path, ratings):
    pd.DataFrame({"movie": range(1, 14), "studio": ["A", "B", "C"] * 4 + ["A"],
                  "kind": ["x|y", "y"] * 6 + ["z"]}).to_csv(tmp_path / "movies.csv", index=False)
    ds = run(tmp_path, {"label": {"const": 1}}, cross_features=["genres", "action"],
             categorical=["genres", "action", "studio", "kind"],
             items={"path": "movies.csv", "item": "movie", "author": "studio", "tag": "kind"})
    codes = ds.manifest["codes"]
    assert codes["genres"] == {"Action": 0, "Drama": 1, "Comedy": 2}  # first values, in order of appearance
    assert codes["action"] == {"click": 0, "like": 1, "skip": 2, "view": 3}
    assert codes["studio"] == {"A": 0, "B": 1, "C": 2} and codes["kind"] == {"x": 0, "y": 1, "z": 2}
    r = rows(ds)
    names = {v: k for k, v in codes["genres"].items()}
    got = r["genres"].map(lambda c: names.get(c, ""))
    want = ratings.sort_values("t")["genres"].fillna("").str.split("|").str[0].reset_index(drop=True)
    assert (got == want).all()  # a blank cell is NaN (unknown), not a code
    items = ds.items().set_index("item_id")
    assert items.loc[1, "author_id"] == 0 and items.loc[2, "tag"] == 1 and items.loc[13, "tag"] == 2


def test_a_text_feature_not_declared_categorical_says_how(tmp_path, ratings):
    with pytest.raises(DataError, match=r"column 'action' has no usable numeric value \(row 0: 'click'\).*"
                                        r"categorical: \[action\]"):
        run(tmp_path, {"label": {"const": 1}}, cross_features=["action"])


@pytest.mark.parametrize("columns, more, message", [
    ({"label": ["rating"]}, {}, r"columns\.label = \['rating'\] is not a 0/1 column name, a rule"),
    ({"label": {"column": "rating", "gte": 4}}, {}, r"needs 'column' and exactly one of ge, gt, le, lt, eq, in; "
                                                    r"got \['gte'\]"),
    ({"label": {"column": "rating", "ge": "four"}}, {}, r"columns\.label\.ge must be a number, got 'four'"),
    ({"label": {"column": "action", "in": []}}, {}, r"columns\.label\.in must be a non-empty list"),
    ({"label": {"const": 2}}, {}, r"columns\.label\.const must be 0 or 1, got 2"),
    ({"label": "rating", "duration": {"const": -5}}, {}, r"columns\.duration\.const must be a number >= 0, got -5"),
    ({"label": "rating", "play": {"ratio": "frac"}}, {}, r"columns\.play = \{'ratio': 'frac'\} derives play time "
                                                         r"from the duration, but columns\.duration is not given"),
    ({"label": "rating", "play": {"fraction": "frac"}}, {}, r"columns\.play = \{'fraction': 'frac'\} is not a column "
                                                            r"name, \{const: <ms>\} or \{ratio:"),
    ({"label": {"const": 1}}, {"categorical": ["uid"]}, r"categorical: 'uid' is not a feature column"),
    ({"label": {"const": 1}}, {"multi_value_sep": ""}, r"multi_value_sep must be a non-empty string"),
])
def test_every_mapping_mistake_names_the_key_and_value(tmp_path, ratings, columns, more, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, columns, **more)
