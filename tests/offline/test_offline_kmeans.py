import numpy as np
import pytest

from twinv2.offline import BACKENDS, kmeans
from twinv2.offline.lloyd import item_keys, lloyd_segments

T, D = 137, 11


@pytest.fixture
def x():
    return np.random.default_rng(3).normal(size=(T, D)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_and_consecutive_nonempty_labels(x, backend):
    labels, cent = kmeans(x, 7, seed=0, backend=backend)
    assert labels.shape == (T,) and labels.dtype == np.int64
    assert cent.dtype == np.float32 and cent.shape[1] == D
    k = cent.shape[0]
    assert 1 <= k <= 7
    np.testing.assert_array_equal(np.unique(labels), np.arange(k))


@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_points_give_one_cluster(backend):
    labels, cent = kmeans(np.ones((50, D), np.float32), 5, seed=0, backend=backend)
    np.testing.assert_array_equal(labels, 0)
    np.testing.assert_allclose(cent, np.ones((1, D)), rtol=1e-5)  # faiss perturbs empty-cluster splits


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_larger_than_n_is_clamped(x, backend):
    labels, cent = kmeans(x[:3], 10, seed=0, backend=backend)
    assert cent.shape[0] <= 3 and labels.max() < cent.shape[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_result(x, backend):
    a, ca = kmeans(x, 6, seed=11, backend=backend)
    b, cb = kmeans(x, 6, seed=11, backend=backend)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ca, cb)


@pytest.mark.parametrize("init", ["random", "k-means++"])
def test_numpy_centroids_are_member_means(x, init):
    labels, cent = kmeans(x, 6, seed=0, backend="numpy", init=init)
    for c in range(cent.shape[0]):
        np.testing.assert_allclose(cent[c], x[labels == c].mean(axis=0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_kmeanspp_finds_far_apart_blobs(backend):
    rng = np.random.default_rng(0)
    centers = np.zeros((4, D))
    centers[np.arange(4), np.arange(4)] = 100.0
    pts = (centers[rng.integers(0, 4, 300)] + rng.normal(size=(300, D))).astype(np.float32)
    labels, cent = kmeans(pts, 4, seed=0, backend=backend, init="k-means++")
    truth = np.argmin(((pts[:, None] - centers[None]) ** 2).sum(-1), axis=1)
    assert cent.shape[0] == 4
    for c in range(4):  # D^2 seeding puts one seed per blob, so every cluster is pure
        assert len(np.unique(truth[labels == c])) == 1


def test_faiss_thread_setting_is_restored(x):
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    kmeans(x, 4, seed=0, backend="faiss")
    assert faiss.omp_get_max_threads() == before


@pytest.mark.parametrize("init", ["random", "k-means++"])
def test_lloyd_segments_does_not_depend_on_batching(init):
    rng = np.random.default_rng(1)
    sizes = np.array([23, 137, 40, 61])
    ks = np.array([2, 5, 3, 4])
    pts = rng.normal(size=(sizes.sum(), D)).astype(np.float32)
    rows = rng.permutation(len(pts))
    keys = item_keys(7, rows)
    lab_all, cent_all = lloyd_segments(pts, rows, sizes, ks, keys, init=init)
    assert cent_all.shape == (4, 5, D)
    starts = np.cumsum(sizes) - sizes
    for s in range(len(sizes)):
        sl = slice(starts[s], starts[s] + sizes[s])
        lab1, cent1 = lloyd_segments(pts, rows[sl], sizes[s:s + 1], ks[s:s + 1], keys[sl], init=init)
        np.testing.assert_array_equal(lab1, lab_all[sl])
        np.testing.assert_allclose(cent1[0, : ks[s]], cent_all[s, : ks[s]], rtol=1e-5, atol=1e-6)
        assert np.isnan(cent_all[s, ks[s]:]).all()


@pytest.mark.parametrize(
    "kwargs, bad",
    [({"k": 0}, "0"), ({"backend": "cuda"}, "cuda"), ({"n_iter": 0}, "n_iter"), ({"init": "kmeans++"}, "kmeans")],
)
def test_bad_arguments(x, kwargs, bad):
    args = {"k": 3, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=bad):
        kmeans(x, **args)


def test_empty_input_raises():
    with pytest.raises(ValueError, match="non-empty"):
        kmeans(np.zeros((0, D), np.float32), 2, seed=0)


def test_subsampled_training_then_full_assignment():
    rng = np.random.default_rng(2)
    sizes = np.array([400, 30, 250])
    ks = np.array([4, 2, 3])
    pts = rng.normal(size=(sizes.sum(), D)).astype(np.float32)
    rows = np.arange(len(pts))
    keys = item_keys(3, rows)
    lab, cent = lloyd_segments(pts, rows, sizes, ks, keys, max_points_per_centroid=10)
    starts = np.cumsum(sizes) - sizes
    for s in range(3):
        sl = slice(starts[s], starts[s] + sizes[s])
        # Every member (not just the sample) is labelled, and the centroids are the members' means.
        np.testing.assert_array_equal(np.unique(lab[sl]), np.arange(ks[s]))
        for c in range(ks[s]):
            np.testing.assert_allclose(cent[s, c], pts[sl][lab[sl] == c].mean(axis=0), rtol=1e-4, atol=1e-5)
    # Every set here is subsampled (size > 10 * k); batching still does not change a set's result.
    lab1, _ = lloyd_segments(pts, rows[400:430], sizes[1:2], ks[1:2], keys[400:430], max_points_per_centroid=10)
    np.testing.assert_array_equal(lab1, lab[400:430])
    # Without subsampling the result differs in general but stays a valid clustering.
    full, _ = lloyd_segments(pts, rows, sizes, ks, keys)
    assert full.shape == lab.shape


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_kmeans_subsampling(x, backend):
    labels, cent = kmeans(x, 4, seed=0, backend=backend, max_points_per_centroid=5)
    assert labels.shape == (T,) and np.unique(labels).tolist() == list(range(cent.shape[0]))
    with pytest.raises(ValueError, match="max_points_per_centroid"):
        kmeans(x, 4, seed=0, max_points_per_centroid=0)


def test_faiss_prints_no_warning_for_small_sets(capfd):
    pytest.importorskip("faiss")
    kmeans(np.random.default_rng(0).normal(size=(30, D)).astype(np.float32), 7, seed=0, backend="faiss")
    out, err = capfd.readouterr()
    assert "WARNING" not in out + err
