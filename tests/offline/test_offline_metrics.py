import numpy as np
import pytest

from twinv2.offline import cluster_accuracy

T, D = 137, 11


def _reference(x, labels):
    x = np.asarray(x, dtype=np.float64)
    total = 0.0
    for i in range(len(x)):
        c = x[labels == labels[i]].mean(axis=0)
        total += float(x[i] @ c / (np.linalg.norm(x[i]) * np.linalg.norm(c)))
    return total / len(x)


def test_matches_loop_reference_with_gaps_in_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(T, D)).astype(np.float32)
    labels = rng.integers(0, 9, T) * 3 + 5  # gaps and an offset
    assert cluster_accuracy(x, labels) == pytest.approx(_reference(x, labels), rel=1e-10)


def test_singletons_and_parallel_vectors_are_perfect():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(T, D))
    assert cluster_accuracy(x, np.arange(T)) == pytest.approx(1.0)
    y = np.outer(rng.uniform(1, 2, T), np.ones(D))  # all parallel
    assert cluster_accuracy(y, np.zeros(T, np.int64)) == pytest.approx(1.0)


def test_opposite_vectors_and_zero_vector():
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    # cluster 0 = {0, 1}: centroid 0 -> cosine 0 by convention; cluster 1 = {2, 3}: item 2 is zero -> 0, item 3 -> 1
    assert cluster_accuracy(x, np.array([0, 0, 1, 1])) == pytest.approx(0.25)


def test_empty_and_errors():
    assert np.isnan(cluster_accuracy(np.zeros((0, D)), np.zeros(0, np.int64)))
    with pytest.raises(ValueError, match="must match"):
        cluster_accuracy(np.zeros((T, D)), np.zeros(T - 1, np.int64))
    with pytest.raises(ValueError, match="integers"):
        cluster_accuracy(np.zeros((T, D)), np.zeros(T))
