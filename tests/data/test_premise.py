"""The premise measurement (twinv2.data.premise): hand-built cases with known answers, and the tiny world."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from twinv2.data.premise import (BEYOND_WINDOW, IN_WINDOW, NOT_INTEREST, UNSEEN, evidence, expected_auc,
                                 load_premise, measure_premise, summarise_premise, target_codes, window_terms)
from twinv2.data.sealed import read_sealed
from twinv2.data.storage import eval_days, prepare_dir, write_manifest


def test_two_users_one_with_evidence_only_beyond_the_window_gives_share_one_half():
    window = 3
    # User A watched topic 7 once, long ago, then 5 behaviours of topic 1; user B watched topic 7 recently.
    users = {"A": (np.array([7, 1, 1, 1, 1, 1]), 6), "B": (np.array([1, 1, 1, 7, 1, 1]), 6)}
    codes = []
    for b_topic, pos in users.values():
        topics = np.array([1, 7])  # both users' interests
        ever, recent = evidence(b_topic, np.array([pos]), topics, window)
        codes.append(target_codes(np.array([7]), topics, ever, recent))
    codes = np.concatenate(codes)
    assert codes.tolist() == [BEYOND_WINDOW, IN_WINDOW]
    c = {"code": codes, "source": np.array([1, 0]), "label": np.array([1, 0]),
         **{k: np.array([0.6, 0.4]) for k in ("p_true", "p_life", "p_window", "p_no_far")}}
    out = summarise_premise(c, window, np.array([10.0, 20.0]), np.array([6, 6]))
    assert out["share_beyond_window"] == 0.5 and out["share_in_window"] == 0.5
    assert out["share_beyond_window_by_source"]["dormant"] == 1.0
    assert out["share_beyond_window_by_source"]["current"] == 0.0
    assert out["ceiling_auc"] == 0.0 and out["n_test_samples"] == 2


def test_evidence_counts_only_behaviours_before_the_sample():
    b_topic = np.array([5, 1, 1, 5, 1, 1])
    # pos 0: nothing before; pos 1: only the first 5; pos 4: the second 5 is in a window of 2; pos 6: the
    # latest two are topic 1, so the 5s lie beyond the window.
    ever, recent = evidence(b_topic, np.array([0, 1, 4, 6]), np.array([5, 9]), window=2)
    assert ever[:, 0].tolist() == [False, True, True, True] and recent[:, 0].tolist() == [False, True, True, False]
    assert not ever[:, 1].any()
    codes = target_codes(np.array([5, 5, 9, 3]), np.array([5, 9]), ever, recent)
    assert codes.tolist() == [UNSEEN, IN_WINDOW, UNSEEN, NOT_INTEREST]


def test_window_terms_drop_unknown_interests():
    aff = np.array([[0.9, 0.5, 0.2]], np.float32)
    act = np.array([[True, False, True]])
    dorm = np.array([[False, True, False]])
    fav = np.array([[False, True, False]])
    all_known = window_terms(aff, act, dorm, fav, np.ones_like(act))
    assert all_known["a_cur"][0] == pytest.approx(0.9) and all_known["a_far"][0] == pytest.approx(0.5)
    assert all_known["fav_far"][0] == 1 and all_known["fav_cur"][0] == 0
    some = window_terms(aff, act, dorm, fav, np.array([[False, False, True]]))
    assert some["a_cur"][0] == pytest.approx(0.2) and some["a_far"][0] == 0 and some["fav_far"][0] == 0


def test_expected_auc_equals_the_pairwise_definition():
    rng = np.random.default_rng(3)
    p = rng.random(13)
    s = rng.integers(0, 5, 13).astype(float)  # ties on purpose
    num = den = 0.0
    for i, j in itertools.permutations(range(13), 2):
        w = p[i] * (1 - p[j])
        num += w * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
        den += w
    assert expected_auc(p, s) == pytest.approx(num / den, rel=1e-12)
    assert expected_auc(p, p) > expected_auc(p, -p)


def test_generated_world_has_its_premise_json(tiny_world):
    body = load_premise(tiny_world)
    assert body is not None and body == read_sealed(Path(tiny_world) / "premise.json", fix="")
    for key in ("window", "n_test_samples", "share_beyond_window", "share_in_window", "share_not_interest",
                "share_unseen", "share_beyond_window_by_source", "oracle_auc_true", "oracle_auc_life",
                "oracle_auc_window", "oracle_auc_no_far", "expected_auc_true", "expected_auc_life",
                "expected_auc_window", "expected_auc_no_far", "ceiling_auc", "ceiling_expected_auc",
                "far_terms_expected_auc", "window_days", "recompute_max_abs_error"):
        assert key in body, key
    assert body["window"] == 10_000 and body["n_test_samples"] > 100
    # The recomputation from truth/ reproduces the stored p_true: the measurement reads the truth right.
    assert body["recompute_max_abs_error"] < 1e-5
    # tiny's histories (~1k behaviours) all fit in 10,000: nothing lies beyond, no ceiling.
    assert body["share_beyond_window"] == 0.0 and body["ceiling_expected_auc"] == 0.0
    assert body["window_days"]["share_users_longer_than_window"] == 0.0
    shares = sum(body[f"share_{k}"] for k in ("not_interest", "in_window", "beyond_window", "unseen"))
    assert shares == pytest.approx(1.0)


def test_a_short_window_leaves_evidence_beyond_it(tiny_world):
    body = measure_premise(tiny_world, window=50)
    assert 0.05 < body["share_beyond_window"] < 0.5
    by = body["share_beyond_window_by_source"]
    assert by["dormant"] > by["current"]  # dormant interests are the ones quiet in the recent past
    assert body["ceiling_expected_auc"] > 0.005
    assert body["expected_auc_true"] >= body["expected_auc_life"] >= body["expected_auc_window"]


def test_imported_data_has_no_premise(tmp_path):
    root = prepare_dir(tmp_path / "imp", overwrite=False)
    write_manifest(root, {"n_shards": 1, "source": "kuairand", "eval_days": [d.__dict__ for d in eval_days(0, 1)]})
    with pytest.raises(ValueError, match="truth"):
        measure_premise(root)
    assert load_premise(root) is None
    with pytest.raises(ValueError, match="window"):
        measure_premise(root, window=0)


def test_without_truth_behaviours_evidence_falls_back_to_topics(tiny_world, tmp_path):
    import shutil

    root = tmp_path / "old"
    shutil.copytree(tiny_world, root)
    shutil.rmtree(root / "truth" / "behaviours")
    write_manifest(root, json.loads((root / "manifest.json").read_text()))  # a world made before they existed
    body = measure_premise(root, window=50)
    assert body["evidence"] == "topic" and body["share_beyond_window"] == body["share_beyond_window_topic"]
    assert measure_premise(tiny_world, window=50)["evidence"] == "interest"
