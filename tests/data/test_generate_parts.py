"""Pieces of the generated world checked on their own: config, KuaiRand references, items, users, samplers."""

from __future__ import annotations

import numpy as np
import pytest

from twinv2.data.generate import PRESETS, WorldConfig, preset
from twinv2.data.generate import reference as ref
from twinv2.data.generate.calibrate import topic_mass
from twinv2.data.generate.items import build_items, zipf_probs, zipf_rank
from twinv2.data.generate.streams import simulate_user
from twinv2.data.generate.users import OLD, SEASONAL, draw_interests, end_ms, user_table


@pytest.fixture(scope="module")
def small_items():
    return build_items(preset("small"))


# ---- config -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("n_users", 0), ("far_past_signal", -0.5), ("length_max", 1_000_001), ("length_mean", 10),
    ("eval_start", "2024-13-01"), ("ratio_affinity_corr", 1.5), ("n_tags", 44), ("n_shards", 0),
    ("candidate_mix", (0.5, 0.5, 0.5, 0.0)), ("impressions_per_day", (1.0, 2.0)), ("season_duty", (0.5, 0.2)),
    ("target_ctr", 1.0), ("n_items", 10), ("seed", -1), ("n_users", 2.5),
])
def test_bad_values_raise_naming_field_and_value(field, value):
    with pytest.raises(ValueError) as e:
        preset("tiny", **{field: value})
    msg = str(e.value)
    assert field in msg and (repr(value) in msg or str(value) in msg), msg


def test_preset_names_and_unknown_fields():
    with pytest.raises(ValueError, match=r"'huge'.*\['paper', 'small', 'tiny'\]"):
        preset("huge")
    with pytest.raises(ValueError, match="far_pats_signal"):
        preset("tiny", far_pats_signal=0.0)
    cfg = preset("small", far_past_signal=0.0, candidate_mix=[0.5, 0.1, 0.2, 0.2])
    assert cfg.far_past_signal == 0.0 and cfg.candidate_mix == (0.5, 0.1, 0.2, 0.2) and cfg.name == "small"
    assert preset("paper", length_max=1_000_000).length_max == 1_000_000


def test_presets_are_the_documented_shapes():
    assert PRESETS["small"].n_users == 2000 and PRESETS["small"].n_items == 200_000
    for name in ("small", "paper"):
        c = PRESETS[name]
        assert c.length_mean == 14_500 and c.length_max == 100_000 and c.history_years == 3 and c.n_eval_days == 5
    assert PRESETS["tiny"].n_users * PRESETS["tiny"].length_mean < 200_000  # seconds, not minutes


def test_every_knob_is_documented():
    import ast
    import inspect

    from twinv2.data.generate import config

    tree = ast.parse(inspect.getsource(config.WorldConfig))
    body = tree.body[0].body
    documented = {body[i].target.id for i in range(len(body) - 1)
                  if isinstance(body[i], ast.AnnAssign) and isinstance(body[i + 1], ast.Expr)
                  and isinstance(body[i + 1].value, ast.Constant)}
    fields = {f.name for f in __import__("dataclasses").fields(WorldConfig)}
    assert fields - documented == set()


# ---- KuaiRand references and items -------------------------------------------------------------------------

def test_embedded_references_equal_the_kuairand_files(kuairand_dir):
    m = ref.measure(kuairand_dir)
    assert [tuple(x) for x in m["tag_counts"]] == list(ref.TAG_COUNTS)
    assert m["untagged"] == ref.UNTAGGED_VIDEOS and m["n_videos"] == ref.N_VIDEOS
    assert m["duration_quantiles_ms"] == list(ref.DURATION_QUANTILES_MS)
    np.testing.assert_allclose(m["ratio_quantiles"], ref.RATIO_QUANTILES, atol=1e-4)
    assert m["hour_counts"] == list(ref.HOUR_COUNTS)
    assert m["unknown_duration_share"] == pytest.approx(ref.UNKNOWN_DURATION_SHARE, abs=5e-4)


