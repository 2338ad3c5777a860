"""k-means for the hierarchical clustering of TWIN-V2 (Algorithm 1, §3.3.1): faiss, numpy and sklearn backends.

The recursion calls k-means hundreds of times per user on small sets (20 to a few hundred items), so per-call
overhead matters more than asymptotic speed. :func:`lloyd_segments` therefore runs Lloyd's algorithm on many
independent sets at once (padded batched matmuls), and :func:`kmeans` is the one-set convenience wrapper.
All backends run the same algorithm: random initial centroids drawn among the points, then ``n_iter`` rounds
of assign + mean update (faiss's default); only the random draws and float rounding differ.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np

BACKENDS = ("faiss", "numpy", "sklearn")
_U64_MAX = np.iinfo(np.uint64).max


def splitmix64(z: np.ndarray) -> np.ndarray:
    """Vectorised SplitMix64 hash of a uint64 array (wrapping arithmetic is intended).

    A counter-based hash instead of a stateful RNG makes a set's random initial centroids depend only on
    (seed, item index, recursion level), not on which other sets happen to be batched with it.
    """
    z = np.asarray(z, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def item_keys(seed: int, index: np.ndarray, salt: int = 0) -> np.ndarray:
    """(n,) uint64 pseudo-random keys for items ``index`` under ``(seed, salt)``; smallest keys seed centroids."""
    base = splitmix64(np.array([(seed & 0xFFFFFFFF) << 32 | (salt & 0xFFFFFFFF)], dtype=np.uint64))
    return splitmix64(np.asarray(index, dtype=np.uint64) ^ base)


@contextlib.contextmanager
def faiss_single_thread() -> Iterator[None]:
    """Run faiss with one OpenMP thread, then restore the previous setting.

    Measured: two OpenMP threads make this many-small-calls recursion several times slower (thread wake-up
    dominates), and the offline job parallelises over users with processes instead. Restoring keeps other
    faiss users in the same process (e.g. a global 10,000-cluster k-means) multi-threaded.
    """
    import faiss

    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(prev)


def _lloyd_padded(
    p: np.ndarray, valid: np.ndarray, c: np.ndarray, kvalid: np.ndarray, n_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd on S padded sets at once. p (S, N, D), valid (S, N), c (S, K, D) initial, kvalid (S, K)."""
    S, N, D = p.shape
    K = c.shape[1]
    ar = np.arange(K)
    validf = valid[:, :, None]  # (S, N, 1)
    lab = np.zeros((S, N), dtype=np.int64)
    for it in range(max(n_iter, 1)):
        cc = np.einsum("skd,skd->sk", c, c)  # (S, K)
        cc[~kvalid] = np.inf  # unused centroid slots of sets with fewer than K clusters
        # ||x||^2 is constant per point, so argmin of ||c||^2 - 2 x.c is the nearest centroid.
        d = cc[:, None, :] - 2.0 * np.matmul(p, c.transpose(0, 2, 1))  # (S, N, K)
        new = d.argmin(axis=2)  # (S, N)
        if it > 0 and np.array_equal(new, lab):
            break  # converged: further rounds would change nothing
        lab = new
        onehot = ((lab[:, :, None] == ar) & validf).astype(p.dtype)  # (S, N, K)
        sums = np.matmul(onehot.transpose(0, 2, 1), p)  # (S, K, D)
        cnt = onehot.sum(axis=1)  # (S, K)
        # An empty cluster keeps its previous centroid; it is dropped when labels are made consecutive.
        c = np.where(cnt[:, :, None] > 0, sums / np.maximum(cnt, 1)[:, :, None], c)
    return lab, c


