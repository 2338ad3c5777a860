import numpy as np
import pytest

from twinv2.offline import HierarchicalClusterer, nearest_members, virtual_items

T, D = 137, 11


def _reference(labels, x, numeric, categorical):
    """Plain per-cluster loop: Eq. 5 (nan-mean) and Eq. 6-7 (member nearest the mean, lowest index on ties)."""
    C = labels.max() + 1
    out = {"n": [], "representative": [], **{k: [] for k in [*numeric, *categorical]}}
    for c in range(C):
        members = np.flatnonzero(labels == c)
        centroid = x[members].astype(np.float64).mean(axis=0)
        dist = ((x[members].astype(np.float64) - centroid) ** 2).sum(axis=1)
        rep = members[np.argmin(dist)]  # argmin returns the first (lowest index) minimum
        out["n"].append(len(members))
        out["representative"].append(rep)
        for k, v in numeric.items():
            vals = v[members][~np.isnan(v[members])]
            out[k].append(vals.mean() if len(vals) else np.nan)
        for k, v in categorical.items():
            out[k].append(v[rep])
    return {k: np.array(v) for k, v in out.items()}


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(T, D)).astype(np.float32)
    labels = rng.permutation(np.arange(T) % 13)  # 13 clusters, shuffled
    play = rng.uniform(0, 1e4, T)
    play[rng.random(T) < 0.3] = np.nan
    play[labels == 4] = np.nan  # one cluster with every value missing
    numeric = {"play_ms": play, "duration_ms": rng.integers(1, 100, T).astype(np.int64)}
    categorical = {"item_id": rng.integers(0, 10**12, T), "tag": rng.integers(0, 30, T).astype(np.int16)}
    return labels, x, numeric, categorical


def test_matches_per_cluster_loop(data):
    labels, x, numeric, categorical = data
    got = virtual_items(labels, x, numeric, categorical)
    ref = _reference(labels, x, numeric, categorical)
    assert set(got) == set(ref)
    np.testing.assert_array_equal(got["n"], ref["n"])
    np.testing.assert_array_equal(got["representative"], ref["representative"])
    for k in numeric:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, equal_nan=True)
    assert np.isnan(got["play_ms"][4]) and not np.isnan(got["play_ms"][:4]).any()
    for k in categorical:
        np.testing.assert_array_equal(got[k], ref[k])
        assert got[k].dtype == categorical[k].dtype


def test_ties_go_to_lowest_index():
    x = np.zeros((6, D), np.float32)
    x[[1, 3]] = 1.0
    labels = np.array([1, 0, 1, 0, 0, 1])
    # Cluster 0 = {1, 3, 4}, centroid 2/3: members 1 and 3 tie (nearest), 4 is farther -> 1.
    # Cluster 1 = {0, 2, 5}, all identical -> 0.
    rep = nearest_members(labels, x)
    np.testing.assert_array_equal(rep, [1, 0])


def test_with_hierarchical_labels():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, D)).astype(np.float32)
    play, dur = rng.uniform(0, 10, 500), np.full(500, 10.0)
    hc = HierarchicalClusterer(backend="numpy").fit(x, play, dur)
    got = virtual_items(hc.labels_, x, {"play_ms": play}, {"item_id": np.arange(500)})
    ref = _reference(hc.labels_, x, {"play_ms": play}, {"item_id": np.arange(500)})
    assert len(got["n"]) == hc.n_clusters_ and got["n"].sum() == 500
    np.testing.assert_array_equal(got["item_id"], ref["item_id"])
    np.testing.assert_allclose(got["play_ms"], ref["play_ms"])


def test_empty():
    got = virtual_items(np.zeros(0, np.int64), np.zeros((0, D)), {"a": np.zeros(0)}, {"b": np.zeros(0, np.int64)})
    assert all(v.shape == (0,) for v in got.values())


def test_errors(data):
    labels, x, numeric, categorical = data
    with pytest.raises(ValueError, match="cluster 3 is empty"):
        virtual_items(np.where(labels == 3, 0, labels), x)
    with pytest.raises(ValueError, match="reserved"):
        virtual_items(labels, x, {"n": numeric["play_ms"]})
    with pytest.raises(ValueError, match="play_ms"):
        virtual_items(labels, x, {"play_ms": numeric["play_ms"][:-1]})
    with pytest.raises(ValueError, match="both"):
        virtual_items(labels, x, {"a": numeric["play_ms"]}, {"a": categorical["tag"]})
    with pytest.raises(ValueError, match=r"\(137, D\)"):
        virtual_items(labels, x[:-1])
    with pytest.raises(ValueError, match="-1"):
        virtual_items(labels - 1, x)
    bad = x.copy()
    bad[5, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        virtual_items(labels, bad)


def test_segment_sums_equal_reduceat_bit_for_bit():
    from twinv2.offline.virtual_items import segment_sums

    rng = np.random.default_rng(3)
    x = rng.normal(size=(T, D)).astype(np.float32) * 1e3
    rows = rng.permutation(T)[:120]  # a subset, in no particular order
    starts = np.array([0, 1, 7, 30, 31, 100])  # segments of 1 to 69 rows
    got = segment_sums(x, rows, starts)
    assert got.dtype == np.float64 and got.shape == (6, D)
    np.testing.assert_array_equal(got, np.add.reduceat(x[rows], starts, axis=0, dtype=np.float64))