def test_items_follow_kuairand_tags_and_durations(small_items):
    w = small_items
    tagged = w.tag[w.tag >= 0]
    assert (w.tag < 0).mean() == pytest.approx(96 / 7583, abs=0.003)
    tags, counts = np.unique(tagged, return_counts=True)
    share = dict(zip(tags.tolist(), (counts / counts.sum()).tolist()))
    file_share = {t: c / (7583 - 96) for t, c in ref.TAG_COUNTS}
    assert max(share, key=share.get) == 39
    for t in (39, 3, 20, 12, 9):
        assert share[t] == pytest.approx(file_share[t], rel=0.05), t
    q = np.quantile(w.duration_ms, [0.1, 0.5, 0.9])
    assert q[1] == pytest.approx(81_170, rel=0.05) and q[0] == pytest.approx(14_593, rel=0.1)
    assert q[2] == pytest.approx(228_208, rel=0.1)


def test_items_topics_authors_and_popularity(small_items):
    w = small_items
    cfg = preset("small")
    assert w.n_topics == cfg.n_tags * cfg.n_topics_per_tag
    assert len(np.unique(w.author)) == cfg.n_authors
    # An author writes in one topic only; a topic's items share its true tag.
    per_author = np.bincount(w.author, minlength=cfg.n_authors)
    topic_of_author = np.zeros(cfg.n_authors, int)
    topic_of_author[w.author] = w.topic
    assert (topic_of_author[w.author] == w.topic).all() and per_author.max() > 5 * per_author.mean()
    assert (w.tag[w.tag >= 0] == w.topic_tag[w.topic[w.tag >= 0]]).all()
    # Latent geometry: item ~ its topic, topics of one tag closer than topics of different tags.
    cos_own = (w.latent * w.topic_centroid[w.topic]).sum(1)
    assert 0.8 < cos_own.mean() < 0.95
    c = w.topic_centroid @ w.topic_centroid.T
    same = w.topic_tag[:, None] == w.topic_tag[None, :]
    off = ~np.eye(w.n_topics, dtype=bool)
    assert c[same & off].mean() > 0.4 > 0.1 > abs(c[~same].mean())
    # Zipf-like: a heavy head, and popularity sums to one.
    p = np.sort(w.popularity)[::-1]
    assert p.sum() == pytest.approx(1.0) and p[: len(p) // 100].sum() > 0.2


@pytest.mark.parametrize("a", [0.0, 0.9, 1.0, 1.3])
def test_zipf_sampler_draws_its_own_probabilities(a):
    m = np.full(200_000, 37)
    r = zipf_rank(np.random.default_rng(1).random(len(m)), m, a)
    freq = np.bincount(r, minlength=37) / len(m)
    p = zipf_probs(np.arange(37), 37, a)
    assert p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p.max() / len(m)))


def test_popular_draws_follow_popularity(small_items):
    w = small_items
    item = w.draw_popular(np.random.default_rng(2).random(400_000))
    by_topic = np.bincount(w.topic[item], minlength=w.n_topics) / len(item)
    np.testing.assert_allclose(by_topic, topic_mass(w), atol=0.003)
    top = np.argsort(-w.popularity)[:5]
    np.testing.assert_allclose(np.bincount(item, minlength=w.n_items)[top] / len(item), w.popularity[top],
                               rtol=0.1)


# ---- users and interests -----------------------------------------------------------------------------------

