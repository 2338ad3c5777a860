"""Hierarchical clustering of one user's life cycle (TWIN-V2 §3.3.1, Algorithm 1).

Algorithm 1 per completion group: a FIFO queue starts with the whole group; pop V; if |V| < γ it is a final
cluster, else k-means splits V into δ parts which are all pushed back. A FIFO queue pops every set of recursion
level l before any set of level l+1, and splitting one set never depends on another, so we pop a whole level at
once ("wave") and run its k-means calls batched. Pop order, and hence the result, is exactly the queue's.

Every set is a contiguous segment of one permutation ``perm`` of the user's behaviours; splitting a set just
reorders its segment by part label, so no per-item Python work is done.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .grouping import DEFAULT_EDGES, completion_groups, validate_edges
from .kmeans import BACKENDS, INITS, check_max_points, kmeans
from .lloyd import augment, item_keys, lloyd_segments
from .virtual_items import segment_sums

VARIANTS = ("adaptive", "binary", "balanced_binary")
# Sets at least this big go to faiss with backend "faiss" (no longer the default). Measured on one core against
# the GEMM-based numpy Lloyd of lloyd.py (same algorithm): one set of 5,800 items, δ = 13, 20 rounds: faiss
# 28.6 ms, numpy 9.0 ms; a whole 10^6-behaviour user: 7.9 s with faiss on these sets, 5.1 s CPU all numpy.
FAISS_MIN_SET = 4096


def _excl_cumsum(a: np.ndarray) -> np.ndarray:
    out = np.zeros(len(a), dtype=np.int64)
    np.cumsum(a[:-1], out=out[1:])
    return out


def _stable_order(key: np.ndarray, n_keys: int) -> np.ndarray:
    """Stable argsort of small non-negative int keys; 16-bit keys get numpy's O(n) radix sort."""
    return np.argsort(key.astype(np.uint16) if n_keys <= 1 << 16 else key, kind="stable")