def lloyd_segments(
    x: np.ndarray, sizes: np.ndarray, ks: np.ndarray, keys: np.ndarray, n_iter: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Independent k-means on consecutive segments of ``x``.

    Args:
        x: (n, D) float32, segment s is rows ``sum(sizes[:s]) : sum(sizes[:s+1])``.
        sizes: (S,) segment lengths, each >= 1.
        ks: (S,) clusters per segment, ``1 <= ks[s] <= sizes[s]``.
        keys: (n,) uint64; in each segment the ``ks[s]`` rows with the smallest keys are the initial centroids.
        n_iter: maximum Lloyd rounds (stops early once assignments no longer change).

    Returns:
        labels (n,) int64 in ``0..ks[s]-1`` per segment (some may be empty), and centroids (S, max(ks), D)
        with NaN in the slots past ``ks[s]``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    ks = np.asarray(ks, dtype=np.int64)
    assert np.all(sizes >= 1) and np.all(ks >= 1) and np.all(ks <= sizes)
    S = len(sizes)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    labels = np.empty(len(x), dtype=np.int64)
    cents = np.full((S, int(ks.max(initial=1)), x.shape[1]), np.nan, dtype=x.dtype)
    # Bucket by (k, size octave) so padding wastes at most 2x and K is shared within a bucket.
    octave = np.ceil(np.log2(sizes)).astype(np.int64)
    bucket = ks * 64 + octave
    order = np.argsort(bucket, kind="stable")
    bounds = np.flatnonzero(np.diff(bucket[order])) + 1
    for sets in np.split(order, bounds):
        bs, bk = sizes[sets], ks[sets]
        nb, N, K = len(sets), int(bs.max()), int(bk.max())
        rows = np.repeat(np.arange(nb), bs)
        cols = np.arange(int(bs.sum())) - np.repeat(np.cumsum(bs) - bs, bs)
        src = np.repeat(starts[sets], bs) + cols
        p = np.zeros((nb, N, x.shape[1]), dtype=x.dtype)
        p[rows, cols] = x[src]
        valid = np.zeros((nb, N), dtype=bool)
        valid[rows, cols] = True
        kp = np.full((nb, N), _U64_MAX, dtype=np.uint64)
        kp[rows, cols] = keys[src]
        first = np.argsort(kp, axis=1, kind="stable")[:, :K]  # (nb, K) rows with the smallest keys
        c0 = np.take_along_axis(p, first[:, :, None], axis=1)  # (nb, K, D)
        kvalid = np.arange(K) < bk[:, None]  # (nb, K)
        lab, c = _lloyd_padded(p, valid, c0, kvalid, n_iter)
        labels[src] = lab[rows, cols]
        cents[sets, :K] = np.where(kvalid[:, :, None], c, np.nan)
    return labels, cents


def consecutive(labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Relabel ``labels`` in ``0..k-1`` to ``0..k'-1`` over the non-empty clusters only, keeping their order.

    Returns the new labels and the (k,) bool mask of non-empty old clusters.
    """
    nonempty = np.bincount(labels, minlength=k) > 0
    remap = np.cumsum(nonempty) - 1
    return remap[labels], nonempty


def kmeans(
    x: np.ndarray, k: int, seed: int, n_iter: int = 20, backend: str = "faiss"
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the rows of ``x`` into at most ``k`` clusters.

    Args:
        x: (n, d) float32 points, n >= 1.
        k: requested clusters, >= 1; more than ``n`` is clamped to ``n``.
        seed: random seed of the initial centroids.
        n_iter: Lloyd rounds.
        backend: ``"faiss"`` (``faiss.Kmeans``, one thread), ``"numpy"`` (:func:`lloyd_segments`) or
            ``"sklearn"`` (``KMeans(init="k-means++", n_init=1)``, the reference row of the benchmarks).

    Returns:
        labels (n,) int64 and centroids (k', d) float32. Empty clusters are dropped and labels renumbered
        consecutively ``0..k'-1`` (k' <= k), so every output cluster has at least one member. k' can be 1 when
        all points coincide; callers that need progress must handle that (see ``hierarchical``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter!r}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty (n, d) array, got shape {x.shape}")
    n, d = x.shape
    k = int(min(k, n))
    if backend == "faiss":
        labels, cent = _faiss_kmeans(x, k, seed, n_iter)
    elif backend == "sklearn":
        from sklearn.cluster import KMeans
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            # Duplicate points make fewer than k distinct clusters; that case is handled by the caller.
            warnings.simplefilter("ignore", ConvergenceWarning)
            km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=n_iter, random_state=seed).fit(x)
        labels, cent = km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)
    else:
        keys = item_keys(seed, np.arange(n))
        labels, cents = lloyd_segments(x, np.array([n]), np.array([k]), keys, n_iter)
        cent = cents[0, :k]
    labels, nonempty = consecutive(labels, k)
    return labels, np.ascontiguousarray(cent[nonempty], dtype=np.float32)


def _faiss_kmeans(x: np.ndarray, k: int, seed: int, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    if k == 1:  # faiss refuses k=1 on some versions and it is just the mean anyway
        return np.zeros(len(x), dtype=np.int64), x.mean(axis=0, keepdims=True)
    with faiss_single_thread():
        # min_points_per_centroid=1 silences "please provide at least ..." for small sets; a huge
        # max_points_per_centroid disables subsampling, which would change the algorithm.
        km = faiss.Kmeans(
            x.shape[1], k, niter=n_iter, seed=int(seed) & 0x7FFFFFFF, verbose=False,
            min_points_per_centroid=1, max_points_per_centroid=1 << 30,
        )
        km.train(x)
        _, lab = km.index.search(x, 1)
    return lab[:, 0].astype(np.int64), km.centroids
