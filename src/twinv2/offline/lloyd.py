"""Batched Lloyd k-means over many small sets at once, for Algorithm 1 of TWIN-V2 (§3.3.1).

The recursion calls k-means hundreds of times per user on small sets (20 to a few hundred items), so per-call
overhead matters more than asymptotic speed: sets of similar size are padded into one (S, N, D) batch and every
Lloyd round is two batched GEMMs. Scores x.c - |c|^2/2 come from one GEMM against the points with a row of
ones (``augment``); the member sums and counts from one GEMM of the one-hot assignment against the points with
a column of ones. The algorithm is faiss's: initial centroids drawn among the points (or k-means++), then up to
``n_iter`` rounds of assignment + mean update, stopping early at the fixed point, optionally trained on a
subsample.
"""

from __future__ import annotations

import numpy as np

_U64_MAX = np.iinfo(np.uint64).max
# A Lloyd round goes through blocks of sets x points whose scores (sets x K x points) stay in cache: points in
# chunks of CHUNK, sets in groups of at most GROUP_ELEMS scores. Measured, 20 rounds on one core: the top-level
# bucket of a T = 14,500 user (2 sets x 6,627 items, K = 14) 10.8 ms at CHUNK 1,024, 14.0 at 4,096, 15.0 whole;
# 500 sets x 512 items, K = 8 (a level of a 10^6-behaviour user) ~200 ms in groups of 2^16 scores, 245 in one.
CHUNK = 1024
GROUP_ELEMS = 1 << 16


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


