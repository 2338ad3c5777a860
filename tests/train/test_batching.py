"""No sample sees a behaviour or a cluster from its future; batches match a plain per-sample reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from twinv2.data.storage import Dataset
from twinv2.offline.store import ClusterSnapshot
from twinv2.train.batching import Batcher
from twinv2.train.trainer import item_tables


def _samples(ds, n=97, seed=0):
    s = ds.samples()
    return s.iloc[np.sort(np.random.default_rng(seed).choice(len(s), n, replace=False))]


@pytest.mark.parametrize("L", [5, 300])
def test_recent_sequence_is_the_latest_before_the_sample(tiny_world, L):
    ds = Dataset(tiny_world)
    vocab, _ = item_tables(ds)
    s = _samples(ds)
    b = Batcher(ds, vocab, "recent", L).batch(s.user_id.values, s.item_id.values, s.ts.values, s.label.values)
    for i, (u, t) in enumerate(zip(s.user_id.values, s.ts.values)):
        h = ds.history(int(u))
        past = h["item_id"][h["ts"] < t][-L:]  # reference: plain filter, latest L
        got = b.seq.rows[i][b.seq.mask[i]].numpy()
        np.testing.assert_array_equal(got, vocab.rows(past))
        assert not b.seq.rows[i][~b.seq.mask[i]].any()  # padding is row 0
    assert b.seq.length <= L


def test_cluster_sequence_uses_only_the_snapshot_before_the_day(tiny_world, tiny_snapshot):
    ds = Dataset(tiny_world)
    vocab, _ = item_tables(ds)
    snap = ClusterSnapshot(tiny_snapshot)
    day0 = ds.eval_days[0]
    assert snap.snapshot_ts <= day0.start_ms
    s = _samples(ds)
    batcher = Batcher(ds, vocab, "clusters", 10_000)
    batcher.use_snapshot(snap, day0)
    b = batcher.batch(s.user_id.values, s.item_id.values, s.ts.values, s.label.values)
    for i, u in enumerate(s.user_id.values):
        c = snap.clusters(int(u))
        assert (c["ts"] < snap.snapshot_ts).all()  # every cluster's mean time is before the snapshot
        np.testing.assert_array_equal(np.sort(b.seq.rows[i][b.seq.mask[i]].numpy()), np.sort(vocab.rows(c["item_id"])))
        np.testing.assert_allclose(np.sort(b.seq.log_n[i][b.seq.mask[i]].numpy()), np.sort(np.log(c["n"])), rtol=1e-6)


def test_a_clusters_batch_carries_the_latest_raw_behaviours_for_the_short_term(tiny_world, tiny_snapshot):
    """Batch.recent of a clusters batcher = a recent batcher's sequence of length S for the same samples
    (behaviours strictly before each sample, raw cross buckets), and serving's recent_seq builds the same row."""
    from twinv2.train.batching import recent_seq

    ds = Dataset(tiny_world)
    vocab, _ = item_tables(ds)
    s = _samples(ds, seed=4)
    S = 6
    batcher = Batcher(ds, vocab, "clusters", 50, recent_len=S)
    batcher.use_snapshot(ClusterSnapshot(tiny_snapshot), ds.eval_days[0])
    got = batcher.batch(s.user_id.values, s.item_id.values, s.ts.values, s.label.values).recent
    ref = Batcher(ds, vocab, "recent", S).batch(s.user_id.values, s.item_id.values, s.ts.values, s.label.values).seq
    for name in ("rows", "cross", "mask"):
        np.testing.assert_array_equal(getattr(got, name).numpy(), getattr(ref, name).numpy())
    assert got.log_n is None and got.mask.any()
    assert Batcher(ds, vocab, "recent", 50, recent_len=S).batch(s.user_id.values[:3], s.item_id.values[:3],
                                                              s.ts.values[:3], s.label.values[:3]).recent is None
    for i in range(0, len(s), 9):  # one user at a time, from the raw columns a real-time service would send
        u, t = int(s.user_id.values[i]), int(s.ts.values[i])
        h = ds.history(u)
        cols = {k: np.asarray(h[k])[-(S + 20):].astype(np.int64) for k in ("item_id", "ts", "play_ms", "duration_ms")}
        one = recent_seq(cols, t, vocab, batcher.features.cross, S)
        n = int(ref.mask[i].sum())
        np.testing.assert_array_equal(one.rows[0, one.mask[0]].numpy(), ref.rows[i, ref.mask[i]].numpy())
        np.testing.assert_array_equal(one.cross[0, one.mask[0]].numpy(), ref.cross[i, ref.mask[i]].numpy())
        assert int(one.mask.sum()) == n
    with pytest.raises(ValueError, match="time order"):
        recent_seq({"item_id": np.array([1, 2]), "ts": np.array([5, 3]), "play_ms": np.array([1, 1]),
                    "duration_ms": np.array([2, 2])}, 10, vocab, batcher.features.cross, S)


