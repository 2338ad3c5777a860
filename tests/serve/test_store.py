"""The LMDB cluster store: compact values decode to exactly the snapshot's model inputs, versions switch
atomically (also under concurrent readers) and old ones are deleted."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from twinv2.offline.store import ClusterSnapshot
from twinv2.serve.store import ClusterStore, StoreNotReady, decode, encode, user_key
from twinv2.serve.synthetic import synthetic_clusters, write_snapshot
from twinv2.train.features import play_bucket, ratio_bucket

SNAP_TS = 1_712_534_400_000


def test_value_roundtrip_narrow_and_wide_sizes():
    rng = np.random.default_rng(3)
    item = rng.integers(-5, 10**12, 7)
    ts = SNAP_TS - rng.uniform(0, 1e9, 7)
    play, ratio = rng.integers(0, 17, 7), rng.integers(0, 23, 7)
    for n in (rng.integers(1, 20, 7), np.array([1, 2, 70_000, 3, 4, 5, 6])):
        uc = decode(9, "v", encode(item, ts, n, play, ratio))
        assert uc.size == 7 and uc.user_id == 9 and uc.version == "v"
        np.testing.assert_array_equal(uc.item_id, item)
        np.testing.assert_array_equal(uc.ts, ts)  # float64 kept: the age bucket needs the exact mean time
        np.testing.assert_array_equal(uc.n, n)
        np.testing.assert_array_equal(uc.play, play)
        np.testing.assert_array_equal(uc.ratio, ratio)
    assert len(encode(item, ts, np.ones(7), play, ratio)) == 8 + 7 * 20 + 4  # 20 bytes a cluster (uint16 n), a CRC32
    assert decode(1, "v", encode(*(np.zeros(0),) * 5)).size == 0


def test_user_keys_sort_like_the_ids():
    ids = [-(1 << 63), -7, -1, 0, 1, 5, (1 << 63) - 1]
    assert sorted(ids, key=user_key) == ids


def test_store_holds_exactly_the_snapshot(tiny_snapshot, tiny_store):
    snap = ClusterSnapshot(tiny_snapshot)
    store = ClusterStore(tiny_store)
    users = snap.user_ids()
    assert store.info()["users"] == len(users)
    for u in users[::7]:
        want = snap.clusters(int(u))
        got = store.get(int(u))
        np.testing.assert_array_equal(got.item_id, want["item_id"])
        np.testing.assert_array_equal(got.ts, want["ts"])
        np.testing.assert_array_equal(got.n, want["n"])
        np.testing.assert_array_equal(got.play, play_bucket(want["play_ms"]))
        np.testing.assert_array_equal(got.ratio, ratio_bucket(want["ratio"]))
    assert store.get(10**15).size == 0  # an unknown user: an empty life cycle
    assert store.get(-3).size == 0


def _snapshot(tmp_path, name, users, C, seed):
    return write_snapshot(tmp_path / name, synthetic_clusters(users, C, 500, SNAP_TS, seed=seed), SNAP_TS, n_shards=3)


def test_versions_switch_prune_and_reload(tmp_path):
    store = ClusterStore(tmp_path / "store", keep=2)
    with pytest.raises(StoreNotReady, match="holds no snapshot"):
        store.get(1)
    assert store.version is None
    snaps = [_snapshot(tmp_path, f"s{i}", [1, 2, 3], 5 + i, seed=i) for i in range(3)]
    v0 = store.load_snapshot(snaps[0])
    assert store.load_snapshot(snaps[0]) == v0 and len(store.versions()) == 1  # idempotent
    v1 = store.load_snapshot(snaps[1])
    assert store.version == v1 and store.get(2).size == 6
    store.switch(v0)
    assert store.version == v0 and store.get(2).size == 5
    v2 = store.load_snapshot(snaps[2])
    assert set(store.versions()) == {v0, v2}  # keep=2: the served one and the newest other
    with pytest.raises(ValueError, match="has no version"):
        store.switch(v1)
    store.load_snapshot(snaps[1])  # a deleted version can be loaded again
    assert store.get(3).size == 6
    with pytest.raises(ValueError, match="keep must be"):
        ClusterStore(tmp_path / "other", keep=0)
    with pytest.raises(ValueError, match="is not a cluster store"):
        ClusterStore(snaps[0])  # a snapshot folder passed as the store


def test_readers_see_one_whole_version_while_versions_switch(tmp_path):
    store = ClusterStore(tmp_path / "store", keep=3)
    a = store.load_snapshot(_snapshot(tmp_path, "a", list(range(1, 40)), 50, seed=1))
    b = store.load_snapshot(_snapshot(tmp_path, "b", list(range(1, 40)), 60, seed=2))
    want = {v: {u: store_get(store, v, u) for u in (3, 17, 31)} for v in (a, b)}
    stop, bad, reads = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            for u in (3, 17, 31):
                got = store.get(u)
                ref = want[got.version][u]
                if got.size != ref.size or not np.array_equal(got.item_id, ref.item_id):
                    bad.append((u, got.version))
                reads[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(200):
        store.switch(a if i % 2 else b)
    stop.set()
    for t in threads:
        t.join()
    assert not bad and reads[0] > 0


def store_get(store, version, user):
    store.switch(version)
    return store.get(user)
