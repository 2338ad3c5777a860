"""The generated world end to end, on the `tiny` preset: bytes, layout, time windows, labels, the far-past knob.

Worlds are generated once per session (in-process and with two worker processes) and shared by the tests.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twinv2.config import from_dict
from twinv2.data.generate import WorldConfig, generate_world, preset
from twinv2.data.generate.streams import TERMS, Calibration, click_logit
from twinv2.data.generate.users import KINDS
from twinv2.data.checksum import MARKER
from twinv2.data.storage import DAY_MS, HOUR_MS, Dataset, shard_of
from twinv2.schema import completion_ratio


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (the verified-marker, a cache of stat results, aside)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MARKER}


@pytest.fixture(scope="session")
def worlds(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("worlds")
    cfg = preset("tiny")
    return {
        "w1": generate_world(cfg, base / "w1", workers=1, progress=False),
        "w2": generate_world(cfg, base / "w2", workers=2, progress=False),
        "seed7": generate_world(preset("tiny", seed=7), base / "seed7", workers=1, progress=False),
        "nofar": generate_world(preset("tiny", far_past_signal=0.0), base / "nofar", workers=1, progress=False),
    }


@pytest.fixture(scope="session")
def tiny(worlds) -> Dataset:
    return Dataset(worlds["w1"])


def _all(ds: Dataset, table: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(ds.shard_path(table, s)) for s in range(ds.n_shards)], ignore_index=True)


def _impressions(root: Path) -> pd.DataFrame:
    """truth/impressions joined row by row to samples/ (both are per shard in (user_id, ts) order)."""
    parts = []
    for s in range(json.loads((root / "manifest.json").read_text())["n_shards"]):
        smp = pd.read_parquet(root / "samples" / f"part-{s:05d}.parquet")
        imp = pd.read_parquet(root / "truth" / "impressions" / f"part-{s:05d}.parquet")
        assert (smp["ts"].to_numpy() == imp["ts"].to_numpy()).all()
        parts.append(pd.concat([smp, imp.drop(columns=["user_id", "ts", "item_id"])], axis=1))
    return pd.concat(parts, ignore_index=True)


# ---- bytes ------------------------------------------------------------------------------------------------

def test_same_seed_same_bytes_across_runs_and_worker_counts(worlds):
    a, b = _digest(worlds["w1"]), _digest(worlds["w2"])
    assert len(a) > 20 and a == b


def test_other_seed_other_bytes(worlds):
    a, b = _digest(worlds["w1"]), _digest(worlds["seed7"])
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k] != b[k]]
    assert all(f"behaviours/part-{s:05d}.parquet" in differ for s in range(4))
    assert "items.parquet" in differ and "samples/part-00000.parquet" in differ


def test_refuses_to_overwrite_without_flag(worlds, tmp_path):
    with pytest.raises(FileExistsError):
        generate_world(preset("tiny"), worlds["w1"], progress=False)
    with pytest.raises(ValueError, match="workers"):
        generate_world(preset("tiny"), tmp_path / "x", workers=0, progress=False)


# ---- layout -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("table", ["behaviours", "samples"])
def test_shards_sorted_and_every_user_in_its_shard(tiny, table):
    seen = set()
    for s in range(tiny.n_shards):
        df = pd.read_parquet(tiny.shard_path(table, s))
        assert len(df) > 0
        uid, ts = df["user_id"].to_numpy(), df["ts"].to_numpy()
        order = np.lexsort((ts, uid))
        assert (order == np.arange(len(df))).all(), f"{table} shard {s} not sorted by (user_id, ts)"
        assert (shard_of(uid, tiny.n_shards) == s).all()
        users = set(np.unique(uid).tolist())
        assert not users & seen
        seen |= users


def test_manifest_counts_and_users_table_match_the_files(tiny):
    m, cfg = tiny.manifest, preset("tiny")
    beh, smp = _all(tiny, "behaviours"), _all(tiny, "samples")
    assert m["counts"] == {"users": cfg.n_users, "items": cfg.n_items, "behaviours": len(beh), "samples": len(smp)}
    assert m["source"] == "generated" and m["cross_features"] == [] and m["seed"] == 0
    assert from_dict(WorldConfig, m["config"]) == preset("tiny")
    users = tiny.users()
    assert users["user_id"].tolist() == list(range(cfg.n_users))
    per_user = beh.groupby("user_id").size().reindex(users["user_id"], fill_value=0).to_numpy()
    assert (per_user == users["life_length"].to_numpy()).all()
    items = tiny.items()
    assert items["item_id"].tolist() == list(range(1, cfg.n_items + 1))
    assert beh["item_id"].between(1, cfg.n_items).all() and smp["item_id"].between(1, cfg.n_items).all()
    # Behaviour durations are the item's, except the rows stored as unknown (0).
    dur = items.set_index("item_id")["duration_ms"].reindex(beh["item_id"]).to_numpy()
    known = beh["duration_ms"].to_numpy() > 0
    assert (beh["duration_ms"].to_numpy()[known] == dur[known]).all()


def test_samples_fall_in_eval_days_and_every_test_hour_has_samples(tiny):
    days = tiny.eval_days
    assert len(days) == 5 and all(d.start_ms % DAY_MS == 0 for d in days)  # midnight UTC
    assert days[0].label == "2024-04-08"
    smp, beh = _all(tiny, "samples"), _all(tiny, "behaviours")
    ts = smp["ts"].to_numpy()
    assert ts.min() >= days[0].start_ms and ts.max() < days[-1].end_ms
    for d in days:
        in_test = (ts >= d.test_start_ms) & (ts < d.end_ms)
        assert in_test.sum() >= 5, f"day {d.label}: {in_test.sum()} samples in hour 23"
        assert ((ts >= d.start_ms) & (ts < d.start_ms + 12 * HOUR_MS)).sum() > in_test.sum()
    # Behaviours continue through the evaluation days and span years before them.
    bts = beh["ts"].to_numpy()
    assert bts.max() < days[-1].end_ms and ((bts >= days[0].start_ms)).sum() > 100
    assert bts.min() < days[0].start_ms - 2 * 365 * DAY_MS


# ---- labels and the click model ---------------------------------------------------------------------------

def test_p_true_in_unit_interval_and_labels_drawn_from_it(tiny):
    smp = _all(tiny, "samples")
    p = smp["p_true"].to_numpy(np.float64)
    assert smp["p_true"].dtype == np.float32 and ((p > 0) & (p < 1)).all()
    n = len(p)
    assert abs(smp["label"].mean() - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / n
    assert abs(p.mean() - preset("tiny").target_ctr) < 0.08
    assert p.std() > 0.1  # labels carry signal, not a coin flip


@pytest.mark.parametrize("world", ["w1", "nofar"])
def test_stored_p_true_is_the_documented_function_of_the_truth_terms(worlds, world):
    root = worlds[world]
    m = json.loads((root / "manifest.json").read_text())
    cfg = from_dict(WorldConfig, m["config"])
    cal = Calibration(**json.loads((root / "truth" / "calibration.json").read_text()))
    df = _impressions(root)
    terms = {k: df[k].to_numpy(np.float64) for k in TERMS}
    p = 1 / (1 + np.exp(-click_logit(terms, cfg, cal.bias)))
    np.testing.assert_allclose(p, df["p_true"].to_numpy(np.float64), atol=2e-6)


def test_far_past_signal_zero_makes_p_true_ignore_far_interests(worlds):
    df = _impressions(worlds["nofar"])
    terms = {k: df[k].to_numpy(np.float64) for k in TERMS}
    cfg0, cfg1 = preset("tiny", far_past_signal=0.0), preset("tiny", far_past_signal=0.5)
    rng = np.random.default_rng(0)
    scrambled = {**terms, "a_far": rng.permutation(terms["a_far"]), "fav_far": 1 - terms["fav_far"]}
    np.testing.assert_array_equal(click_logit(terms, cfg0, -1.0), click_logit(scrambled, cfg0, -1.0))
    assert not np.allclose(click_logit(terms, cfg1, -1.0), click_logit(scrambled, cfg1, -1.0))
    # In the world itself: what is left of the logit after the current terms is the bias alone with the knob
    # at 0, and grows with a_far with the knob on.
    assert _far_residual(worlds["nofar"]).std() < 1e-3
    on = _far_residual(worlds["w1"])
    assert on.std() > 0.1 and np.corrcoef(on, _impressions(worlds["w1"])["a_far"])[0, 1] > 0.9


def _far_residual(root: Path) -> np.ndarray:
    """logit(p_true) minus every term that is not about far-past interests."""
    cfg = from_dict(WorldConfig, json.loads((root / "manifest.json").read_text())["config"])
    df = _impressions(root)
    p = df["p_true"].to_numpy(np.float64)
    logit = np.log(p / (1 - p))
    return logit - (cfg.w_current * df["a_cur"] + cfg.w_author * df["fav_cur"] + cfg.w_popularity * df["pop"]
                    + cfg.w_recency * df["rec"]).to_numpy(np.float64)


def test_far_past_signal_on_makes_dormant_interests_pull(worlds):
    df = _impressions(worlds["w1"])
    dorm = df[df["source"] == 1]
    rand = df[df["source"] == 3]
    # Dormant-interest candidates are close to a far interest, and clicked more than random ones.
    assert dorm["a_far"].mean() > rand["a_far"].mean() + 0.2
    assert dorm["p_true"].mean() > rand["p_true"].mean()
    assert np.corrcoef(dorm["a_far"], dorm["p_true"])[0, 1] > 0.2
    cur = df[df["source"] == 0]
    assert cur["p_true"].mean() > dorm["p_true"].mean()  # an active interest pulls harder (w_far x 0.5)


# ---- distributions ----------------------------------------------------------------------------------------

def test_completion_ratio_resembles_kuairand(tiny):
    beh = _all(tiny, "behaviours")
    r = completion_ratio(beh["play_ms"].to_numpy(), beh["duration_ms"].to_numpy())
    ok = ~np.isnan(r)
    assert 0.005 < 1 - ok.mean() < 0.03  # unknown_duration_share = 1.5%: NaN rows exist, kept
    q = np.quantile(r[ok], [0.05, 0.25, 0.5, 0.75, 0.95])
    assert 0.65 <= q[2] <= 0.95, q
    assert 0.15 <= (r[ok] > 1).mean() <= 0.45
    assert q[0] < 0.1 and 0.1 < q[1] < 0.4 and 1.0 < q[3] < 1.3 and 1.8 < q[4] < 3.0, q


def test_completion_ratio_follows_affinity(tiny):
    """Behaviours on the user's interest topics are watched longer than exploration outside them."""
    beh = _all(tiny, "behaviours")
    topic = np.load(tiny.root / "truth" / "item_topic.npy")
    ints = pd.concat([pd.read_parquet(p) for p in sorted((tiny.root / "truth" / "interests").glob("*.parquet"))])
    mine = set(zip(ints["user_id"], ints["topic"]))
    t = topic[beh["item_id"].to_numpy() - 1]
    inside = np.fromiter((k in mine for k in zip(beh["user_id"].to_numpy(), t)), bool, len(beh))
    r = completion_ratio(beh["play_ms"].to_numpy(), beh["duration_ms"].to_numpy())
    assert 0.02 < (~inside).mean() < 0.2  # the exploration share (10%, some of it lands on own topics)
    assert np.nanmedian(r[inside]) > np.nanmedian(r[~inside]) + 0.2


