"""Cluster quality for the hierarchical clustering variants (TWIN-V2 §4.3, Table 4)."""

from __future__ import annotations

import numpy as np

from .virtual_items import sorted_cluster_means

_EPS = 1e-12


def cluster_accuracy(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Mean cosine similarity of each item to its cluster's centroid (the "accuracy" column of Table 4).

    The centroid is the mean of the cluster's member embeddings. A zero vector (item or centroid) has
    cosine 0 by convention instead of NaN. Labels may be any integers (gaps are fine).
    Returns NaN for an empty input.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    lab = np.asarray(labels)
    if x.ndim != 2 or lab.shape != (len(x),):
        raise ValueError(f"embeddings (T, D) and labels (T,) must match; got {x.shape} and {lab.shape}")
    if len(lab) == 0:
        return float("nan")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
    # Σ_i cos(x_i, c) over a cluster = (Σ_i x_i / |x_i|) . c / |c|: two segment sums, no per-row gather.
    order, n, cent = sorted_cluster_means(lab, x)
    xs = np.take(x, order, axis=0)
    norm = np.sqrt(np.einsum("td,td->t", xs, xs))[:, None]  # einsum: faster than norm() on short rows
    unit_sum = np.add.reduceat(np.divide(xs, norm, out=np.zeros_like(xs), where=norm > _EPS), np.cumsum(n) - n, axis=0)
    cnorm = np.linalg.norm(cent, axis=1, keepdims=True)
    cent_unit = np.divide(cent, cnorm, out=np.zeros_like(cent), where=cnorm > _EPS)
    return float(np.einsum("cd,cd->", unit_sum, cent_unit) / len(lab))