def test_length_distribution_mean_and_tail():
    t = user_table(preset("small", n_users=20_000))
    n = t.length
    assert n.mean() == pytest.approx(14_500, rel=0.04)
    assert n.max() <= 100_000 and n.min() >= 50
    assert np.median(n) < 0.6 * n.mean() and np.quantile(n, 0.99) > 5 * np.median(n)
    top2 = np.sort(n)[-len(n) // 50:].sum() / n.sum()
    assert top2 > 0.1  # a small share of users brings a large share of behaviours
    assert np.bincount(t.level).min() > 0.3 * len(n)
    big = user_table(preset("small", n_users=2000, length_max=1_000_000, length_mean=60_000))
    assert big.length.max() > 200_000 and big.length.max() <= 1_000_000
    # Lives span up to the history (three years plus the evaluation days) and end with the last eval day.
    cfg = preset("small")
    days = (end_ms(cfg) - t.life_start_ms) / 86_400_000
    assert days.max() <= 3 * 365 + 6 and np.median(days) > 365


def test_segments_agree_with_activity_everywhere(small_items):
    cfg = preset("small")
    start = end_ms(cfg) - 1000 * 86_400_000
    mass = topic_mass(small_items)
    for seed in range(20):
        ints = draw_interests(np.random.default_rng([5, seed]), start, small_items, cfg, mass)
        ts = np.sort(np.random.default_rng(seed).integers(start, end_ms(cfg), 5000))
        bounds, seg_act = ints.segments(start, end_ms(cfg))
        seg = np.searchsorted(bounds, ts, side="right") - 1
        assert (seg_act[seg] == ints.active(ts)).all()


def test_old_and_seasonal_interests_live_only_in_their_windows(small_items):
    """An old interest's topic stops after its end; a seasonal one is watched in season only."""
    cfg = preset("small", explore=0.0, n_users=1)
    mass = topic_mass(small_items)
    checked = {OLD: 0, SEASONAL: 0}
    for seed in range(12):
        start = end_ms(cfg) - 900 * 86_400_000
        d = simulate_user(np.random.default_rng([9, seed]), 20_000, start, 1, small_items, cfg, mass)
        topic = small_items.topic[d.b_item]
        for j in np.flatnonzero(np.isin(d.interests.kind, (OLD, SEASONAL))):
            mine = topic == d.interests.topic[j]
            if mine.sum() < 20:
                continue
            act = d.interests.active(d.b_ts[mine])[:, j]
            assert act.mean() > 0.99, (seed, j, d.interests.kind[j])  # fav-author rows share the topic
            checked[int(d.interests.kind[j])] += 1
            if d.interests.kind[j] == OLD:
                assert d.b_ts[mine].max() < d.interests.end_ms[j]
    assert checked[OLD] >= 3 and checked[SEASONAL] >= 3


def test_dormant_means_active_before_and_quiet_now():
    from twinv2.data.generate.users import Interests

    day = 86_400_000
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    # persistent; old (ended day 100); recent (starts day 300); seasonal (period 100, on 20, out of season at
    # the start, first window at day 50)
    ints = Interests(kind=np.array([0, 2, 3, 1], np.int8), topic=i64(1, 2, 3, 4), strength=np.ones(4),
                     start_ms=i64(0, 0, 300 * day, 0), end_ms=i64(400 * day, 100 * day, 400 * day, 400 * day),
                     period_ms=i64(0, 0, 0, 100 * day), phase_ms=i64(0, 0, 0, -50 * day), on_ms=i64(0, 0, 0, 20 * day),
                     fav_author=i64(-1, -1, -1, -1), first_on_ms=i64(0, 0, 300 * day, 50 * day))
    ts = i64(10 * day, 60 * day, 80 * day, 200 * day, 350 * day)
    act, far = ints.active(ts), ints.dormant(ts)
    assert act.tolist() == [[1, 1, 0, 0], [1, 1, 0, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 1, 1]]
    assert far.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 0, 0]]


def test_random_streams_never_coincide():
    from twinv2.data.generate.calibrate import PILOT_STREAM
    from twinv2.data.generate.items import ITEM_STREAM, user_rng, world_rng
    from twinv2.data.generate.users import LENGTH_STREAM

    firsts = [user_rng(0, u).random() for u in (0, 1, ITEM_STREAM, LENGTH_STREAM, PILOT_STREAM)]
    firsts += [world_rng(0, t).random() for t in (ITEM_STREAM, LENGTH_STREAM, PILOT_STREAM)]
    firsts += [world_rng(0, PILOT_STREAM, j).random() for j in (1, 2)]
    assert len(set(firsts)) == len(firsts)


def test_bench_reports_every_field(tmp_path):
    from twinv2.bench.generate import bench_generate

    r = bench_generate("tiny", out=tmp_path / "bench", workers=1)
    assert set(r) == {"preset", "users", "behaviours", "samples", "seconds", "behaviours_per_s", "peak_rss_mb",
                      "workers", "machine"}
    assert r["users"] == preset("tiny").n_users and r["behaviours"] > 0 and r["workers"] == 1
    assert 10 < r["peak_rss_mb"] < 4096 and r["behaviours_per_s"] > 0
