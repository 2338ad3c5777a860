from __future__ import annotations

import numpy as np
import pytest

from twinv2.train.features import (CROSS, CROSS_BUCKETS, CROSS_SPECS, DURATION, INHERENT, N_AGE, N_NUMERIC,
                                   N_PLAY, N_RATIO, USER, Features, FeatureSpec, UserTable, age_bucket,
                                   duration_bucket, numeric_bucket, play_bucket, ratio_bucket,
                                   register_cross_feature, unregister_cross_feature)


def test_play_buckets_edges():
    got = play_bucket(np.array([-1, 0, 999, 1000, 1999, 2000, 4000, 1e12, np.nan]))
    assert got.tolist() == [0, 1, 1, 2, 2, 3, 4, N_PLAY - 1, 0]


def test_ratio_buckets_edges():
    got = ratio_bucket(np.array([np.nan, 0.0, 0.0999, 0.1, 0.8, 1.0, 1.99, 2.0, 50.0, -0.1]))
    assert got.tolist() == [0, 1, 1, 2, 9, 11, 20, 21, 21, 0]
    assert got.max() < N_RATIO


def test_age_buckets_never_use_the_future():
    t = 10**12
    got = age_bucket(np.full(6, t), np.array([t, t + 5, t - 1, t - 3_600_000, t - 7_200_000, t - 10**13]))
    assert got.tolist() == [0, 0, 1, 2, 3, N_AGE - 1]


def test_duration_zero_is_unknown():
    assert duration_bucket(np.array([0, 500, 30_000])).tolist() == [0, 1, 6]


# ---- the feature contract -----------------------------------------------------------------------------------
def test_the_builtin_specs_are_the_models_columns_and_buckets():
    assert [s.name for s in CROSS_SPECS] == ["play", "ratio", "age"]
    assert CROSS_BUCKETS == [s.buckets for s in CROSS_SPECS] == [N_PLAY, N_RATIO, N_AGE]
    assert {s.kind for s in CROSS_SPECS} == {CROSS} and DURATION.kind == INHERENT
    f = Features.of("recent", extra_columns=["liked", "stay_ms"], user_columns=["activity"])
    assert [s.name for s in f.cross] == ["play", "ratio", "age", "liked", "stay_ms"]
    assert f.cross_buckets == [N_PLAY, N_RATIO, N_AGE, N_NUMERIC, N_NUMERIC] and f.user_buckets == [N_NUMERIC]
    assert [s.name for s in Features.of("clusters", extra_columns=["liked"]).cross] == ["play", "ratio", "age"]
    with pytest.raises(ValueError, match="'stream'"):
        Features.of("stream")


def test_numeric_buckets_and_bad_specs():
    got = numeric_bucket(np.array([np.nan, -1.0, 0.0, 0.5, 1.0, 1.9, 2.0, 3.0, 1e12]))
    assert got.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, N_NUMERIC - 1]
    with pytest.raises(ValueError, match="kind must be"):
        FeatureSpec("x", "crosss", "ts", 4, numeric_bucket)
    with pytest.raises(ValueError, match="buckets must be >= 2"):
        FeatureSpec("x", CROSS, "ts", 1, numeric_bucket)
    with pytest.raises(ValueError, match="already registered"):
        register_cross_feature(FeatureSpec("play", CROSS, "play_ms", 4, numeric_bucket))
    with pytest.raises(ValueError, match="not 'cross'"):
        register_cross_feature(FeatureSpec("activity", USER, "activity", 4, numeric_bucket))


def test_user_table_looks_up_buckets_by_user_and_zeros_for_unknown_users():
    import pandas as pd

    users = pd.DataFrame({"user_id": [30, 10, 20], "activity": [4.0, 0.0, np.nan], "fans": [1.0, 1000.0, 3.0]})
    specs = Features.of("recent", user_columns=["activity", "fans"]).user
    t = UserTable(users, specs)
    got = t.lookup(np.array([10, 20, 30, 99, -5, 10]))
    assert got.tolist() == [[1, 11], [0, 3], [4, 2], [0, 0], [0, 0], [1, 11]]
    with pytest.raises(ValueError, match=r"\['nope'\]"):
        UserTable(users, Features.of("recent", user_columns=["nope"]).user)


