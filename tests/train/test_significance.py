"""Bootstrap over users, DeLong and the expected AUC against references (double loops, sklearn, Monte Carlo)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from twinv2.train import significance as S
from twinv2.train.metrics import auc, gauc


def _data(n: int, n_users: int, seed: int, ties: bool = True):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_users, n) * 7 + 3  # sparse, unsorted ids
    p = rng.uniform(0.05, 0.95, n)
    y = (rng.uniform(size=n) < p).astype(np.int64)
    s = p + rng.normal(0, 0.3, n)
    return u, p, y, (np.round(s, 1) if ties else s)


def _brute_pairs(s, a, b, skip_self: bool):
    num = den = 0.0
    for i, j in itertools.product(range(len(s)), repeat=2):
        if skip_self and i == j:
            continue
        w = a[i] * b[j]
        den += w
        num += w * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    return num, den


# ---- kernel -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,users", [(13, 4), (29, 7), (1, 1), (2, 2)])
def test_pair_sums_per_group_equals_a_double_loop(n, users):
    u, p, _, s = _data(n, users, seed=n)
    g, G = S._codes(u)
    rng = np.random.default_rng(1)
    a, b = rng.uniform(size=(3, n)), rng.uniform(size=(3, n))  # three replicates of weights
    num, den = S.pair_sums(s, a, b, g, G)
    assert num.shape == den.shape == (3, G)
    for r, k in itertools.product(range(3), range(G)):
        m = g == k
        want = _brute_pairs(s[m], a[r][m], b[r][m], skip_self=False)
        assert num[r, k] == pytest.approx(want[0], abs=1e-10) and den[r, k] == pytest.approx(want[1], abs=1e-10)


def test_pair_sums_gives_metrics_auc_and_gauc():
    u, _, y, s = _data(211, 17, seed=3)
    num, den = S.pair_sums(s, y * 1.0, 1.0 - y)
    assert num[0] / den[0] == pytest.approx(auc(y, s), abs=1e-12) == roc_auc_score(y, s)
    g, G = S._codes(u)
    num, den = S.pair_sums(s, y * 1.0, 1.0 - y, g, G)
    ok, n_g = den > 0, np.bincount(g)
    assert (n_g[ok] * num[ok] / den[ok]).sum() / n_g[ok].sum() == pytest.approx(gauc(u, y, s)[0], abs=1e-12)


# ---- expected AUC -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [13, 6, 31])
def test_expected_auc_equals_the_i_ne_j_double_loop(n):
    _, p, _, s = _data(n, 3, seed=10 + n)
    num, den = _brute_pairs(s, p, 1 - p, skip_self=True)
    assert S.expected_auc(p, s) == pytest.approx(num / den, abs=1e-12)


def test_expected_auc_is_the_ratio_of_monte_carlo_pair_counts():
    """Draw labels from p_true many times; mean positive-above-negative pairs / mean pairs → expected_auc."""
    _, p, _, s = _data(13, 3, seed=5)
    rng = np.random.default_rng(0)
    ys = rng.uniform(size=(20000, 13)) < p
    num, den = S.pair_sums(s, ys * 1.0, 1.0 - ys)
    assert num.mean() / den.mean() == pytest.approx(S.expected_auc(p, s), abs=3e-3)


def test_expected_auc_edges():
    p = np.array([0.0, 1.0, 1.0, 0.0])  # deterministic labels: the expected AUC is the AUC
    s = np.array([0.1, 0.9, 0.4, 0.5])
    assert S.expected_auc(p, s) == pytest.approx(auc(p, s))
    assert S.expected_auc([0.3], [1.0]) != S.expected_auc([0.3], [1.0])  # one sample: NaN
    assert S.expected_auc(np.full(5, 0.4), np.arange(5.0)) == pytest.approx(0.5)  # equal p: no signal
    with pytest.raises(ValueError, match="p_true must lie in"):
        S.expected_auc([0.2, 1.5], [0.0, 1.0])
    with pytest.raises(ValueError, match="same length"):
        S.expected_auc([0.2, 0.5], [0.0, 1.0, 2.0])


def test_oracle_expected_auc_beats_any_noisy_score():
    _, p, _, _ = _data(500, 10, seed=9, ties=False)
    rng = np.random.default_rng(2)
    oracle = S.expected_auc(p, p)
    for sd in (0.05, 0.2, 1.0):
        assert S.expected_auc(p, p + rng.normal(0, sd, len(p))) < oracle
    assert S.expected_auc(p, -p) == pytest.approx(1 - oracle)


def test_expected_gauc_weights_users_by_sample_count():
    u, p, _, s = _data(37, 5, seed=4)
    per, w = [], []
    for k in np.unique(u):
        m = u == k
        if m.sum() >= 2:
            num, den = _brute_pairs(s[m], p[m], 1 - p[m], skip_self=True)
            per.append(num / den)
            w.append(m.sum())
    got, n = S.expected_gauc(u, p, s)
    assert n == len(per) and got == pytest.approx(np.dot(per, w) / np.sum(w), abs=1e-12)


# ---- DeLong -------------------------------------------------------------------------------------------------
def _delong_brute(y, s):
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    return psi.mean(), v10, v01


@pytest.mark.parametrize("n,seed", [(13, 0), (40, 1), (97, 2)])
def test_delong_variance_equals_the_structural_components(n, seed):
    _, _, y, s = _data(n, 3, seed)
    if y.sum() < 2 or (1 - y).sum() < 2:
        y[:2], y[2:4] = 1, 0
    a, v10, v01 = _delong_brute(y, s)
    want = v10.var(ddof=1) / len(v10) + v01.var(ddof=1) / len(v01)
    got_auc, got_var = S.delong_variance(y, s)
    assert got_auc == pytest.approx(a, abs=1e-12) and got_var == pytest.approx(want, rel=1e-10)


def test_delong_paired_equals_the_structural_components():
    _, p, y, s1 = _data(61, 3, seed=7)
    s2 = np.round(p + np.random.default_rng(1).normal(0, 0.5, 61), 1)
    a1, x10, x01 = _delong_brute(y, s1)
    a2, y10, y01 = _delong_brute(y, s2)
    var = np.var(x10 - y10, ddof=1) / len(x10) + np.var(x01 - y01, ddof=1) / len(x01)
    got = S.delong_paired(y, s1, s2)
    assert got["diff"] == pytest.approx(a1 - a2, abs=1e-12) and got["se"] == pytest.approx(math.sqrt(var))
    assert got["ci_low"] < got["diff"] < got["ci_high"]
    assert S.delong_paired(y, s1, s1)["p"] == 1.0
    assert math.isnan(S.delong_paired([1, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])["se"])  # one positive


# ---- bootstrap --------------------------------------------------------------------------------------------
def test_draws_are_seeded_and_keep_the_user_count():
    d1, d2 = S.draw_users([5, 3, 3, 9], 50, seed=4), S.draw_users([9, 5, 3], 50, seed=4)
    assert np.array_equal(d1.counts, d2.counts) and d1.counts.shape == (50, 3)
    assert (d1.counts.sum(1) == 3).all()
    assert not np.array_equal(d1.counts, S.draw_users([3, 5, 9], 50, seed=5).counts)
    with pytest.raises(ValueError, match="n_boot"):
        S.draw_users([1, 2], 1)
    with pytest.raises(ValueError, match="empty"):
        S.draw_users([], 10)


def test_boot_replicates_equal_metrics_on_the_expanded_sample():
    """A replicate = the users drawn, each with all of their samples, as often as drawn."""
    u, _, y, s = _data(53, 9, seed=11)
    d = S.draw_users(u, 7, seed=1)
    ra, rg = S.boot_auc(d, u, y, s), S.boot_gauc(d, u, y, s)
    for b in range(7):
        idx = np.concatenate([np.flatnonzero(u == d.users[k]) for k in range(len(d.users))
                              for _ in range(int(d.counts[b, k]))])
        assert ra[b] == pytest.approx(auc(y[idx], s[idx]), abs=1e-12)
        # Copies of a user pool into one group in `gauc`, which leaves its AUC and doubles its weight.
        assert rg[b] == pytest.approx(gauc(u[idx], y[idx], s[idx])[0], abs=1e-12)


def test_boot_gauc_with_user_day_groups():
    u, _, y, s = _data(80, 6, seed=12)
    day = np.random.default_rng(0).integers(0, 3, 80)
    grp = u * 10 + day
    d = S.draw_users(u, 5, seed=2)
    r = S.boot_gauc(d, u, y, s, groups=grp)
    ones = S.UserDraws(d.users, np.ones((1, len(d.users))), 0)
    assert S.boot_gauc(ones, u, y, s, groups=grp)[0] == pytest.approx(gauc(grp, y, s)[0], abs=1e-12)
    assert np.isfinite(r).all()


def test_paired_bootstrap_ci_covers_the_true_difference():
    """Synthetic generator with a known population difference: the 95% CI covers it in most of 50 seeds."""
    rng = np.random.default_rng(123)
    # Population: many users; the truth is the difference on a very large sample of the same generator.
    def world(seed: int, n_users: int):
        r = np.random.default_rng(seed)
        per_user = r.integers(2, 9, n_users)
        u = np.repeat(np.arange(n_users), per_user)
        bias = r.normal(0, 0.7, n_users)[u]  # user effect: samples of a user are correlated
        z = r.normal(0, 1, len(u)) + bias
        y = (r.uniform(size=len(u)) < 1 / (1 + np.exp(-z))).astype(np.int64)
        user_noise = r.normal(0, 0.6, n_users)[u]
        sa = z + r.normal(0, 0.8, len(u))
        sb = z + r.normal(0, 0.8, len(u)) + user_noise * 1.5  # B is worse, with noise shared within a user
        return u, y, sa, sb

    u, y, sa, sb = world(999, 200_000)
    truth = {"auc": auc(y, sa) - auc(y, sb), "gauc": gauc(u, y, sa)[0] - gauc(u, y, sb)[0]}
    covered = {"auc": 0, "gauc": 0}
    seeds = rng.integers(0, 10**6, 50)
    for sd in seeds:
        u, y, sa, sb = world(int(sd), 150)
        res = S.paired_bootstrap(u, y, sa, sb, n_boot=300, seed=int(sd))
        for m in covered:
            assert res[m].value == pytest.approx(truth[m], abs=0.2)
            covered[m] += res[m].ci_low <= truth[m] <= res[m].ci_high
    assert covered["auc"] >= 43 and covered["gauc"] >= 43, covered  # nominal 47.5 of 50


def test_paired_bootstrap_se_is_near_delong_when_users_have_one_sample():
    u, p, y, _ = _data(600, 600, seed=3, ties=False)
    u = np.arange(600)  # one sample per user: the user bootstrap is the plain bootstrap
    rng = np.random.default_rng(0)
    sa, sb = p + rng.normal(0, 0.2, 600), p + rng.normal(0, 0.4, 600)
    boot = S.paired_bootstrap(u, y, sa, sb, n_boot=1000, seed=0)["auc"]
    dl = S.delong_paired(y, sa, sb)
    assert boot.value == pytest.approx(dl["diff"], abs=1e-12)
    assert boot.se == pytest.approx(dl["se"], rel=0.15)


def test_identical_ish_models_are_not_resolved():
    u, p, y, _ = _data(400, 40, seed=8, ties=False)
    rng = np.random.default_rng(1)
    sa = p + rng.normal(0, 0.3, 400)
    sb = sa + rng.normal(0, 1e-3, 400)
    res = S.paired_bootstrap(u, y, sa, sb, n_boot=400, seed=3)
    for iv in res.values():
        assert iv.ci_low <= 0 <= iv.ci_high and S.verdict(iv.ci_low, iv.ci_high) == "not resolved"
        assert abs(iv.value) < iv.mrd
    better = S.paired_bootstrap(u, y, p, p + rng.normal(0, 1.0, 400), n_boot=400, seed=3)["auc"]
    assert S.verdict(better.ci_low, better.ci_high) == "A better" and better.value > better.mrd
    assert S.verdict(-better.ci_high, -better.ci_low) == "B better"
    assert S.verdict(float("nan"), 0.1) == "not resolved"


def test_bootstrap_ci_for_one_model_brackets_its_value():
    u, _, y, s = _data(301, 37, seed=6)
    ci = S.bootstrap_ci(u, y, s, n_boot=500, seed=1)
    for m, point in (("auc", auc(y, s)), ("gauc", gauc(u, y, s)[0])):
        iv = ci[m]
        assert iv.value == pytest.approx(point) and iv.ci_low < point < iv.ci_high and iv.se > 0
        assert iv.n_users == len(np.unique(u)) and iv.n_samples == 301 and iv.n_boot == 500
        d = iv.as_dict()
        assert d["mrd"] == pytest.approx(S.Z95 * iv.se) and d["mde80"] == pytest.approx(2.8 * iv.se, rel=1e-3)
    assert S.bootstrap_ci(u, y, s, n_boot=500, seed=1) == ci  # seeded


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        S.bootstrap_ci([1, 2], [0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        S.paired_bootstrap([1, 2, 3], [0, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2])
    d = S.draw_users([1, 2], 5)
    with pytest.raises(ValueError, match="user 7"):
        S.boot_auc(d, [1, 7], [0, 1], [0.1, 0.2])
