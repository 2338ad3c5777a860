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