# ---- adding a cross feature is adding a spec --------------------------------------------------------------
HOUR = FeatureSpec("hour", CROSS, "ts", 25, lambda ts: np.where(  # the hour of day of a behaviour / cluster
    np.isfinite(ts), (np.nan_to_num(ts) // 3_600_000) % 24 + 1, 0).astype(np.int64))


@pytest.fixture
def hour_feature():
    register_cross_feature(HOUR)
    try:
        yield HOUR
    finally:
        unregister_cross_feature(HOUR.name)
    assert CROSS_BUCKETS == [N_PLAY, N_RATIO, N_AGE]


def test_an_added_cross_spec_changes_training_and_serving(tiny_world, tiny_snapshot, hour_feature, tmp_path):
    import torch

    from twinv2.data.storage import Dataset
    from twinv2.offline.store import ClusterSnapshot
    from twinv2.serve.projections import ProjectionCache
    from twinv2.serve.scorer import Scorer, cluster_inputs
    from twinv2.serve.store import ClusterStore
    from twinv2.train.batching import Batcher
    from twinv2.train.checkpoint import save_checkpoint
    from twinv2.train.trainer import StreamingTrainer, TrainConfig

    ds = Dataset(tiny_world)
    snap = ClusterSnapshot(tiny_snapshot)
    day = ds.eval_days[0]
    t = StreamingTrainer(ds, TrainConfig(model="twin_v2", batch_size=64), [snap], progress=False)
    assert t.model.cross_buckets == [N_PLAY, N_RATIO, N_AGE, 25] and t.model.attn.n_cross == 4
    t.batcher.use_snapshot(snap, day)
    s = ds.samples()
    s = s[(s.ts >= day.start_ms) & (s.ts < day.test_start_ms)].iloc[:128]
    t.train_day(s, "hour")  # trains through the added column

    # training and evaluation: the batch carries the new column, and the model reads it
    b = t.batcher.batch(s.user_id.values[:29], s.item_id.values[:29], s.ts.values[:29], s.label.values[:29])
    assert b.seq.cross.shape[-1] == 4
    m = b.seq.mask
    c = snap.clusters(int(s.user_id.values[0]))
    assert sorted(b.seq.cross[0, :, 3][m[0]].tolist()) == sorted(HOUR.bucket(c["ts"]).tolist())
    assert not b.seq.cross[..., 3][~m].any()
    t.model.eval()
    with torch.no_grad():
        out = t.model(b)
        b.seq.cross[..., 3] = torch.where(m, 1, 0)
        blind = t.model(b)
    assert (out - blind).abs().max() > 1e-4

    # serving: the store's clusters get the same column, and the served scores equal the offline forward
    store = ClusterStore(tmp_path / "store")
    store.load_snapshot(tiny_snapshot)
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, t.model, t.cfg, t.vocab, {"day": 0})
    scorer = Scorer(ProjectionCache(ckpt), store)
    mv = scorer.cache.current
    u = int(s.user_id.values[0])
    ts = day.start_ms + 5 * 3_600_000 + 17
    inp = cluster_inputs(store.get(u), ts, mv.vocab, mv.seq_len)
    assert inp.cross.shape == (store.get(u).size, 4)
    assert sorted(inp.cross[:, 3].tolist()) == sorted(HOUR.bucket(c["ts"]).tolist())
    items = s.item_id.values[:23]
    online = scorer.score(u, items, ts).logits
    offline = Batcher(ds, t.vocab, "clusters", t.model.seq_len)
    offline.use_snapshot(snap, day)
    ob = offline.batch(np.full(len(items), u), items, np.full(len(items), ts), np.zeros(len(items)))
    with torch.no_grad():
        want = t.model(ob).numpy()
        ob.seq.cross[..., 3] = torch.where(ob.seq.mask, 1, 0)
        blind = t.model(ob).numpy()
    assert np.abs(online - want).max() <= 1e-5
    assert np.abs(online - blind).max() > 1e-4
