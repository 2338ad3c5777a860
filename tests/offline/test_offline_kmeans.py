import numpy as np
import pytest

from twinv2.offline import BACKENDS, kmeans
from twinv2.offline.lloyd import augment, item_keys, lloyd_segments

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
    lab_all, cent_all = lloyd_segments(augment(pts), rows, sizes, ks, keys, init=init)
    assert cent_all.shape == (4, 5, D)
    starts = np.cumsum(sizes) - sizes
    for s in range(len(sizes)):
        sl = slice(starts[s], starts[s] + sizes[s])
        lab1, cent1 = lloyd_segments(augment(pts), rows[sl], sizes[s:s + 1], ks[s:s + 1], keys[sl], init=init)
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
    lab, cent = lloyd_segments(augment(pts), rows, sizes, ks, keys, max_points_per_centroid=10)
    starts = np.cumsum(sizes) - sizes
    for s in range(3):
        sl = slice(starts[s], starts[s] + sizes[s])
        # Every member (not just the sample) is labelled, and the centroids are the members' means.
        np.testing.assert_array_equal(np.unique(lab[sl]), np.arange(ks[s]))
        for c in range(ks[s]):
            np.testing.assert_allclose(cent[s, c], pts[sl][lab[sl] == c].mean(axis=0), rtol=1e-4, atol=1e-5)
    # Every set here is subsampled (size > 10 * k); batching still does not change a set's result.
    lab1, _ = lloyd_segments(augment(pts), rows[400:430], sizes[1:2], ks[1:2], keys[400:430],
                             max_points_per_centroid=10)
    np.testing.assert_array_equal(lab1, lab[400:430])
    # Without subsampling the result differs in general but stays a valid clustering.
    full, _ = lloyd_segments(augment(pts), rows, sizes, ks, keys)
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


# ---- the Lloyd loop against a plain reference ---------------------------------------------------------------
def _reference_lloyd(x, keys, k, n_iter):
    """Textbook Lloyd from the same init: the k members with the smallest keys (in key order), argmin of the
    squared distance (first minimum on ties), mean update, an empty cluster keeps its centroid, stop once the
    centroids repeat or after n_iter rounds. Returns labels and the number of rounds run."""
    c = x[np.argsort(keys, kind="stable")[:k]].astype(np.float64)
    for it in range(n_iter):
        lab = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        new = np.array([x[lab == j].mean(axis=0) if (lab == j).any() else c[j] for j in range(k)])
        if np.array_equal(new, c):
            return lab, it + 1
        c = new
    return lab, n_iter


def _sets(rng, sizes, spread):
    """Points of len(sizes) sets, each drawn around 6 random centres with the given spread."""
    pts = []
    for n in sizes:
        centres = rng.normal(size=(6, D)) * 4.0
        pts.append(centres[rng.integers(0, 6, n)] + spread * rng.normal(size=(n, D)))
    return np.concatenate(pts).astype(np.float32)


@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("n_iter", [1, 2, 3, 50])
def test_batched_lloyd_equals_the_reference_loop(k, n_iter):
    rng = np.random.default_rng(20 + k)
    sizes = np.array([37, 150, 64, 201, 90])  # three octave buckets, padded
    pts = _sets(rng, sizes, spread=1.5)
    rows = rng.permutation(len(pts))
    keys = item_keys(5, rows)
    lab, cent = lloyd_segments(augment(pts), rows, sizes, np.full(5, k), keys, n_iter)
    starts = np.cumsum(sizes) - sizes
    for s in range(len(sizes)):
        sl = slice(starts[s], starts[s] + sizes[s])
        ref, _ = _reference_lloyd(pts[rows[sl]].astype(np.float64), keys[sl], k, n_iter)
        np.testing.assert_array_equal(lab[sl], ref, err_msg=f"set {s}")
        for j in np.unique(ref):
            np.testing.assert_allclose(cent[s, j], pts[rows[sl]][ref == j].mean(axis=0), rtol=1e-4, atol=1e-5)


def test_early_stop_gives_the_full_iteration_result_on_separated_data():
    rng = np.random.default_rng(8)
    sizes = np.array([300, 120, 45])
    pts = _sets(rng, sizes, spread=0.05)  # well-separated blobs: Lloyd converges in a few rounds
    rows = np.arange(len(pts))
    keys = item_keys(1, rows)
    xa, ks = augment(pts), np.array([6, 4, 3])
    early, c_early = lloyd_segments(xa, rows, sizes, ks, keys, n_iter=20)
    full, c_full = lloyd_segments(xa, rows, sizes, ks, keys, n_iter=500)
    np.testing.assert_array_equal(early, full)
    np.testing.assert_array_equal(c_early, c_full)
    starts = np.cumsum(sizes) - sizes
    for s in range(3):  # it did stop early: the reference reaches its fixed point well before 20 rounds
        sl = slice(starts[s], starts[s] + sizes[s])
        _, rounds = _reference_lloyd(pts[sl].astype(np.float64), keys[sl], int(ks[s]), 500)
        assert rounds < 20


