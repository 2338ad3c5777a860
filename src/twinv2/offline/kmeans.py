"""One k-means call with a choice of backend (faiss, numpy, sklearn), for TWIN-V2's Algorithm 1 (§3.3.1).

All backends run the same algorithm up to random draws and float rounding: initial centroids drawn among the
points (``init="random"``, faiss's own; or k-means++), then ``n_iter`` rounds of assignment + mean update.
The sklearn backend (always k-means++) is the reference row of the benchmarks.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np

from .lloyd import augment, item_keys, lloyd_segments, seed_kmeanspp

BACKENDS = ("faiss", "numpy", "sklearn")
INITS = ("random", "k-means++")


@contextlib.contextmanager
def faiss_single_thread() -> Iterator[None]:
    """Run faiss with one OpenMP thread, then restore the previous setting.

    Measured: two OpenMP threads make this many-small-calls recursion several times slower, and the offline
    job parallelises over users with processes instead. Restoring keeps other
    faiss users in the same process (e.g. a global 10,000-cluster k-means) multi-threaded.
    """
    import faiss

    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(prev)


def consecutive(labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Relabel ``labels`` in ``0..k-1`` to ``0..k'-1`` over the non-empty clusters only, keeping their order.

    Returns the new labels and the (k,) bool mask of non-empty old clusters.
    """
    nonempty = np.bincount(labels, minlength=k) > 0
    remap = np.cumsum(nonempty) - 1
    return remap[labels], nonempty


def kmeans(
    x: np.ndarray,
    k: int,
    seed: int,
    n_iter: int = 20,
    backend: str = "faiss",
    init: str = "random",
    max_points_per_centroid: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the rows of ``x`` into at most ``k`` clusters.

    Args:
        x: (n, d) float32 points, n >= 1.
        k: requested clusters, >= 1; more than ``n`` is clamped to ``n``.
        seed: random seed of the initial centroids.
        n_iter: Lloyd rounds.
        backend: ``"faiss"`` (``faiss.Kmeans``, one thread), ``"numpy"`` (:func:`lloyd_segments`) or
            ``"sklearn"`` (``KMeans(init="k-means++", n_init=1)``, the reference row of the benchmarks).
        init: ``"random"`` (k members drawn uniformly, faiss's own init) or ``"k-means++"``; faiss and numpy
            only, sklearn always uses k-means++.
        max_points_per_centroid: faiss's parameter: with more than ``k`` times this many points, train on a
            random subsample of that size, then assign every point to the trained centroids. None (default)
            trains on all points. faiss and numpy only.

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
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    check_max_points(max_points_per_centroid)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty (n, d) array, got shape {x.shape}")
    n, d = x.shape
    k = int(min(k, n))
    if backend == "faiss":
        labels, cent = _faiss_kmeans(x, k, seed, n_iter, init, max_points_per_centroid)
    elif backend == "sklearn":
        from sklearn.cluster import KMeans
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            # Duplicate points make fewer than k distinct clusters; that case is handled by the caller.
            warnings.simplefilter("ignore", ConvergenceWarning)
            km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=n_iter, random_state=seed & 0xFFFFFFFF)
            km.fit(x)
        labels, cent = km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)
    else:
        keys = item_keys(seed, np.arange(n))
        labels, cents = lloyd_segments(
            augment(x), np.arange(n), np.array([n]), np.array([k]), keys, n_iter, init, max_points_per_centroid
        )
        cent = cents[0, :k]
    labels, nonempty = consecutive(labels, k)
    return labels, np.ascontiguousarray(cent[nonempty], dtype=np.float32)


def check_max_points(max_points_per_centroid: int | None) -> None:
    """Raise ValueError unless ``max_points_per_centroid`` is None or an integer >= 1."""
    m = max_points_per_centroid
    if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1):
        raise ValueError(f"max_points_per_centroid must be None or an integer >= 1, got {m!r}")


def _faiss_kmeans(
    x: np.ndarray, k: int, seed: int, n_iter: int, init: str, max_points_per_centroid: int | None
) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    if k == 1:  # faiss refuses k=1 on some versions and it is just the mean anyway
        return np.zeros(len(x), dtype=np.int64), x.mean(axis=0, keepdims=True)
    with faiss_single_thread():
        # min_points_per_centroid=1 silences "WARNING clustering N points to K centroids" for small sets;
        # a huge max_points_per_centroid is faiss's way to say "no subsampling".
        km = faiss.Kmeans(
            x.shape[1], k, niter=n_iter, seed=int(seed) & 0x7FFFFFFF, verbose=False,
            min_points_per_centroid=1, max_points_per_centroid=max_points_per_centroid or 1 << 30,
        )
        if init == "k-means++":
            p, valid = x[None], np.ones((1, len(x)), dtype=bool)
            c0 = seed_kmeanspp(p, valid, item_keys(seed, np.arange(len(x)))[None], k)[0]
            km.train(x, init_centroids=c0)
        else:
            km.train(x)
        _, lab = km.index.search(x, 1)
    return lab[:, 0].astype(np.int64), km.centroids
