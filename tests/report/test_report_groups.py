"""Figure 5's history-length groups and the diversity numbers, against plain pandas/sklearn references."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from report_experiment import MODELS, predictions
from sklearn.metrics import roc_auc_score

from twinv2.report.groups import expected_random_distinct, tercile_groups


def _pair_auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUC as the share of (positive, negative) pairs ranked right, ties counting half."""
    pos, neg = s[y == 1], s[y == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def _ref_gauc(df: pd.DataFrame) -> float:
    num = den = 0.0
    for _, g in df.groupby("user_id"):
        if g["label"].nunique() == 2:
            num += len(g) * _pair_auc(g["label"].to_numpy(), g["score"].to_numpy())
            den += len(g)
    return num / den if den else float("nan")


def test_pair_auc_reference_equals_sklearn():
    rng = np.random.default_rng(0)
    y, s = rng.random(50) < 0.4, np.round(rng.random(50), 1)
    assert _pair_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_history_groups_partition_the_test_users(experiment, tables):
    hg = tables["main"]["history_groups"]
    p2, p1 = predictions(experiment / "main" / "runs" / "twin_v2"), predictions(experiment / "main" / "runs" / "twin")
    users = sorted(set(p2["user_id"]) | set(p1["user_id"]))
    assert sorted(hg["user_ids"]) == users and len(hg["user_ids"]) == len(set(hg["user_ids"])) == hg["users"]
    # Lengths: behaviours before the first evaluation day, straight from the Parquet shards.
    beh = pd.concat([pd.read_parquet(p) for p in (experiment / "main" / "dataset" / "behaviours").glob("*.parquet")])
    ref = beh[beh["ts"] < hg["before_ts"]].groupby("user_id").size()
    lengths = dict(zip(hg["user_ids"], hg["user_lengths"]))
    assert all(lengths[u] == ref.get(u, 0) for u in users)
    # Terciles with the documented rule; every user in exactly one group; thresholds respected.
    L = np.array(hg["user_lengths"])
    assert hg["t1"] == np.sort(L)[(len(L) - 1) // 3] and hg["t2"] == np.sort(L)[int((len(L) - 1) * 2 / 3)]
    g = np.array(hg["user_groups"])
    assert set(g) <= {0, 1, 2} and len(g) == len(L)
    assert (L[g == 0] <= hg["t1"]).all() and ((L[g == 1] > hg["t1"]) & (L[g == 1] <= hg["t2"])).all()
    assert (L[g == 2] > hg["t2"]).all()
    assert [r["users"] for r in hg["rows"]] == [int((g == i).sum()) for i in range(3)]
    assert sum(r["users"] for r in hg["rows"]) == len(users)
    assert sum(r["share_users"] for r in hg["rows"]) == pytest.approx(1.0)
    assert sum(r["share_samples"] for r in hg["rows"]) == pytest.approx(1.0)


def test_history_group_gain_against_a_per_user_pair_loop(experiment, tables):
    hg = tables["main"]["history_groups"]
    high = {u for u, gi in zip(hg["user_ids"], hg["user_groups"]) if gi == 2}
    row = hg["rows"][2]
    gains = []
    for model, key in (("twin_v2", "twin_v2_gauc_days"), ("twin", "twin_gauc_days")):
        p = predictions(experiment / "main" / "runs" / model)
        p = p[p["user_id"].isin(high)]
        per_day = {int(d): _ref_gauc(part) for d, part in p.groupby("day")}
        assert {int(k): v for k, v in row[key].items()} == pytest.approx(per_day, abs=1e-12)
        gains.append(np.array([per_day[d] for d in sorted(per_day)]))
    assert row["gain"]["mean_diff"] == pytest.approx((gains[0] - gains[1]).mean(), abs=1e-12)


def test_tercile_groups_with_ties_put_ties_in_the_lower_group():
    g, t1, t2 = tercile_groups(np.array([5, 5, 5, 5, 9, 1]))
    assert (t1, t2) == (5, 5)
    assert g.tolist() == [0, 0, 0, 0, 2, 0]


def _ref_distinct(df: pd.DataFrame, tags: pd.Series, col: str, k: int = 10) -> float:
    vals = []
    for _, g in df.groupby(["user_id", "day"]):
        g = g.sort_values([col, "item_id"], ascending=[False, True])
        vals.append(g.head(k)["item_id"].map(tags).fillna(-1).nunique())
    return float(np.mean(vals))


def test_diversity_against_pandas(experiment, tables):
    dv = tables["main"]["diversity"]
    items = pd.read_parquet(experiment / "main" / "dataset" / "items.parquet")
    tags = pd.Series(items["tag"].to_numpy(), index=items["item_id"].to_numpy())
    by = {r["model"]: r for r in dv["rows"]}
    assert [r["model"] for r in dv["rows"] if r["kind"] == "model"] == list(MODELS)
    for m in ("din", "twin_v2"):
        p = predictions(experiment / "main" / "runs" / m)
        assert by[m]["mean"] == pytest.approx(_ref_distinct(p, tags, "score"), abs=1e-12)
        assert by[m]["user_days"] == p.groupby(["user_id", "day"]).ngroups
    cand = predictions(experiment / "main" / "runs" / "twin_v2")
    all_c = cand.assign(tag=cand["item_id"].map(tags)).groupby(["user_id", "day"])["tag"].nunique().mean()
    assert by["all_candidates"]["mean"] == pytest.approx(all_c, abs=1e-12)
    samples = pd.concat([pd.read_parquet(p) for p in (experiment / "main" / "dataset" / "samples").glob("*.parquet")])
    with_p = cand.drop(columns="p_true").merge(
        samples[["user_id", "item_id", "ts", "p_true"]].drop_duplicates(["user_id", "item_id", "ts"]),
                        on=["user_id", "item_id", "ts"])
    assert by["p_true"]["mean"] == pytest.approx(_ref_distinct(with_p, tags, "p_true"), abs=1e-12)
    sizes = cand.groupby(["user_id", "day"]).size()
    assert dv["candidates_mean"] == pytest.approx(sizes.mean()) and dv["share_over_k"] == pytest.approx(
        (sizes > 10).mean())


def test_expected_random_distinct_equals_enumeration():
    rng = np.random.default_rng(3)
    rows = []
    for user, n in ((1, 12), (2, 4), (3, 13)):
        for i in range(n):
            rows.append({"user_id": user, "day": 0, "item_id": i, "tag": int(rng.integers(0, 5))})
    df = pd.DataFrame(rows)
    got = expected_random_distinct(df, k=10)
    for (u, d), g in df.groupby(["user_id", "day"]):
        t = g["tag"].to_numpy()
        k = min(10, len(t))
        want = np.mean([len(set(t[list(c)])) for c in itertools.combinations(range(len(t)), k)])
        assert got[(u, d)] == pytest.approx(want, abs=1e-9)


def test_tables_json_is_strict_json(experiment):
    text = (experiment / "report" / "tables.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_group_sentence_claims_nothing_from_one_group():
    """A sparse log can leave one group with a GAUC for both models (issue 13): "the gain grows with history
    length" was then vacuously true, and "every group" skipped the groups without a value."""
    from twinv2.report.groups import group_summary_sentence

    def hg(*gains):
        return {"name_a": "TWIN-V2", "name_b": "TWIN",
                "rows": [{"group": g, "gain": {"mean_diff": x}} for g, x in zip(("low", "medium", "high"), gains)]}

    one = group_summary_sentence(hg(float("nan"), float("nan"), 0.01))
    assert "grows" not in one.replace("Whether the gain grows", "") and "only the high group" in one
    two = group_summary_sentence(hg(float("nan"), 0.01, 0.02))
    assert "grows with history length and is positive in every group with a GAUC for both (low: none)" in two
    three = group_summary_sentence(hg(0.01, -0.01, 0.02))
    assert three.endswith("does not grow with history length and is not positive in every group.")
