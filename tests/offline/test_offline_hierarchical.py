import math
from collections import deque

import numpy as np
import pytest

import twinv2.offline.hierarchical as hier
from twinv2.offline import HierarchicalClusterer, cluster_accuracy, completion_groups

D = 11
GAMMA = 20


def _data(T, seed=0, identical=False):
    rng = np.random.default_rng(seed)
    x = np.ones((T, D), np.float32) if identical else rng.normal(size=(T, D)).astype(np.float32)
    dur = rng.integers(1000, 60000, T).astype(np.float64)
    play = np.exp(rng.normal(np.log(0.8), 0.6, T)) * dur
    dur[:: 17] = 0.0  # unknown-ratio rows
    dur[5:: 29] = np.nan
    return x, play, dur


def _check_invariants(hc, x, play, dur, gamma=GAMMA, edges=(0.2, 0.4, 0.6, 0.8)):
    T = len(x)
    C = hc.n_clusters_
    assert hc.labels_.shape == (T,) and hc.labels_.dtype == np.int64
    assert hc.group_of_cluster_.shape == (C,) and hc.centroids_.shape == (C, x.shape[1])
    assert hc.centroids_.dtype == np.float32
    sizes = np.bincount(hc.labels_, minlength=C)
    assert len(sizes) == C  # every label is in 0..C-1
    assert sizes.min(initial=1) >= 1 and sizes.max(initial=0) < gamma  # every cluster 1..gamma-1 members
    groups = completion_groups(play, dur, edges)
    # Clusters never mix completion groups; ids are ordered by group.
    np.testing.assert_array_equal(hc.group_of_cluster_[hc.labels_], groups)
    assert np.all(np.diff(hc.group_of_cluster_) >= 0)
    for c in range(0, C, max(1, C // 25)):  # centroid = mean of members (sampled clusters)
        np.testing.assert_allclose(hc.centroids_[c], x[hc.labels_ == c].mean(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
@pytest.mark.parametrize("variant", hier.VARIANTS)
@pytest.mark.parametrize("identical", [False, True])
def test_invariants(variant, backend, identical):
    x, play, dur = _data(1370, identical=identical)
    hc = HierarchicalClusterer(variant=variant, backend=backend, seed=3).fit(x, play, dur)
    assert hc.fit(x, play, dur) is hc
    _check_invariants(hc, x, play, dur)


@pytest.mark.parametrize("mpc", [None, 8])
@pytest.mark.parametrize("init", ["random", "k-means++"])
def test_invariants_faiss_path_init_and_subsampling(monkeypatch, init, mpc):
    # Force the per-set faiss path (normally only for sets >= FAISS_MIN_SET items).
    monkeypatch.setattr(hier, "FAISS_MIN_SET", 50)
    x, play, dur = _data(1370, seed=1)
    hc = HierarchicalClusterer(backend="faiss", init=init, max_points_per_centroid=mpc).fit(x, play, dur)
    _check_invariants(hc, x, play, dur)


@pytest.mark.parametrize("variant", hier.VARIANTS)
def test_invariants_numpy_subsampling(variant):
    x, play, dur = _data(1370, seed=1)
    hc = HierarchicalClusterer(variant=variant, backend="numpy", max_points_per_centroid=8).fit(x, play, dur)
    _check_invariants(hc, x, play, dur)


@pytest.mark.parametrize("variant", hier.VARIANTS)
def test_invariants_sklearn(variant):
    x, play, dur = _data(250, seed=2)
    _check_invariants(HierarchicalClusterer(variant=variant, backend="sklearn").fit(x, play, dur), x, play, dur)


def test_duplicated_rows_mixed_with_distinct_rows():
    x, play, dur = _data(600, seed=4)
    x[100:400] = x[100]  # 300 identical behaviours
    play[100:400], dur[100:400] = 900.0, 1000.0
    for gamma in (2, 5, 20):
        hc = HierarchicalClusterer(gamma=gamma, backend="numpy").fit(x, play, dur)
        _check_invariants(hc, x, play, dur, gamma=gamma)


def test_empty_and_tiny_users():
    hc = HierarchicalClusterer().fit(np.zeros((0, D), np.float32), np.zeros(0), np.zeros(0))
    assert hc.n_clusters_ == 0 and hc.labels_.shape == (0,) and hc.centroids_.shape == (0, D)
    assert hc.group_of_cluster_.shape == (0,)
    x = np.arange(D, dtype=np.float32)[None]
    hc = HierarchicalClusterer().fit(x, np.array([5.0]), np.array([10.0]))
    assert hc.n_clusters_ == 1 and hc.labels_.tolist() == [0] and hc.group_of_cluster_.tolist() == [2]
    np.testing.assert_array_equal(hc.centroids_, x)
    # gamma-1 behaviours in one group: one cluster; spread over three groups: one cluster per group.
    x, _, _ = _data(GAMMA - 1)
    one = HierarchicalClusterer().fit(x, np.full(GAMMA - 1, 5.0), np.full(GAMMA - 1, 10.0))
    assert one.n_clusters_ == 1
    play = np.array([0.0, 5.0, np.nan] * 6 + [0.0])
    three = HierarchicalClusterer().fit(x, play, np.full(GAMMA - 1, 10.0))
    assert three.n_clusters_ == 3 and three.group_of_cluster_.tolist() == [0, 2, 5]
    # Exactly gamma behaviours must be split.
    x, _, _ = _data(GAMMA)
    assert HierarchicalClusterer().fit(x, np.ones(GAMMA), np.ones(GAMMA)).n_clusters_ >= 2


def test_unknown_ratio_rows_form_their_own_group():
    x, _, _ = _data(300, seed=5)
    play = np.random.default_rng(5).uniform(0, 20, 300)
    dur = np.full(300, 10.0)
    dur[:100] = np.where(np.arange(100) % 2, 0.0, np.nan)
    hc = HierarchicalClusterer(backend="numpy").fit(x, play, dur)
    assert set(hc.group_of_cluster_[hc.labels_[:100]].tolist()) == {5}
    assert (hc.group_of_cluster_[hc.labels_[100:]] < 5).all()


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
@pytest.mark.parametrize("variant", hier.VARIANTS)
def test_same_seed_same_labels(variant, backend):
    x, play, dur = _data(1370, seed=6)
    a = HierarchicalClusterer(variant=variant, backend=backend, seed=9).fit(x, play, dur)
    b = HierarchicalClusterer(variant=variant, backend=backend, seed=9).fit(x.copy(), play, dur)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.centroids_, b.centroids_)


def _spy_lloyd(monkeypatch):
    calls = []
    real = hier.lloyd_segments

    def spy(x, rows, sizes, ks, keys, *args):
        calls.append((np.asarray(sizes).tolist(), np.asarray(ks).tolist()))
        return real(x, rows, sizes, ks, keys, *args)

    monkeypatch.setattr(hier, "lloyd_segments", spy)
    return calls


def test_adaptive_delta(monkeypatch):
    calls = _spy_lloyd(monkeypatch)
    x, _, _ = _data(1000, seed=7)
    HierarchicalClusterer(backend="numpy", delta_exponent=0.3).fit(x, np.ones(1000), np.ones(1000))
    assert calls[0] == ([1000], [7])  # ⌊1000^0.3⌋ = ⌊7.94⌋
    for sizes, ks in calls:
        assert ks == [max(2, math.floor(n ** 0.3)) for n in sizes]
    calls.clear()
    HierarchicalClusterer(backend="numpy", variant="binary").fit(x, np.ones(1000), np.ones(1000))
    assert all(k == 2 for _, ks in calls for k in ks)


def test_fifo_queue_order_matches_algorithm_1(monkeypatch):
    """With a fake deterministic split, labels equal a literal deque implementation of Algorithm 1."""

    def fake(x, rows, sizes, ks, keys, *args):
        # Part j of a set = its j-th block of consecutive members (in the set's current order).
        setid = np.repeat(np.arange(len(sizes)), sizes)
        pos = np.arange(len(rows)) - (np.cumsum(sizes) - sizes)[setid]
        return pos * np.asarray(ks)[setid] // np.asarray(sizes)[setid], np.zeros((len(sizes), max(ks), x.shape[1] - 1))

    monkeypatch.setattr(hier, "lloyd_segments", fake)
    gamma, T = 7, 450
    x, play, dur = _data(T, seed=8)
    groups = completion_groups(play, dur)
    hc = HierarchicalClusterer(gamma=gamma, backend="numpy").fit(x, play, dur)

    ref = np.empty(T, np.int64)
    cid = 0
    for g in range(6):
        queue = deque([np.flatnonzero(groups == g)]) if (groups == g).any() else deque()
        while queue:
            v = queue.popleft()
            if len(v) < gamma:
                ref[v] = cid
                cid += 1
                continue
            k = max(2, math.floor(len(v) ** 0.3))
            part = np.arange(len(v)) * k // len(v)
            queue.extend(v[part == j] for j in range(k))
    assert hc.n_clusters_ == cid
    np.testing.assert_array_equal(hc.labels_, ref)


def test_balanced_binary_halves(monkeypatch):
    splits = []
    real = HierarchicalClusterer._split

    def spy(self, x, idx, sizes, level):
        lab, nparts = real(self, x, idx, sizes, level)
        setid = np.repeat(np.arange(len(sizes)), sizes)
        splits.append(np.bincount(setid * 2 + lab, minlength=2 * len(sizes)).reshape(-1, 2))
        return lab, nparts

    monkeypatch.setattr(HierarchicalClusterer, "_split", spy)
    x, _, _ = _data(1000, seed=9)
    hc = HierarchicalClusterer(variant="balanced_binary", backend="numpy").fit(x, np.ones(1000), np.ones(1000))
    counts = np.concatenate(splits)
    assert (np.abs(counts[:, 0] - counts[:, 1]) <= 1).all()
    # 1000 -> 500 -> 250 -> 125 -> 62|63 -> 31|32 -> 15|16
    assert set(np.bincount(hc.labels_).tolist()) <= {15, 16}


@pytest.mark.slow  # ~150 sklearn KMeans fits (~6 s here)
def test_accuracy_close_to_sklearn_on_blobs():
    rng = np.random.default_rng(10)
    centers = rng.normal(size=(50, D)) * 3.0
    T = 2000
    x = (centers[rng.integers(0, 50, T)] + rng.normal(size=(T, D))).astype(np.float32)
    play, dur = np.full(T, 9.0), np.full(T, 10.0)
    ref = cluster_accuracy(x, HierarchicalClusterer(backend="sklearn").fit(x, play, dur).labels_)
    for backend in ("faiss", "numpy"):
        for init in ("random", "k-means++"):
            acc = cluster_accuracy(x, HierarchicalClusterer(backend=backend, init=init).fit(x, play, dur).labels_)
            assert abs(acc - ref) <= 0.01, (backend, init, acc, ref)


@pytest.mark.parametrize(
    "kwargs, bad",
    [({"gamma": 1}, "1"), ({"gamma": 2.5}, "2.5"), ({"delta_exponent": 0.0}, "0.0"),
     ({"delta_exponent": 1.5}, "1.5"), ({"variant": "ternary"}, "ternary"), ({"backend": "cuda"}, "cuda"),
     ({"edges": (0.5, 0.2)}, "0.2"), ({"n_iter": 0}, "n_iter"), ({"init": "pp"}, "pp"), ({"seed": 1.5}, "1.5"),
     ({"max_points_per_centroid": 0}, "max_points_per_centroid")],
)
def test_bad_parameters(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        HierarchicalClusterer(**kwargs)


def test_bad_fit_inputs():
    x, play, dur = _data(30)
    hc = HierarchicalClusterer()
    with pytest.raises(ValueError, match=r"\(30,\)"):
        hc.fit(x, play[:-1], dur)
    with pytest.raises(ValueError, match="embeddings"):
        hc.fit(x[:, 0], play, dur)
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        hc.fit(x, play, dur)
