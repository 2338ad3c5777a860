"""KuaiRand imports from the real files in ../shared/data/kuairand, checked against plain pandas references."""

from __future__ import annotations

import calendar
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twinv2.data.importers import import_kuairand
from twinv2.data.importers.kuairand import ACTIVITY_CODES, LOG_1K, LOG_27K, VIDEO_FEATURES
from twinv2.data.storage import DAY_MS, Dataset, shard_of

BJ = 8 * 3_600_000
KUAIRAND = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kuairand"


def beijing_midnight(y: int, m: int, d: int) -> int:
    return calendar.timegm((y, m, d, 0, 0, 0)) * 1000 - BJ


def all_behaviours(ds: Dataset) -> pd.DataFrame:
    return pd.concat([ds.behaviours_frame(s).assign(shard=s) for s in range(ds.n_shards)], ignore_index=True)


def keyset(df: pd.DataFrame, cols=("user_id", "item_id", "ts")) -> set:
    return set(map(tuple, df[list(cols)].to_numpy().tolist()))


@pytest.fixture(scope="module")
def k27(tmp_path_factory) -> tuple[Dataset, pd.DataFrame]:
    """The 27K import, done once for this module (the files are read in place from ../shared)."""
    if not (KUAIRAND / LOG_27K).exists():
        pytest.skip(f"KuaiRand files not found at {KUAIRAND} (the repo's sibling folder shared/)")
    root = import_kuairand(KUAIRAND, tmp_path_factory.mktemp("k27") / "ds", layout="27k", n_shards=3)
    return Dataset(root), pd.read_csv(KUAIRAND / LOG_27K, sep="\t")


def test_27k_matches_pandas_reference(k27):
    ds, raw = k27
    ref = raw.drop_duplicates(["user_id", "video_id", "time_ms"]).drop(columns="label").rename(
        columns={"video_id": "item_id", "time_ms": "ts"})
    day = (ref["ts"] + BJ) // DAY_MS
    ref_s = ref[day >= day.max() - 4]
    ref_b = ref[ref["is_click"] == 1]
    s, b = ds.samples(), all_behaviours(ds)
    assert len(s) == len(ref_s) == ds.manifest["counts"]["samples"]
    assert len(b) == len(ref_b) == ds.manifest["counts"]["behaviours"]
    assert keyset(s) == keyset(ref_s) and keyset(b) == keyset(ref_b)
    merged = s.merge(ref_s, on=["user_id", "item_id", "ts"])
    assert (merged["label"] == merged["is_click"]).all()
    assert (b.merge(ref_b, on=["user_id", "item_id", "ts"]).eval("play_ms == play_time_ms")).all()


def test_27k_eval_days_are_beijing_days(k27):
    ds, _ = k27
    assert [d.label for d in ds.eval_days] == [f"2022-04-{d}" for d in range(17, 22)]
    assert [d.start_ms for d in ds.eval_days] == [beijing_midnight(2022, 4, d) for d in range(17, 22)]
    s = ds.samples()
    assert s["ts"].min() >= ds.eval_days[0].start_ms and s["ts"].max() < ds.eval_days[-1].end_ms