def test_a_snapshot_from_inside_the_day_is_refused(tiny_world, tiny_snapshot):
    ds = Dataset(tiny_world)
    vocab, _ = item_tables(ds)
    snap = ClusterSnapshot(tiny_snapshot)
    late = dataclasses.replace(ds.eval_days[0], start_ms=snap.snapshot_ts - 1)
    with pytest.raises(ValueError, match="would leak"):
        Batcher(ds, vocab, "clusters", 100).use_snapshot(snap, late)


def test_age_features_are_positive_ages(tiny_world):
    ds = Dataset(tiny_world)
    vocab, _ = item_tables(ds)
    s = _samples(ds, seed=3)
    b = Batcher(ds, vocab, "recent", 50).batch(s.user_id.values, s.item_id.values, s.ts.values, s.label.values)
    age = b.seq.cross[..., 2]
    assert (age[b.seq.mask] > 0).all() and (age[~b.seq.mask] == 0).all()


@pytest.fixture(scope="module")
def world_with_features(tiny_world, tmp_path_factory):
    """A copy of the tiny world whose log has an extra behaviour column and declares a user feature, as an
    imported log (KuaiRand's) does."""
    import json
    import shutil

    import pandas as pd

    root = tmp_path_factory.mktemp("featured") / "tiny"
    root.mkdir()
    for name in ("items.parquet", "users.parquet", "samples"):
        (shutil.copytree if (tiny_world / name).is_dir() else shutil.copy)(tiny_world / name, root / name)
    (root / "behaviours").mkdir()
    for p in sorted((tiny_world / "behaviours").glob("part-*.parquet")):
        df = pd.read_parquet(p)
        df["liked"] = (df["item_id"] % 3 == 0).astype("float32")  # a 0/1 flag on each behaviour
        df.to_parquet(root / "behaviours" / p.name, index=False)
    m = json.loads((tiny_world / "manifest.json").read_text())
    from twinv2.data.storage import write_manifest

    write_manifest(root, {**m, "cross_features": ["liked"], "user_features": ["activity"]})
    return root


def test_extra_columns_and_user_features_reach_the_batch_and_the_model(world_with_features, tiny_snapshot):
    import torch

    from twinv2.models.frame import ModelConfig
    from twinv2.models.registry import build_model
    from twinv2.train.features import N_NUMERIC, Features, numeric_bucket

    ds = Dataset(world_with_features)
    vocab, tables = item_tables(ds)
    s = _samples(ds, n=31, seed=5)
    feats = Features.for_dataset(ds, "recent")
    assert [f.name for f in feats.cross][3:] == ["liked"] and [f.name for f in feats.user] == ["activity"]
    b = Batcher(ds, vocab, "recent", 40, features=feats).batch(s.user_id.values, s.item_id.values, s.ts.values,
                                                               s.label.values)
    assert b.seq.cross.shape[-1] == 4
    liked, mask = b.seq.cross[..., 3], b.seq.mask
    raw = vocab.item_ids[b.seq.rows[mask].numpy() - 1]  # every behaviour's item is in the vocabulary
    assert liked[mask].tolist() == numeric_bucket((raw % 3 == 0).astype(float)).tolist()  # 0 → 1, 1 → 2
    assert set(liked[mask].tolist()) == {1, 2} and not liked[~mask].any()
    users = ds.users().set_index("user_id")["activity"]
    assert b.user.shape == (31, 1)
    assert b.user[:, 0].tolist() == numeric_bucket(users.loc[s.user_id.values].to_numpy()).tolist()
    model = build_model("din", tables, ModelConfig(match_init=0.0), feats.cross_buckets, feats.user_buckets)  # a live tower
    assert model.attn.n_cross == 4 and [e.num_embeddings for e in model.users] == [N_NUMERIC]
    with torch.no_grad():
        out = model(b)
        b.user.zero_()
        assert (model(b) - out).abs().max() > 0  # the user feature enters the tower
    clusters = Batcher(ds, vocab, "clusters", 100)
    clusters.use_snapshot(ClusterSnapshot(tiny_snapshot), ds.eval_days[0])
    cb = clusters.batch(s.user_id.values, s.item_id.values, s.ts.values, s.label.values)
    assert cb.seq.cross.shape[-1] == 3 and cb.user.shape == (31, 1)  # snapshots carry no extra columns