def test_life_lengths_heavy_tailed_within_bounds(tiny):
    users = tiny.users()
    cfg = preset("tiny")
    n = users["life_length"].to_numpy()
    assert n.max() <= cfg.length_max and n.min() >= cfg.length_min
    assert n.mean() > 1.2 * np.median(n)
    lvl = users["activity"].to_numpy()
    assert set(lvl.tolist()) == {0, 1, 2}
    assert n[lvl == 0].max() <= n[lvl == 1].min() and n[lvl == 1].max() <= n[lvl == 2].min()


def test_truth_behaviours_name_the_interest_that_drew_each_behaviour(tiny):
    beh = _all(tiny, "behaviours")
    who = _all(tiny, "truth/behaviours")
    assert (who["user_id"].to_numpy() == beh["user_id"].to_numpy()).all()  # row-aligned with behaviours/
    assert abs((who["interest"] == -1).mean() - preset("tiny").explore) < 0.01  # exploration rows
    ints = pd.concat([pd.read_parquet(p) for p in sorted((tiny.root / "truth" / "interests").glob("*.parquet"))])
    ints = ints.assign(k=ints.groupby("user_id").cumcount())
    topic = np.load(tiny.root / "truth" / "item_topic.npy")
    drawn = who.assign(topic=topic[beh["item_id"].to_numpy() - 1])[who["interest"] >= 0]
    joined = drawn.merge(ints[["user_id", "k", "topic"]], left_on=["user_id", "interest"], right_on=["user_id", "k"],
                         suffixes=("", "_interest"))
    assert len(joined) == len(drawn) and (joined["topic"] == joined["topic_interest"]).all()


def test_interest_kinds_all_present(tiny):
    ints = pd.concat([pd.read_parquet(p) for p in sorted((tiny.root / "truth" / "interests").glob("*.parquet"))])
    assert set(ints["kind"].unique().tolist()) == set(range(len(KINDS)))
    assert (ints.groupby("user_id")["topic"].nunique() == ints.groupby("user_id").size()).all()


def test_shards_without_users_still_get_every_file(tmp_path):
    root = generate_world(preset("tiny", n_users=3, n_shards=8), tmp_path / "few", workers=1, progress=False)
    ds = Dataset(root)
    for table in ("behaviours", "samples", "truth/interests", "truth/impressions", "truth/behaviours"):
        parts = sorted(p.name for p in (root / table).glob("*.parquet"))
        assert parts == [f"part-{s:05d}.parquet" for s in range(8)], table
    assert len(_all(ds, "behaviours")) == ds.manifest["counts"]["behaviours"] == ds.users()["life_length"].sum()
