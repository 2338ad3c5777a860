"""Retrieval diagnostics against answers built by hand from the tiny world's truth."""

from __future__ import annotations

import numpy as np
import pytest

from twinv2.data.storage import Dataset
from twinv2.train.retrieval import impression_sources, retrieval_diagnostics


@pytest.fixture(scope="module")
def world(tiny_world):
    ds = Dataset(tiny_world)
    day = ds.eval_days[0]
    s = ds.samples()
    test = s[(s.ts >= day.test_start_ms) & (s.ts < day.end_ms)].reset_index(drop=True)
    topic = np.load(tiny_world / "truth" / "item_topic.npy")
    return ds, test, topic


def test_history_lengths_equal_a_per_sample_count(world):
    ds, test, _ = world
    got = ds.history_lengths(test.user_id.to_numpy(), test.ts.to_numpy())
    for u, t, n in list(zip(test.user_id, test.ts, got))[:40]:
        h = ds.history(int(u), int(t))
        assert len(h["ts"]) == n and (len(h["ts"]) == 0 or h["ts"].max() < t)


def test_diagnostics_on_hand_built_picks(world):
    ds, test, topic = world
    K = 7
    ids = np.arange(1, len(topic) + 1)
    rng = np.random.default_rng(3)
    kept = np.full((len(test), K), -1, np.int64)
    want_share = np.zeros(len(test))
    for i, item in enumerate(test.item_id.to_numpy()):
        t = topic[item - 1]
        same = ids[topic == t]
        other = ids[topic != t]
        n_same = i % 4  # 0..3 on-topic picks, 4 others, the rest nothing kept
        kept[i, :n_same] = rng.choice(same, n_same)
        kept[i, n_same:n_same + 4] = rng.choice(other, 4)
        want_share[i] = n_same / (n_same + 4)
    src = impression_sources(ds, test)
    assert set(np.unique(src)) <= {0, 1, 2, 3}  # every test sample found in the truth
    out = retrieval_diagnostics(ds, test, kept)
    groups = {(g["interest"], g["history"]): g for g in out["groups"]}
    for code, name in [(0, "current"), (1, "dormant")]:
        sel = src == code
        g = groups[(name, "all")]
        assert g["n"] == sel.sum() > 0
        assert g["share"] == pytest.approx(want_share[sel].mean())
        assert g["hit"] == pytest.approx((np.arange(len(test))[sel] % 4 > 0).mean())
    assert groups[("all", "all")]["n"] == np.isin(src, [0, 1]).sum() == out["n_interest_samples"]
    terc = sum(groups[("all", h)]["n"] for h in ("short", "medium", "long"))
    assert terc == groups[("all", "all")]["n"]


def test_mismatched_lengths_are_refused(world):
    ds, test, _ = world
    with pytest.raises(ValueError, match="samples but"):
        retrieval_diagnostics(ds, test, np.zeros((len(test) + 1, 3), np.int64))