def test_27k_accounting_and_quarantine(k27):
    ds, raw = k27
    log = ds.manifest["inputs"][0]
    assert log["rows_in"] == len(raw)
    assert log["rows_in"] == log["rows_stored"] + log["rows_quarantined"] + log["rows_unused"]
    assert log["rows_quarantined"] == raw.duplicated(["user_id", "video_id", "time_ms"]).sum() > 0
    q = pd.read_csv(ds.root / "quarantine.csv")
    assert len(q) == log["rows_quarantined"] and q["reason"].str.startswith("duplicate").all()
    day = (raw["time_ms"] + BJ) // DAY_MS
    unused_ref = ((raw["is_click"] == 0) & (day < day.max() - 4)).sum()  # no duplicate is an unclicked early row
    assert log["rows_unused"] == unused_ref - raw[raw.duplicated(["user_id", "video_id", "time_ms"])].pipe(
        lambda d: ((d["is_click"] == 0) & ((d["time_ms"] + BJ) // DAY_MS < day.max() - 4)).sum())


def test_27k_users_shards_sorted_and_strict_history(k27):
    ds, _ = k27
    users = ds.users()
    s, b = ds.samples(), all_behaviours(ds)
    assert set(s["user_id"]) <= set(users["user_id"])  # no sample without its user
    assert set(users["user_id"]) == set(s["user_id"]) | set(b["user_id"])
    assert users["user_active_degree"].dropna().isin(list(ACTIVITY_CODES.values())).all()
    assert (shard_of(b["user_id"].to_numpy(), ds.n_shards) == b["shard"].to_numpy()).all()
    for shard in range(ds.n_shards):
        part = ds.behaviours_frame(shard)
        assert part.equals(part.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True))
        smp = pd.read_parquet(ds.shard_path("samples", shard))
        assert (shard_of(smp["user_id"].to_numpy(), ds.n_shards) == shard).all()
    row = s.iloc[len(s) // 2]
    hist = ds.history(int(row["user_id"]), int(row["ts"]))
    assert len(hist["ts"]) > 0 and (hist["ts"] < row["ts"]).all()


def test_27k_items_joined_where_ids_match(k27):
    ds, raw = k27
    feats = pd.read_csv(KUAIRAND / VIDEO_FEATURES)
    items = ds.items().set_index("item_id")
    known = items.index.isin(feats["video_id"])
    assert 0 < known.sum() < len(items)
    f = feats.set_index("video_id").loc[items.index[known]]
    assert (items.loc[known, "author_id"].to_numpy() == f["author_id"].to_numpy()).all()
    tags = f["tag"].fillna("-1").astype(str).str.split(",").str[0].astype(int)
    assert (items.loc[known, "tag"].to_numpy() == tags.to_numpy()).all()
    unknown = items[~known]
    assert (unknown["author_id"] == -1).all() and (unknown["tag"] == -1).all()
    obs = raw[raw["duration_ms"] > 0].groupby("video_id")["duration_ms"].median().round()
    expect = unknown.index.map(obs).fillna(0).astype(int)
    assert (unknown["duration_ms"].to_numpy() == expect.to_numpy()).all()
    m = ds.manifest["item_features_match"]
    assert m["matched"] == known.sum() and m["item_match_rate"] == pytest.approx(known.mean())


def test_1k_rules(kuairand_dir, tmp_path):
    ds = Dataset(import_kuairand(kuairand_dir, tmp_path / "k1", layout="1k", n_shards=2))
    raw = pd.read_csv(kuairand_dir / LOG_1K)
    n_u = raw.groupby("user_id").size()
    s, b = ds.samples(), all_behaviours(ds)
    assert len(s) == int(np.maximum(1, n_u // 2).sum())
    assert len(b) == int(raw["is_click"].sum())
    day0 = beijing_midnight(2022, 4, 22)
    assert [(d.label, d.start_ms) for d in ds.eval_days] == [("2022-04-22", day0)]
    assert s["ts"].between(day0, day0 + DAY_MS - 1).all() and b["ts"].between(day0, day0 + DAY_MS - 1).all()
    # The busiest user's samples are its last rows in file order, with labels = is_click.
    u = int(n_u.idxmax())
    mine = raw[raw["user_id"] == u]
    got = s[s["user_id"] == u].sort_values("ts")
    assert got["item_id"].tolist() == mine["video_id"].tolist()[-(len(mine) // 2):]
    assert got["label"].tolist() == mine["is_click"].tolist()[-(len(mine) // 2):]
    assert "tab" in s.columns and ds.manifest["sample_features"] == ["tab"]
    log = ds.manifest["inputs"][0]
    assert log["rows_in"] == len(raw) == log["rows_stored"] + log["rows_quarantined"] + log["rows_unused"]
    assert set(s["user_id"]) <= set(ds.users()["user_id"])