class HierarchicalClusterer:
    """Algorithm 1 of TWIN-V2: completion-ratio groups, then recursive k-means until clusters are below γ.

    Args:
        gamma: maximum cluster size is ``gamma - 1`` (paper: |V| < γ is final; γ = 20 in production).
        delta_exponent: adaptive branching ``δ = max(2, ⌊|V|^delta_exponent⌋)`` (paper: 0.3).
        variant: ``"adaptive"`` (TWIN-V2), ``"binary"`` (δ = 2) or ``"balanced_binary"`` (δ = 2 with halves
            whose sizes differ by at most one), the three rows of the paper's Table 4.
        edges: completion-ratio bin edges, see :func:`~twinv2.offline.grouping.completion_groups`.
        backend: ``"numpy"`` (default: batched Lloyd, :mod:`~twinv2.offline.lloyd`), ``"faiss"`` (faiss for
            sets of at least ``FAISS_MIN_SET`` items, numpy below) or ``"sklearn"`` (one ``KMeans`` per set; a
            slow reference). Default numpy since 2026-12-02 (was faiss): same algorithm, same accuracy (8 users
            at T = 14,500: 0.8823 faiss, 0.8824 numpy), faster on one core at every set size (see
            ``FAISS_MIN_SET``). With it and the defaults below, `twinv2 bench cluster` on this 2-core box at
            load ~1: adaptive 89.6 -> 40.7 ms per user, accuracy 0.8820 -> 0.8821 (scikit-learn: 0.8830).
        n_iter: Lloyd rounds per k-means call, at most: a set stops as soon as its assignment repeats. 20
            stays the default, with no approximate stop: at the top levels Lloyd still moves after 20 rounds,
            and (20 users at T = 14,500) 10 rounds cost 0.0005-0.0007 accuracy for ~15% of the time, stopping
            once <= 0.5% of a set's points move cost 0.0002 for ~5%, and scikit-learn's tolerance (centroid
            shift <= tol x variance) saved no rounds at tol = 1e-4 and under 5% at 1e-2.
        seed: seeds every k-means call (through the set's level and its items' indices).
        init: initial centroids of each k-means call: ``"random"`` (members drawn uniformly, as faiss does) or
            ``"k-means++"`` (a little more accurate, slower); the sklearn backend always uses k-means++.
        max_points_per_centroid: faiss's subsampling: a set with more than ``δ`` times this many items trains
            its k-means on a random subsample of that size, then assigns every item (one more round on all of
            them); None trains on all items. Default 256 (faiss's own; was None): it halves a 10^6-behaviour
            user (10.1 -> 5.1 s CPU, accuracy 0.9823 both) and touches only the top level at T = 14,500 (~10%
            faster, accuracy 0.8827 vs 0.8828 over 20 users); 128 would cost 0.0006, 64 0.0011.

    Attributes:
        labels_: (T,) int64 cluster of each behaviour, clusters numbered 0..C-1 by group, then queue-pop order.
        n_clusters_: C.
        group_of_cluster_: (C,) int64 completion group (``len(edges)+1`` = unknown ratio).
        centroids_: (C, D) float32 mean embedding of each cluster's members.
        n_splits_: number of k-means calls (sets split) during ``fit``.
    """

    def __init__(
        self,
        gamma: int = 20,
        delta_exponent: float = 0.3,
        variant: str = "adaptive",
        edges: Sequence[float] = DEFAULT_EDGES,
        backend: str = "numpy",
        n_iter: int = 20,
        seed: int = 0,
        init: str = "random",
        max_points_per_centroid: int | None = 256,
    ) -> None:
        if isinstance(gamma, bool) or not isinstance(gamma, (int, np.integer)) or gamma < 2:
            raise ValueError(f"gamma must be an integer >= 2, got {gamma!r}")
        if not (0.0 < float(delta_exponent) <= 1.0):
            raise ValueError(f"delta_exponent must be in (0, 1], got {delta_exponent!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        validate_edges(edges)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 1:
            raise ValueError(f"n_iter must be an integer >= 1, got {n_iter!r}")
        if not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        check_max_points(max_points_per_centroid)
        self.gamma = gamma
        self.delta_exponent = delta_exponent
        self.variant = variant
        self.edges = tuple(edges)
        self.backend = backend
        self.n_iter = n_iter
        self.seed = seed
        self.init = init
        self.max_points_per_centroid = max_points_per_centroid

    def deltas(self, sizes: np.ndarray) -> np.ndarray:
        """δ per set of the given sizes (all >= γ): ⌊|V|^e⌋ (at least 2) for adaptive, else 2."""
        sizes = np.asarray(sizes, dtype=np.int64)
        if self.variant == "adaptive":
            d = np.floor(sizes.astype(np.float64) ** float(self.delta_exponent)).astype(np.int64)
            return np.minimum(np.maximum(d, 2), sizes)
        return np.full(len(sizes), 2, dtype=np.int64)

    def fit(self, embeddings: np.ndarray, play_ms: np.ndarray, duration_ms: np.ndarray) -> HierarchicalClusterer:
        """Cluster one user's T behaviours; ``embeddings`` (T, D), ``play_ms`` and ``duration_ms`` (T,)."""
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"embeddings must be (T, D), got shape {x.shape}")
        T, D = x.shape
        if np.shape(play_ms) != (T,) or np.shape(duration_ms) != (T,):
            raise ValueError(
                f"play_ms {np.shape(play_ms)} and duration_ms {np.shape(duration_ms)} must be ({T},) like embeddings"
            )
        if not np.isfinite(x).all():
            raise ValueError("embeddings contain NaN or inf")
        xa = augment(x)  # (T+1, D+1)
        groups = completion_groups(play_ms, duration_ms, self.edges)
        perm = np.argsort(groups, kind="stable")
        gsize = np.bincount(groups, minlength=len(self.edges) + 2)
        keep = gsize > 0  # empty groups produce no cluster
        q_start, q_size, q_group = _excl_cumsum(gsize)[keep], gsize[keep], np.flatnonzero(keep)
        finals: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        level, n_splits = 0, 0
        while len(q_size):
            small = q_size < self.gamma
            finals.append((q_start[small], q_size[small], q_group[small]))
            b_start, b_size, b_group = q_start[~small], q_size[~small], q_group[~small]
            if not len(b_size):
                break
            n_splits += len(b_size)
            src = np.repeat(b_start - _excl_cumsum(b_size), b_size) + np.arange(int(b_size.sum()))
            idx = perm[src]
            setid = np.repeat(np.arange(len(b_size)), b_size)
            lab, nparts = self._split(xa, idx, b_size, level)
            kmax = int(nparts.max())
            key = setid * kmax + lab
            # Children are contiguous and in part order, as Algorithm 1 pushes them on the queue.
            perm[src] = idx[_stable_order(key, len(b_size) * kmax)]
            counts = np.bincount(key, minlength=len(b_size) * kmax).reshape(-1, kmax)
            c_size = counts[np.arange(kmax) < nparts[:, None]]
            c_start = np.repeat(b_start, nparts) + (_excl_cumsum(c_size) - np.repeat(_excl_cumsum(b_size), nparts))
            q_start, q_size, q_group = c_start, c_size, np.repeat(b_group, nparts)
            level += 1
        f_start = np.concatenate([f[0] for f in finals]) if finals else np.zeros(0, np.int64)
        f_size = np.concatenate([f[1] for f in finals]) if finals else np.zeros(0, np.int64)
        f_group = np.concatenate([f[2] for f in finals]) if finals else np.zeros(0, np.int64)
        # Cluster ids: by group, then pop order (levels were appended in pop order, so a stable sort suffices).
        order = np.argsort(f_group, kind="stable")
        f_start, f_size, f_group = f_start[order], f_size[order], f_group[order]
        C = len(f_size)
        by_pos = np.argsort(f_start, kind="stable")  # segments in perm order cover perm exactly once
        labels = np.empty(T, dtype=np.int64)
        labels[perm] = np.repeat(by_pos, f_size[by_pos])
        centroids = np.zeros((C, D), dtype=np.float32)
        if C:
            centroids[by_pos] = segment_sums(x, perm, f_start[by_pos]) / f_size[by_pos, None]
        self.labels_ = labels
        self.n_clusters_ = C
        self.group_of_cluster_ = f_group.astype(np.int64)
        self.centroids_ = centroids
        self.n_splits_ = n_splits
        return self

    def _split(self, xa: np.ndarray, idx: np.ndarray, sizes: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Split every set of one queue level; set s is points ``idx[sum(sizes[:s]) : sum(sizes[:s+1])]``.

        ``xa`` (T+1, D+1) holds the points as :func:`~twinv2.offline.lloyd.augment` lays them out. Returns
        local labels (n,) numbered 0..parts-1 per set with no empty part, and parts (S,) >= 2.
        """
        x = xa[:-1, :-1]  # (T, D) view
        S = len(sizes)
        ks = self.deltas(sizes)
        setid = np.repeat(np.arange(S), sizes)
        starts = _excl_cumsum(sizes)
        keys = item_keys(int(self.seed), idx, salt=level)
        kmax = int(ks.max())
        n = len(idx)
        lab = np.empty(n, dtype=np.int64)
        cents = np.zeros((S, kmax, x.shape[1]), dtype=np.float32)
        big = sizes >= FAISS_MIN_SET if self.backend == "faiss" else np.full(S, self.backend == "sklearn")
        if not big.all():
            rest = np.flatnonzero(~big)
            sel = np.isin(setid, rest) if big.any() else slice(None)
            lab[sel], c = lloyd_segments(xa, idx[sel], sizes[rest], ks[rest], keys[sel], self.n_iter, self.init,
                                         self.max_points_per_centroid)
            if self.variant == "balanced_binary":
                cents[rest, : c.shape[1]] = np.nan_to_num(c)
        for s in np.flatnonzero(big):  # few, large sets: call overhead is negligible here
            a, b = starts[s], starts[s] + sizes[s]
            xs = np.take(x, idx[a:b], axis=0)
            lab[a:b], c = kmeans(xs, int(ks[s]), int(keys[a]) & 0x7FFFFFFF, self.n_iter, self.backend, self.init,
                                 self.max_points_per_centroid)
            cents[s, : len(c)] = c  # consecutive labels: slot j is part j
            cents[s, len(c) :] = c[-1]  # a set k-means could not split gets a zero projection below
        if self.variant == "balanced_binary":
            # Equal halves: order by projection on the centroid difference, cut at the median. Coinciding
            # centroids give a zero projection and the stable order then cuts by position, which still splits.
            proj = np.einsum("nd,nd->n", np.take(x, idx, axis=0), (cents[:, 1] - cents[:, 0])[setid])
            order = np.lexsort((proj, setid))
            rank = np.empty(n, dtype=np.int64)
            rank[order] = np.arange(n) - starts[setid[order]]
            return (rank >= (sizes // 2)[setid]).astype(np.int64), np.full(S, 2, dtype=np.int64)
        # Renumber non-empty parts consecutively per set.
        nonempty = np.bincount(setid * kmax + lab, minlength=S * kmax).reshape(S, kmax) > 0
        nparts = nonempty.sum(axis=1)
        lab = (np.cumsum(nonempty, axis=1) - 1)[setid, lab]
        stuck = nparts < 2
        if stuck.any():
            # k-means cannot split coinciding points; cut by position into δ near-equal chunks so the
            # recursion always makes progress (every part is strictly smaller than its parent).
            m = stuck[setid]
            pos = np.arange(n) - starts[setid]
            lab[m] = (pos[m] * ks[setid[m]]) // sizes[setid[m]]
            nparts = np.where(stuck, ks, nparts)
        return lab, nparts
