"""Cluster representation as "virtual items" (TWIN-V2 §3.3.2, Eq. 5–7).

A cluster replaces its member behaviours in the online model, so it needs the same features an item has:
numeric features are averaged over the members (Eq. 5), categorical ones (item id, author id, tag, ...) cannot
be averaged and are taken from the member nearest the cluster centroid in embedding space (Eq. 6–7). The
cluster size n is kept for the ``ln n`` reweighting of the attention (Eq. 10).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_BLOCK = 8192  # rows per block of nearest_members' distances

def _check_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    lab = np.asarray(labels)
    if lab.ndim != 1 or (lab.size and not np.issubdtype(lab.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D integer array, got dtype {lab.dtype} shape {lab.shape}")
    lab = lab.astype(np.int64, copy=False)
    if lab.size and lab.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(lab.min())}")
    C = int(lab.max()) + 1 if lab.size else 0
    n = np.bincount(lab, minlength=C)
    if C and not n.all():
        raise ValueError(f"labels must number clusters 0..C-1 without gaps; cluster {int(np.argmin(n > 0))} is empty")
    return lab, C


def segment_sums(x: np.ndarray, rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of the rows ``x[rows[starts[i] : starts[i+1]]]`` per segment i (the last one ends at ``len(rows)``).

    x (T, D), rows (n,), starts (S,) increasing from 0 -> (S, D) float64. A sparse (segments x T) product: the
    same float64 sums, added in the same order, as ``np.add.reduceat(x[rows], starts, axis=0, dtype=float64)``
    (bit for bit), and measured 3x faster on 10^6 rows (130 vs 400 ms) since it needs no gather of the rows.
    """
    import scipy.sparse as sp

    ones = sp.csr_matrix((np.ones(len(rows)), rows, np.r_[starts, len(rows)]), shape=(len(starts), len(x)))
    return np.asarray(ones @ x, dtype=np.float64)


def sorted_cluster_means(labels: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group rows of ``x`` by label: returns (order, sizes, means).

    ``order`` is a stable argsort of ``labels`` (each cluster's rows contiguous, in index order), ``sizes`` (C,)
    the rows per distinct label in sorted label order, ``means`` (C, D) float64 their mean rows.
    """
    order = np.argsort(labels, kind="stable")
    ls = labels[order]
    if len(ls) == 0:
        return order, np.zeros(0, np.int64), np.zeros((0, x.shape[1]))
    starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])
    sizes = np.diff(np.r_[starts, len(ls)])
    means = segment_sums(x, order, starts) / sizes[:, None]
    return order, sizes, means


def nearest_members(labels: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """(C,) index of each cluster's member nearest (Euclidean) to the cluster's mean embedding (Eq. 6–7).

    Ties go to the lowest index, so identical members give a deterministic representative.
    """
    lab, C = _check_labels(labels)
    x = np.asarray(embeddings)
    if x.ndim != 2 or len(x) != len(lab):
        raise ValueError(f"embeddings must be ({len(lab)}, D), got shape {x.shape}")
    if C == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    order, n, centroid = sorted_cluster_means(lab, x)  # clusters 0..C-1 in order (no gaps)
    # Squared distance of each (sorted) row to its centroid, in sorted order (repeating centroids is sequential,
    # a gather centroid[lab] is not) and in blocks of rows, so the float64 differences stay in cache.
    dist = np.empty(len(lab))
    seg = np.repeat(np.arange(C), n)
    for a in range(0, len(lab), _BLOCK):
        diff = np.subtract(np.take(x, order[a : a + _BLOCK], axis=0), centroid[seg[a : a + _BLOCK]])
        dist[a : a + _BLOCK] = np.einsum("td,td->t", diff, diff)
    starts = np.cumsum(n) - n
    is_min = dist == np.repeat(np.minimum.reduceat(dist, starts), n)
    # First minimum of each cluster = lowest index, since rows of a cluster are in index order.
    pos = np.flatnonzero(is_min)
    first = pos[np.r_[True, lab[order[pos[1:]]] != lab[order[pos[:-1]]]]]
    return order[first].astype(np.int64)


def virtual_items(
    labels: np.ndarray,
    embeddings: np.ndarray,
    numeric: Mapping[str, np.ndarray] | None = None,
    categorical: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Features of each cluster's virtual item.

    Args:
        labels: (T,) cluster id of each behaviour, clusters numbered 0..C-1 with none empty.
        embeddings: (T, D) item embeddings used for the clustering.
        numeric: name -> (T,) numeric feature (duration, playing time, ...), averaged per cluster ignoring NaN
            (Eq. 5); NaN when every member is NaN.
        categorical: name -> (T,) categorical feature (item_id, author_id, tag, ...), taken from the member
            nearest the centroid (Eq. 6–7).

    Returns:
        dict with ``"n"`` (C,) int64 cluster sizes, ``"representative"`` (C,) int64 index of the nearest member,
        each numeric name -> (C,) float64 mean, and each categorical name -> (C,) values of the input dtype.
    """
    numeric = dict(numeric or {})
    categorical = dict(categorical or {})
    lab, C = _check_labels(labels)
    T = len(lab)
    reserved = {"n", "representative"}
    for name, col in [*numeric.items(), *categorical.items()]:
        if name in reserved:
            raise ValueError(f"feature name {name!r} is reserved for the output")
        if np.shape(col) != (T,):
            raise ValueError(f"feature {name!r} must have shape ({T},), got {np.shape(col)}")
    dup = set(numeric) & set(categorical)
    if dup:
        raise ValueError(f"feature names {sorted(dup)} are both numeric and categorical")
    rep = nearest_members(lab, embeddings)
    out: dict[str, np.ndarray] = {"n": np.bincount(lab, minlength=C).astype(np.int64), "representative": rep}
    for name, col in numeric.items():
        v = np.asarray(col, dtype=np.float64)
        ok = ~np.isnan(v)
        total = np.bincount(lab, weights=np.where(ok, v, 0.0), minlength=C)
        count = np.bincount(lab, weights=ok.astype(np.float64), minlength=C)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = total / count  # 0/0 -> NaN: every member missing
    for name, col in categorical.items():
        out[name] = np.asarray(col)[rep]
    return out
