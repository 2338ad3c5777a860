"""Our AUC and GAUC equal scikit-learn's, per user in a plain loop."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from twinv2.train.metrics import auc, gauc


def sklearn_gauc(users, labels, scores):
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if labels[m].min() != labels[m].max():
            num += m.sum() * roc_auc_score(labels[m], scores[m])
            den += m.sum()
    return num / den


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_gauc_equal_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 997
    users = rng.integers(0, 53, n) * 7 + 3  # non-contiguous ids
    labels = rng.random(n) < 0.3
    scores = np.round(rng.normal(labels * 0.5, 1.0), 1)  # coarse: many ties, within and across users
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    g, n_users = gauc(users, labels, scores)
    assert g == pytest.approx(sklearn_gauc(users, labels, scores), abs=1e-12)
    assert n_users == sum(labels[users == u].min() != labels[users == u].max() for u in np.unique(users))


def test_degenerate_cases():
    assert np.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))
    g, k = gauc(np.array([1, 1, 2]), np.array([1, 1, 0]), np.array([0.3, 0.2, 0.1]))
    assert np.isnan(g) and k == 0
    g, k = gauc(np.array([5, 5, 9]), np.array([1, 0, 1]), np.array([0.9, 0.1, 0.5]))
    assert g == 1.0 and k == 1
