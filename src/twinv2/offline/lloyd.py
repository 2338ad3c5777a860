"""Batched Lloyd k-means over many small sets at once, for Algorithm 1 of TWIN-V2 (§3.3.1).

The recursion calls k-means hundreds of times per user on small sets (20 to a few hundred items), so per-call
overhead matters more than asymptotic speed: sets of similar size are padded into one (S, N, D) batch and every
Lloyd round is a couple of batched matmuls. The algorithm is faiss's: initial centroids drawn among the points
(or k-means++), then up to ``n_iter`` rounds of assignment + mean update, optionally trained on a subsample.
"""

from __future__ import annotations

import numpy as np

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


def _lloyd_padded(
    p: np.ndarray, valid: np.ndarray, c: np.ndarray, kvalid: np.ndarray, n_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd on S padded sets at once: p (S, N, D), valid (S, N), initial c (S, K, D), kvalid (S, K).

    Returns labels (S, N) and centroids (S, K, D). A set stops once its centroids repeat bit for bit (then its
    assignment would repeat forever: Lloyd's fixed point), so batching does not change a result.
    """
    S, N, _ = p.shape
    K = c.shape[1]
    out_lab = np.zeros((S, N), dtype=np.int64)
    out_c = c.copy()
    act = np.arange(S)  # original index of each set still iterating
    vmask = None if valid.all() else valid[:, None, :]  # (S, 1, N)
    wk = np.arange(K, dtype=p.dtype)[None, None, :]  # (1, 1, K): one-hot -> label by a matmul
    # Unused slots of sets with fewer than K clusters: centroid 0 with a huge finite penalty never wins (an
    # infinite one can turn into NaN inside BLAS kernels that multiply padding zeros).
    kinf = np.where(kvalid, 0.0, 1e30).astype(p.dtype)
    c = np.where(kvalid[:, :, None], c, 0.0).astype(p.dtype)
    for it in range(n_iter):
        # Nearest centroid = argmax of x.c - |c|^2/2; the (S, K, N) layout keeps every reduction over K cheap.
        s = np.matmul(c, p.transpose(0, 2, 1))  # (S, K, N)
        s -= (0.5 * np.einsum("skd,skd->sk", c, c) + kinf)[:, :, None]
        hot = s == s.max(axis=1, keepdims=True)  # (S, K, N)
        if np.count_nonzero(hot) != hot.shape[0] * N:  # ties (duplicate points): keep the first max only
            hot[:, 1:] &= ~np.logical_or.accumulate(hot[:, :-1], axis=1)
        if vmask is not None:
            hot &= vmask
        onehot = hot.astype(p.dtype)
        cnt = onehot.sum(axis=2)[:, :, None]  # (S, K, 1)
        # An empty cluster keeps its centroid; it is dropped when labels are made consecutive.
        new = np.where(cnt > 0, np.matmul(onehot, p) / np.maximum(cnt, 1), c)  # (S, K, D)
        done = (new == c).all(axis=(1, 2)) if it < n_iter - 1 else np.ones(len(act), dtype=bool)
        c = new
        n_done = int(done.sum())
        # Retire finished sets in bulk: shrinking the batch copies p, so only when it pays off.
        if n_done == len(act) or n_done * 4 >= len(act):
            out_lab[act[done]] = np.matmul(wk, onehot[done])[:, 0].astype(np.int64)
            out_c[act[done]] = new[done]
            if n_done == len(act):
                break
            keep = ~done
            act, p, c, kinf = act[keep], p[keep], c[keep], kinf[keep]
            vmask = None if vmask is None else vmask[keep]
    return out_lab, out_c


def _lloyd2_padded(p: np.ndarray, valid: np.ndarray, c: np.ndarray, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_lloyd_padded` for K = 2, the binary variants' only case and most of adaptive's small sets.

    With two centroids the assignment is one side of a hyperplane, x.(c1 - c0) > (|c1|^2 - |c0|^2) / 2, and
    the second cluster's sum is the set's total minus the first's: half the work of the general loop.
    """
    S, N, _ = p.shape
    out_lab = np.zeros((S, N), dtype=np.int64)
    out_c = c.copy()
    act = np.arange(S)
    padded = not valid.all()
    validf = valid.astype(p.dtype)
    n_all = validf.sum(axis=1)[:, None]  # (S, 1)
    total = np.matmul(validf[:, None, :], p)[:, 0]  # (S, D)
    c0, c1 = c[:, 0], c[:, 1]
    for it in range(n_iter):
        w = c1 - c0
        b = 0.5 * np.einsum("sd,sd->s", w, c1 + c0)  # (|c1|^2 - |c0|^2) / 2
        lab = np.matmul(p, w[:, :, None])[:, :, 0] > b[:, None]  # (S, N); a tie goes to 0, the first maximum
        if padded:
            lab &= valid
        f = lab.astype(p.dtype)
        s1 = np.matmul(f[:, None, :], p)[:, 0]  # (S, D)
        n1 = f.sum(axis=1)[:, None]
        n0 = n_all - n1
        new1 = np.where(n1 > 0, s1 / np.maximum(n1, 1), c1)
        new0 = np.where(n0 > 0, (total - s1) / np.maximum(n0, 1), c0)
        if it < n_iter - 1:
            done = (new1 == c1).all(axis=1) & (new0 == c0).all(axis=1)
        else:
            done = np.ones(len(act), dtype=bool)
        c0, c1 = new0, new1
        n_done = int(done.sum())
        if n_done == len(act) or n_done * 4 >= len(act):
            out_lab[act[done]] = lab[done]
            out_c[act[done], 0], out_c[act[done], 1] = c0[done], c1[done]
            if n_done == len(act):
                break
            keep = ~done
            act, p, valid, n_all, total = act[keep], p[keep], valid[keep], n_all[keep], total[keep]
            c0, c1 = c0[keep], c1[keep]
    return out_lab, out_c


def _seed_random(p: np.ndarray, kp: np.ndarray, K: int) -> np.ndarray:
    """faiss-style init: the K members with the smallest keys, in key order. p (S, N, D), kp (S, N) -> (S, K, D).

    K argmins along the contiguous axis beat a per-row partial sort for the small K used here, and give the
    seeds in key order, so a set's result does not depend on its bucket's padding.
    """
    S = len(kp)
    ar = np.arange(S)
    kp = kp.copy()
    seeds = np.empty((S, K), dtype=np.int64)
    for j in range(K):
        seeds[:, j] = kp.argmin(axis=1)
        kp[ar, seeds[:, j]] = _U64_MAX
    return p[ar[:, None], seeds]


def seed_kmeanspp(p: np.ndarray, valid: np.ndarray, kp: np.ndarray, K: int) -> np.ndarray:
    """k-means++ init (Arthur & Vassilvitskii 2007) on S padded sets at once -> (S, K, D).

    The first seed is the member with the smallest key; each next one is drawn with probability proportional
    to its squared distance to the nearest seed so far, by an exponential race (argmin of E_i / w_i with
    E_i ~ Exp(1) from the hashed keys), which needs no per-set cumulative sums.
    """
    S, N, D = p.shape
    ar = np.arange(S)
    c = np.empty((S, K, D), dtype=p.dtype)
    c[:, 0] = p[ar, np.argmin(kp, axis=1)]
    xx = np.einsum("snd,snd->sn", p, p)  # (S, N)
    best = np.full((S, N), np.inf, dtype=np.float64)
    for j in range(K):
        if j:
            u = ((splitmix64(kp ^ np.uint64(j)) >> np.uint64(11)) + np.uint64(1)) * 2.0**-53  # (0, 1]
            w = np.where(valid, best, 0.0)
            with np.errstate(divide="ignore"):
                c[:, j] = p[ar, np.argmin(-np.log(u) / w, axis=1)]  # all-zero w (duplicates): member 0
        cj = c[:, j]  # (S, D)
        d = xx - 2.0 * np.matmul(p, cj[:, :, None])[:, :, 0] + np.einsum("sd,sd->s", cj, cj)[:, None]
        np.minimum(best, np.maximum(d, 0.0), out=best)
    return c


def lloyd_segments(
    x: np.ndarray,
    rows: np.ndarray,
    sizes: np.ndarray,
    ks: np.ndarray,
    keys: np.ndarray,
    n_iter: int = 20,
    init: str = "random",
    max_points_per_centroid: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Independent k-means on many sets of rows of ``x``, batched.

    Args:
        x: (m, D) float32 points.
        rows: (n,) rows of ``x`` of all sets, concatenated; set s is ``rows[sum(sizes[:s]) : sum(sizes[:s+1])]``.
        sizes: (S,) set sizes, each >= 1.
        ks: (S,) clusters per set, ``1 <= ks[s] <= sizes[s]``.
        keys: (n,) uint64 aligned with ``rows``: the randomness of the init and of the subsample.
        n_iter: maximum Lloyd rounds (a set stops early once its assignment no longer changes).
        init: ``"k-means++"`` or ``"random"`` (the ``ks[s]`` members with the smallest keys, as faiss does).
        max_points_per_centroid: as faiss's parameter of that name: a set with more than this many points per
            cluster is trained on a uniform random subsample of about that size (its members with the smallest
            keys), then every member is assigned to the trained centroids and the centroids are recomputed as
            member means (one more Lloyd round on all members). None trains on every member.

    Returns:
        labels (n,) int64 in ``0..ks[s]-1`` within each set (some may be empty), and centroids
        (S, max(ks), D) with NaN in the slots past ``ks[s]``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    ks = np.asarray(ks, dtype=np.int64)
    assert np.all(sizes >= 1) and np.all(ks >= 1) and np.all(ks <= sizes)
    big = sizes > (max_points_per_centroid or np.inf) * ks
    if not big.any():
        return _lloyd_buckets(x, rows, sizes, ks, keys, n_iter, init)
    setid = np.repeat(np.arange(len(sizes)), sizes)
    # Keys are uniform 64-bit hashes: keeping key / 2^64 < m / n is a Bernoulli(m / n) sample of ~m members.
    frac = np.where(big, max_points_per_centroid * ks / sizes, 1.0)
    keep = (keys >> np.uint64(11)).astype(np.float64) * 2.0**-53 < frac[setid]
    n_sub = np.bincount(setid[keep], minlength=len(sizes))
    short = big & (n_sub < ks)  # a sample too small to seed k clusters (never in practice): use all members
    keep |= short[setid]
    n_sub = np.where(short, sizes, n_sub)
    lab_sub, cents = _lloyd_buckets(x, rows[keep], n_sub, ks, keys[keep], n_iter, init)
    labels = np.empty(len(rows), dtype=np.int64)
    labels[keep] = lab_sub  # final for sets that were not subsampled
    b = np.flatnonzero(big)
    sel = big[setid]
    labels[sel], cents[b] = _lloyd_buckets(x, rows[sel], sizes[b], ks[b], keys[sel], 1, init, c_init=cents[b])
    return labels, cents


def _lloyd_buckets(
    x: np.ndarray,
    rows: np.ndarray,
    sizes: np.ndarray,
    ks: np.ndarray,
    keys: np.ndarray,
    n_iter: int,
    init: str,
    c_init: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`lloyd_segments` on every member; ``c_init`` (S, max(ks), D) replaces the seeding when given."""
    S = len(sizes)
    starts = np.cumsum(sizes) - sizes
    labels = np.empty(len(rows), dtype=np.int64)
    cents = np.full((S, int(ks.max(initial=1)), x.shape[1]), np.nan, dtype=x.dtype)
    # Bucket sets by size octave so padding wastes at most half of a bucket's work; two-cluster sets get
    # their own buckets so they always take the same (faster) code path.
    bucket = np.ceil(np.log2(sizes)).astype(np.int64) * 2 + (ks == 2)
    order = np.argsort(bucket, kind="stable")
    bounds = np.flatnonzero(np.diff(bucket[order])) + 1
    for sets in np.split(order, bounds):
        bs, bk = sizes[sets], ks[sets]
        N, K = int(bs.max()), int(bk.max())
        pos = np.arange(N)
        valid = pos < bs[:, None]  # (nb, N)
        # Padding slots point at the set's first member: real data, masked out of every update.
        src = starts[sets][:, None] + np.where(valid, pos, 0)  # (nb, N) index into rows/keys
        p = np.take(x, rows[src], axis=0)  # (nb, N, D)
        if c_init is not None:
            c0 = c_init[sets, :K]
        elif init == "k-means++":
            c0 = seed_kmeanspp(p, valid, np.where(valid, keys[src], _U64_MAX), K)
        else:
            c0 = _seed_random(p, np.where(valid, keys[src], _U64_MAX), K)
        kvalid = np.arange(K) < bk[:, None]  # (nb, K)
        if K == 2 and kvalid.all():
            lab, c = _lloyd2_padded(p, valid, c0, n_iter)
        else:
            lab, c = _lloyd_padded(p, valid, c0, kvalid, n_iter)
        labels[src[valid]] = lab[valid]
        cents[sets, :K] = np.where(kvalid[:, :, None], c, np.nan)
    return labels, cents
