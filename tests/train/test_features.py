from __future__ import annotations

import numpy as np

from twinv2.train.features import (N_AGE, N_PLAY, N_RATIO, age_bucket, duration_bucket, play_bucket,
                                   ratio_bucket)


def test_play_buckets_edges():
    got = play_bucket(np.array([-1, 0, 999, 1000, 1999, 2000, 4000, 1e12, np.nan]))
    assert got.tolist() == [0, 1, 1, 2, 2, 3, 4, N_PLAY - 1, 0]


def test_ratio_buckets_edges():
    got = ratio_bucket(np.array([np.nan, 0.0, 0.0999, 0.1, 0.8, 1.0, 1.99, 2.0, 50.0, -0.1]))
    assert got.tolist() == [0, 1, 1, 2, 9, 11, 20, 21, 21, 0]
    assert got.max() < N_RATIO


def test_age_buckets_never_use_the_future():
    t = 10**12
    got = age_bucket(np.full(6, t), np.array([t, t + 5, t - 1, t - 3_600_000, t - 7_200_000, t - 10**13]))
    assert got.tolist() == [0, 0, 1, 2, 3, N_AGE - 1]


def test_duration_zero_is_unknown():
    assert duration_bucket(np.array([0, 500, 30_000])).tolist() == [0, 1, 6]