def _scoring(c: np.ndarray, kvalid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids c (S, K, D) as scored by :func:`_assign`: ca (S, K, D+1), the last column to be filled by
    :func:`_constant`, and kinf (S, K), the penalty of unused slots (sets with fewer than K clusters)."""
    S, K, D = c.shape
    # An unused slot is centroid 0 with a huge finite penalty, so it never wins (an infinite one can turn into
    # NaN inside BLAS kernels that multiply padding zeros).
    kinf = np.where(kvalid, 0.0, 1e30).astype(np.float32)
    ca = np.zeros((S, K, D + 1), dtype=np.float32)
    ca[:, :, :-1] = np.where(kvalid[:, :, None], c, 0.0)
    return ca, kinf


def _constant(ca: np.ndarray, kinf: np.ndarray) -> None:
    """ca's last column = -(|c|^2 / 2 + penalty), so that x.c - |c|^2/2 comes out of one GEMM."""
    c = ca[:, :, :-1]
    ca[:, :, -1] = np.einsum("skd,skd->sk", c, c) * -0.5 - kinf


def _assign(ca: np.ndarray, pt: np.ndarray, pa: np.ndarray, m: np.ndarray, lab: np.ndarray, buf: np.ndarray,
            hot_buf: np.ndarray) -> np.ndarray:
    """One block of an assignment step: sets ca (n, K, D+1) against their points pt (n, D+1, w) / pa (n, w, D+1).

    Writes each point's nearest centroid into lab (n, 1, w) and returns the (n, K, D+1) member sums, then counts
    (pa's last column is 1 for members, 0 for padding); m (n,) are the members per set, to detect ties. buf and
    hot_buf are scratch of at least 2 n K w + n w floats and n K w bools.
    """
    n, K, _ = ca.shape
    w = pt.shape[2]
    e = n * K * w
    s, onehot = buf[:e].reshape(n, K, w), buf[e : 2 * e].reshape(n, K, w)
    top, hot = buf[2 * e : 2 * e + n * w].reshape(n, 1, w), hot_buf[:e].reshape(n, K, w)
    # Nearest centroid = argmax of x.c - |c|^2/2, the constant riding in the GEMM on pt's row of ones; the
    # (n, K, w) layout keeps every reduction over K cheap.
    np.matmul(ca, pt, out=s)
    np.max(s, axis=1, keepdims=True, out=top)
    np.equal(s, top, out=hot)
    onehot[...] = hot
    part = np.matmul(onehot, pa)
    tied = part[:, :, -1].sum(axis=1) != m
    if tied.any():  # ties (duplicate points): keep the first maximum only, in the sets that have them
        t = np.flatnonzero(tied)
        h = hot[t]
        h[:, 1:] &= ~np.logical_or.accumulate(h[:, :-1], axis=1)
        onehot[t] = h
        part[t] = np.matmul(onehot[t], pa[t])
    np.matmul(np.arange(K, dtype=np.float32)[None, None, :], onehot, out=lab)
    return part


def _means(sums: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Member means from sums (n, K, D+1) (counts last); an empty cluster keeps its centroid c (n, K, D) (it is
    dropped when labels are made consecutive)."""
    cnt = sums[:, :, -1:]
    return np.where(cnt > 0, sums[:, :, :-1] / np.maximum(cnt, 1), c)


def _lloyd_padded(
    pa: np.ndarray, pt: np.ndarray, c: np.ndarray, kvalid: np.ndarray, n_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd on S padded sets at once, from initial centroids c (S, K, D); kvalid (S, K) marks used slots.

    pa (S, N, D+1) are the points gathered from :func:`augment`, pt (S, D+1, N) their transpose with a last
    row of ones. Each set runs at most ``n_iter`` rounds and stops early once its centroids repeat bit for bit
    (then its assignment would repeat forever: Lloyd's fixed point). A set's rounds depend on nothing but the
    set, so batching does not change a result. Returns labels (S, N) and centroids (S, K, D).
    """
    S, N, D1 = pa.shape
    K = c.shape[1]
    out_lab = np.zeros((S, N), dtype=np.int64)
    out_c = c.copy()
    act = np.arange(S)  # original index of each set still iterating
    ca, kinf = _scoring(c, kvalid)
    # A round goes through blocks of sets x points (see GROUP_ELEMS) with scratch reused every round: fresh
    # large arrays cost more in page faults than the arithmetic (1.06 vs 0.79 ms a round on 2 x 6,627, K = 14).
    spans = [(a, min(a + CHUNK, N)) for a in range(0, N, CHUNK)]
    G = max(1, GROUP_ELEMS // (K * spans[0][1]))  # sets per block
    buf = np.empty(G * spans[0][1] * (2 * K + 1), dtype=np.float32)
    hot_buf = np.empty(G * K * spans[0][1], dtype=bool)
    lab = np.empty((S, 1, N), dtype=np.float32)  # labels of the latest assignment, rewritten every round
    members = [pa[:, a:b, -1].sum(axis=1) for a, b in spans]  # (S,) per chunk (exact: integers < 2^24)
    for it in range(n_iter):
        n = len(act)
        _constant(ca, kinf)
        sums = np.empty((n, K, D1), dtype=np.float32)
        for g0 in range(0, n, G):
            g = slice(g0, min(n, g0 + G))
            for j, ((a, b), m) in enumerate(zip(spans, members)):
                part = _assign(ca[g], pt[g, :, a:b], pa[g, a:b], m[g], lab[g, :, a:b], buf, hot_buf)
                if j:
                    sums[g] += part
                else:
                    sums[g] = part
        c = ca[:, :, :-1]
        new = _means(sums, c)  # (n, K, D)
        done = (new == c).all(axis=(1, 2)) | (it + 1 == n_iter)
        ca[:, :, :-1] = new
        n_done = int(done.sum())
        # Retire finished sets in bulk: shrinking the batch copies the points, so only when it pays off.
        if n_done == n or n_done * 4 >= n:
            out_lab[act[done]] = lab[:n][done, 0]
            out_c[act[done]] = new[done]
            if n_done == n:
                break
            keep = ~done
            act, pa, pt, ca, kinf = act[keep], pa[keep], pt[keep], ca[keep], kinf[keep]
            members = [m[keep] for m in members]
    return out_lab, out_c


def _assign_streamed(xa: np.ndarray, idx: np.ndarray, c: np.ndarray, kvalid: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One Lloyd round (assignment to c (S, K, D), then member means) on the points ``xa[idx]``, idx (S, N),
    gathered and transposed a chunk at a time instead of whole: the final pass over every member of a
    subsampled set, where the whole (S, N, D+1) copies would be used once (and on 10^6 behaviours cost more in
    page faults than the round itself: 1.1 vs 0.3 s). Returns labels (S, N) and centroids (S, K, D)."""
    S, N = idx.shape
    K = c.shape[1]
    ca, kinf = _scoring(c, kvalid)
    _constant(ca, kinf)
    w0 = min(CHUNK, N)
    G = max(1, GROUP_ELEMS // (K * w0))  # sets per block
    buf, hot_buf = np.empty(G * w0 * (2 * K + 1), dtype=np.float32), np.empty(G * K * w0, dtype=bool)
    lab = np.empty((S, 1, N), dtype=np.float32)
    sums = np.zeros((S, K, xa.shape[1]), dtype=np.float32)
    for g0 in range(0, S, G):
        g = slice(g0, min(S, g0 + G))
        for a in range(0, N, CHUNK):
            pa = np.take(xa, idx[g, a : a + CHUNK], axis=0)  # (G, w, D+1)
            m = pa[:, :, -1].sum(axis=1)
            sums[g] += _assign(ca[g], _transpose(pa), pa, m, lab[g, :, a : a + CHUNK], buf, hot_buf)
    return lab[:, 0].astype(np.int64), _means(sums, ca[:, :, :-1])


def _lloyd2_padded(pa: np.ndarray, c: np.ndarray, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_lloyd_padded` for K = 2, the binary variants' only case and most of adaptive's small sets.

    With two centroids the assignment is one side of a hyperplane, x.(c1 - c0) > (|c1|^2 - |c0|^2) / 2, and
    the second cluster's sum is the set's total minus the first's: half the work of the general loop.
    """
    S, N, D1 = pa.shape
    out_lab = np.zeros((S, N), dtype=np.int64)
    out_c = c.copy()
    act = np.arange(S)
    total = pa.sum(axis=1)  # (S, D+1): sum of the members, then their number
    c0, c1 = c[:, 0], c[:, 1]
    wb = np.empty((S, D1, 1), dtype=pa.dtype)  # (S, D+1, 1): c1 - c0, then -(|c1|^2 - |c0|^2) / 2
    for it in range(n_iter):
        wb[:, :-1, 0] = c1 - c0
        wb[:, -1, 0] = np.einsum("sd,sd->s", wb[:, :-1, 0], c1 + c0) * -0.5
        # pa's last column is 1 for members: a tie goes to 0 (the first maximum), padding gets 0.
        f = (np.matmul(pa, wb) > 0).astype(pa.dtype).transpose(0, 2, 1)  # (S, 1, N)
        s1 = np.matmul(f, pa)[:, 0]  # (S, D+1)
        n1 = s1[:, -1:]
        n0 = total[:, -1:] - n1
        new1 = np.where(n1 > 0, s1[:, :-1] / np.maximum(n1, 1), c1)
        new0 = np.where(n0 > 0, (total[:, :-1] - s1[:, :-1]) / np.maximum(n0, 1), c0)
        done = ((new1 == c1) & (new0 == c0)).all(axis=1) | (it + 1 == n_iter)
        c0, c1 = new0, new1
        n_done = int(done.sum())
        if n_done == len(act) or n_done * 4 >= len(act):
            out_lab[act[done]] = f[done, 0]
            out_c[act[done], 0], out_c[act[done], 1] = c0[done], c1[done]
            if n_done == len(act):
                break
            keep = ~done
            act, pa, total, wb = act[keep], pa[keep], total[keep], wb[keep]
            c0, c1 = c0[keep], c1[keep]
    return out_lab, out_c


def augment(x: np.ndarray) -> np.ndarray:
    """(m, D) points -> (m+1, D+1) float32, the layout :func:`lloyd_segments` reads: a last column of ones and
    a last row of zeros (the padding point).

    Gathered into a bucket, padding slots point at the zero row, so one GEMM of a one-hot assignment against
    the bucket gives the member sums and counts with no masking. Built once per user, not once per call.
    """
    m, D = x.shape
    if m >= 1 << 24:
        # Counts are summed in float32 inside the GEMMs, exact only below 2^24.
        raise ValueError(f"at most {(1 << 24) - 1:,} points per k-means input, got {m:,}")
    xa = np.zeros((m + 1, D + 1), dtype=np.float32)
    xa[:m, :D] = x
    xa[:m, D] = 1.0
    return xa


def _transpose(pa: np.ndarray) -> np.ndarray:
    """pa (S, N, D+1) -> pt (S, D+1, N) contiguous, with a last row of ones (adds the centroids' constant term
    to the scores).

    Contiguous because a GEMM against a transposed view measured ~2.5x slower; copied in blocks of CHUNK points
    because one strided copy of a large set measured ~2.4x slower (52 vs 22 ms for 350,000 points).
    """
    S, N, D1 = pa.shape
    pt = np.empty((S, D1, N), dtype=pa.dtype)
    for a in range(0, N, CHUNK):
        pt[:, :, a : a + CHUNK] = pa[:, a : a + CHUNK].transpose(0, 2, 1)
    pt[:, -1] = 1.0
    return pt


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
    xa: np.ndarray,
    rows: np.ndarray,
    sizes: np.ndarray,
    ks: np.ndarray,
    keys: np.ndarray,
    n_iter: int = 20,
    init: str = "random",
    max_points_per_centroid: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Independent k-means on many sets of points, batched.

    Args:
        xa: (m+1, D+1) the points as :func:`augment` lays them out.
        rows: (n,) the points (rows 0..m-1 of ``xa``) of all sets, concatenated; set s is
            ``rows[sum(sizes[:s]) : sum(sizes[:s+1])]``.
        sizes: (S,) set sizes, each >= 1.
        ks: (S,) clusters per set, ``1 <= ks[s] <= sizes[s]``.
        keys: (n,) uint64 aligned with ``rows``: the randomness of the init and of the subsample.
        n_iter: maximum Lloyd rounds; a set stops earlier once its assignment no longer changes.
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
        return _lloyd_buckets(xa, rows, sizes, ks, keys, n_iter, init)
    setid = np.repeat(np.arange(len(sizes)), sizes)
    # Keys are uniform 64-bit hashes: keeping key / 2^64 < m / n is a Bernoulli(m / n) sample of ~m members.
    frac = np.where(big, max_points_per_centroid * ks / sizes, 1.0)
    keep = (keys >> np.uint64(11)).astype(np.float64) * 2.0**-53 < frac[setid]
    n_sub = np.bincount(setid[keep], minlength=len(sizes))
    short = big & (n_sub < ks)  # a sample too small to seed k clusters (never in practice): use all members
    keep |= short[setid]
    n_sub = np.where(short, sizes, n_sub)
    lab_sub, cents = _lloyd_buckets(xa, rows[keep], n_sub, ks, keys[keep], n_iter, init)
    labels = np.empty(len(rows), dtype=np.int64)
    labels[keep] = lab_sub  # final for sets that were not subsampled
    b = np.flatnonzero(big)
    sel = big[setid]
    # The subsampled sets may not include the largest k: their centroids fill the first slots only.
    labels[sel], cents[b, : int(ks[b].max())] = _lloyd_buckets(xa, rows[sel], sizes[b], ks[b], keys[sel], 1, init,
                                                               c_init=cents[b])
    return labels, cents


def _lloyd_buckets(
    xa: np.ndarray,
    rows: np.ndarray,
    sizes: np.ndarray,
    ks: np.ndarray,
    keys: np.ndarray,
    n_iter: int,
    init: str,
    c_init: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`lloyd_segments` on every member. With ``c_init`` (S, max(ks), D): one assignment round from those
    centroids instead (the final pass over a subsampled set's members; ``n_iter`` and ``init`` unused)."""
    S, n = len(sizes), len(rows)
    D = xa.shape[1] - 1
    starts = np.cumsum(sizes) - sizes
    # Slot n of the extended rows / keys is padding: the zero point, a key that never seeds.
    rows_x = np.append(rows, len(xa) - 1)
    keys_x = np.append(keys, _U64_MAX)
    labels = np.empty(n, dtype=np.int64)
    cents = np.full((S, int(ks.max(initial=1)), D), np.nan, dtype=xa.dtype)
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
        src = np.where(valid, starts[sets][:, None] + pos, n)  # (nb, N) index into rows_x / keys_x
        kvalid = np.arange(K) < bk[:, None]  # (nb, K)
        if c_init is not None:
            lab, c = _assign_streamed(xa, rows_x[src], c_init[sets, :K], kvalid)
        else:
            pa = np.take(xa, rows_x[src], axis=0)  # (nb, N, D+1)
            if init == "k-means++":
                c0 = seed_kmeanspp(pa[:, :, :-1], valid, keys_x[src], K)
            else:
                c0 = _seed_random(pa[:, :, :-1], keys_x[src], K)
            if K == 2 and kvalid.all():
                lab, c = _lloyd2_padded(pa, c0, n_iter)
            else:
                lab, c = _lloyd_padded(pa, _transpose(pa), c0, kvalid, n_iter)
        labels[src[valid]] = lab[valid]
        cents[sets, :K] = np.where(kvalid[:, :, None], c, np.nan)
    return labels, cents