@pytest.mark.parametrize("n_iter", [1, 2])
def test_the_iteration_cap_applies(n_iter):
    rng = np.random.default_rng(9)
    sizes = np.array([400, 380])
    pts = _sets(rng, sizes, spread=3.0)  # overlapping blobs: far from converged after one or two rounds
    rows = np.arange(len(pts))
    keys = item_keys(2, rows)
    xa, ks = augment(pts), np.array([7, 7])
    capped, _ = lloyd_segments(xa, rows, sizes, ks, keys, n_iter=n_iter)
    many, _ = lloyd_segments(xa, rows, sizes, ks, keys, n_iter=50)
    assert (capped != many).mean() > 0.05
    for sl in (slice(0, 400), slice(400, 780)):
        ref, rounds = _reference_lloyd(pts[sl].astype(np.float64), keys[sl], 7, n_iter)
        assert rounds == n_iter
        np.testing.assert_array_equal(capped[sl], ref)


@pytest.mark.parametrize("mpc", [None, 8])  # 8: every set trains on a subsample, then one streamed pass
@pytest.mark.parametrize("group_elems", [1, 1 << 16])  # one set per block, or all of them
def test_chunked_rounds_equal_one_chunk(monkeypatch, group_elems, mpc):
    import twinv2.offline.lloyd as lloyd

    rng = np.random.default_rng(10)
    sizes = np.array([260, 97, 130])
    pts = _sets(rng, sizes, spread=1.0)
    pts[10:60] = pts[10]  # duplicates: ties between coinciding centroids inside one chunk
    rows = rng.permutation(len(pts))
    keys = item_keys(4, rows)
    args = (augment(pts), rows, sizes, np.array([6, 4, 5]), keys, 30, "random", mpc)
    whole, c_whole = lloyd_segments(*args)
    monkeypatch.setattr(lloyd, "CHUNK", 16)  # every set spans several chunks, the last one partial
    monkeypatch.setattr(lloyd, "GROUP_ELEMS", group_elems)
    chunked, c_chunked = lloyd_segments(*args)
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_allclose(c_chunked, c_whole, rtol=1e-5, atol=1e-6)


def test_subsampled_sets_need_not_hold_the_largest_k():
    rng = np.random.default_rng(11)
    sizes = np.array([400, 30])  # only the first is subsampled (400 > 10 * 2); the second has the larger k
    pts = _sets(rng, sizes, spread=1.0)
    rows = np.arange(len(pts))
    lab, cent = lloyd_segments(augment(pts), rows, sizes, np.array([2, 5]), item_keys(0, rows),
                               max_points_per_centroid=10)
    assert cent.shape == (2, 5, D) and np.isnan(cent[0, 2:]).all() and not np.isnan(cent[1]).any()
    np.testing.assert_array_equal(np.unique(lab[:400]), [0, 1])


def test_augment_layout_and_limit():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(augment(x), [[0, 1, 1], [2, 3, 1], [4, 5, 1], [0, 0, 0]])
    too_many = np.broadcast_to(np.zeros((1, 2), np.float32), (1 << 24, 2))  # no memory behind it
    with pytest.raises(ValueError, match="16,777,216"):
        augment(too_many)


@pytest.mark.parametrize("k", [2, 4])
def test_sets_retiring_early_leave_the_others_unchanged(k):
    rng = np.random.default_rng(12)
    sizes = np.array([120, 110, 125, 100, 118, 127, 105, 99])  # one octave: one bucket
    spreads = [0.02, 3.0, 0.02, 0.02, 3.0, 0.02, 3.0, 0.02]  # tight sets converge (and retire) long before
    pts = np.concatenate([_sets(rng, [n], spread=sp) for n, sp in zip(sizes, spreads)])
    rows = np.arange(len(pts))
    keys = item_keys(6, rows)
    xa, ks = augment(pts), np.full(len(sizes), k)
    lab, cent = lloyd_segments(xa, rows, sizes, ks, keys, n_iter=40)
    starts = np.cumsum(sizes) - sizes
    for s in range(len(sizes)):
        sl = slice(starts[s], starts[s] + sizes[s])
        alone, c_alone = lloyd_segments(xa, rows[sl], sizes[s:s + 1], ks[s:s + 1], keys[sl], n_iter=40)
        np.testing.assert_array_equal(lab[sl], alone, err_msg=f"set {s}")
        np.testing.assert_allclose(cent[s], c_alone[0], rtol=1e-5, atol=1e-6)
