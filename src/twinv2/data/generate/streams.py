"""One user's behaviour stream and impressions, fully vectorised (no Python loop per event).

`simulate_user` draws everything random from the user's own generator; `finish_user` turns the draw into
rows using the world-level calibration (the completion-ratio transform and the click bias), which the pilot
in calibrate.py solves from draws of other, pilot users.

Affinity of a user to an item at time t: max over interests k active at t of weight_k * cos(c_k, v_item),
with weight_k = sqrt(strength_k / strongest). It drives the completion ratio of behaviours and, split into
interests active now (current) and dormant ones (active before, quiet now: the far past), the click
probability of impressions. Impressions and behaviours come from the same interest timeline but are drawn
independently: a click does not add a behaviour (histories are the watch log, impressions the test set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twinv2.data.generate.config import WorldConfig
from twinv2.data.generate.items import ItemWorld
from twinv2.data.generate.reference import RATIO_QUANTILES, hour_profile
from twinv2.data.generate.users import BLOCK, Interests, choose, draw_interests, end_ms
from twinv2.data.storage import DAY_MS, HOUR_MS

SESSION_BREAK_MS = 30 * 60 * 1000  # a gap longer than this starts a new session (interest stickiness stops)
CURRENT, DORMANT, POPULAR, RANDOM = range(4)  # impression sources, in candidate_mix order
LOGIT_CLIP = 15.0  # keeps p_true strictly inside (0, 1) even as float32
REDRAW_ROUNDS = 8  # a repeat left after this many redraws (a tiny topic) stays: rare, and harmless to labels
TERMS = ("a_cur", "a_far", "fav_cur", "fav_far", "pop", "rec")  # inputs of click_logit, in truth/impressions


@dataclass(frozen=True)
class Calibration:
    """World-level constants solved on the pilot (see calibrate.py); stored in the manifest."""

    affinity_mean: float
    affinity_std: float
    z_quantiles: tuple[float, ...]  # watch-score quantiles at reference.QUANTILE_PROBS
    bias: float  # click-logit bias giving mean p_true ~ target_ctr


@dataclass
class UserDraw:
    """Everything random about one user (behaviours b_*, impressions s_*), before calibration."""

    interests: Interests
    b_ts: np.ndarray  # (L,) int64 sorted
    b_item: np.ndarray  # (L,) int64 item index (item_id - 1)
    b_affinity: np.ndarray  # (L,) float64
    b_noise: np.ndarray  # (L,) float64 standard normal, the watch score's noise
    b_unknown_dur: np.ndarray  # (L,) bool
    b_interest: np.ndarray  # (L,) int8 the interest (row of `interests`) that drew the behaviour, -1 exploration
    s_ts: np.ndarray  # (S,) int64 sorted
    s_item: np.ndarray  # (S,) int64 item index
    s_source: np.ndarray  # (S,) int8 CURRENT / DORMANT / POPULAR / RANDOM
    s_terms: dict[str, np.ndarray]  # click-model inputs, see click_logit
    s_u: np.ndarray  # (S,) uniforms for the labels


def _affinities(world: ItemWorld, ints: Interests, items: np.ndarray) -> np.ndarray:
    """(n, K) weight_k * cos(c_k, v_item); vectors are unit, so the dot product is the cosine."""
    cent = world.topic_centroid[ints.topic].T * ints.weight.astype(np.float32)  # (D, K)
    out = np.empty((len(items), len(ints.topic)), dtype=np.float32)
    for a in range(0, len(items), BLOCK):
        out[a:a + BLOCK] = world.latent[items[a:a + BLOCK]] @ cent
    return out


def _behaviour_times(rng: np.random.Generator, n: int, life_start: int, cfg: WorldConfig,
                     hours_cum: np.ndarray) -> np.ndarray:
    """Sorted times of n behaviours: sessions on uniform days at KuaiRand's hours, exponential gaps inside."""
    end = end_ms(cfg)
    n_sess = max(1, int(round(n / cfg.session_mean)))
    days = max(1, (end - life_start) // DAY_MS)
    hour = np.searchsorted(hours_cum, rng.random(n_sess), side="right")
    sess_start = life_start + rng.integers(0, days, n_sess) * DAY_MS + hour * HOUR_MS + rng.integers(0, HOUR_MS, n_sess)
    sess_start.sort()
    counts = rng.multinomial(n, np.full(n_sess, 1.0 / n_sess))
    gaps = rng.exponential(cfg.gap_mean_s * 1000.0, n)
    cs = np.cumsum(gaps)
    nonempty = counts > 0
    first = (np.cumsum(counts) - counts)[nonempty]
    offset = cs - np.repeat(cs[first] - gaps[first], counts[nonempty])
    ts = np.repeat(sess_start, counts) + offset.astype(np.int64)
    ts = life_start + (ts - life_start) % (end - life_start)  # a session running past the end wraps to the start
    # Sessions are in start order, so ts is nearly sorted; the stable sort (timsort) merges the few overlaps
    # in about linear time.
    return np.sort(ts, kind="stable")


def _local_affinities(world: ItemWorld, ints: Interests) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, table): (K, M) affinities of every item of the user's interest topics, columns in
    (interest, rank) order. A behaviour drawn from interest k at rank r reads column offsets[k] + r instead of
    gathering a latent vector (topics are contiguous in latent_by_rank, so this is one small product)."""
    cent = world.topic_centroid[ints.topic] * ints.weight.astype(np.float32)[:, None]  # (K, D)
    lat = world.index("latent_by_rank")
    slices = [world.topic_slice(int(t)) for t in ints.topic]
    sizes = [s.stop - s.start for s in slices]
    offsets = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)
    table = np.empty((sum(sizes), len(slices)), dtype=np.float32)  # (M, K), filled topic by topic
    for s, o, m in zip(slices, offsets, sizes):
        np.matmul(lat[s], cent.T, out=table[o:o + m])
    return offsets, table.T  # (K, M) view: a row is strided, but the whole table sits in cache


def simulate_user(rng: np.random.Generator, length: int, life_start: int, level: int, world: ItemWorld,
                  cfg: WorldConfig, topic_mass: np.ndarray) -> UserDraw:
    """Draw one user's interests, `length` behaviours and the impressions of the warm-up and evaluation days."""
    hours_cum = np.cumsum(hour_profile())[:-1]
    ints = draw_interests(rng, life_start, world, cfg, topic_mass)
    n, n_int = int(length), len(ints.topic)

    # -- behaviours ---------------------------------------------------------------------------------------
    ts = _behaviour_times(rng, n, life_start, cfg, hours_cum)
    bounds, seg_act = ints.segments(life_start, end_ms(cfg))
    seg = np.searchsorted(bounds, ts, side="right") - 1
    u_k, u_stick, u_src, u_fav, u_item, u_dur = rng.random((6, n))
    # Interest ∝ strength among the active ones: per segment the cumulative shares are keyed
    # `segment + share` (as in items.SegmentSampler), so one searchsorted serves every row.
    cum = np.cumsum(seg_act * ints.strength, axis=1)
    cum /= cum[:, -1:]  # a persistent interest is always active, so every segment has weight
    cum[:, -1] = 1.0
    keys = (np.arange(len(bounds))[:, None] + cum).ravel()
    pos = np.searchsorted(keys, seg + np.minimum(u_k, 1.0 - 1e-9), side="right")
    k = np.clip(pos - seg * n_int, 0, n_int - 1)
    # Within a session a behaviour keeps the interest of the last fresh draw (bursty sessions), as long as
    # that interest is still active.
    fresh = (u_stick >= cfg.stickiness) | (np.diff(ts, prepend=ts[0] - SESSION_BREAK_MS - 1) > SESSION_BREAK_MS)
    k_stick = k[np.maximum.accumulate(np.where(fresh, np.arange(n), 0))]
    k = np.where(seg_act[seg, k_stick], k_stick, k)
    item, rank = world.draw_in_topic(ints.topic[k], u_item)
    fav = ints.fav_author[k]
    by_fav = (u_fav < cfg.fav_author_share) & (fav >= 0)
    if by_fav.any():
        item[by_fav] = world.draw_by_author(fav[by_fav], u_item[by_fav])
        rank[by_fav] = world.index("item_rank")[item[by_fav]]  # the author's topic is the interest's topic
    popular = u_src < cfg.explore / 2
    explore = u_src < cfg.explore
    item[popular] = world.draw_popular(u_item[popular])
    random = explore & ~popular
    item[random] = np.minimum((u_item[random] * world.n_items).astype(np.int64), world.n_items - 1)
    # Affinity = max over active interests; one interest (column) at a time keeps every step a flat
    # vector operation (a max over a short trailing axis is slow in numpy).
    offsets, table = _local_affinities(world, ints)
    col_of = offsets[k] + rank
    ex_sims = _affinities(world, ints, item[explore]) if explore.any() else None  # outside interest topics
    inactive = np.where(seg_act, 0.0, -np.inf).astype(np.float32).T.copy()  # (K, n_seg)
    aff32 = np.full(n, -np.inf, dtype=np.float32)
    for j in range(n_int):
        col = table[j][col_of]
        if ex_sims is not None:
            col[explore] = ex_sims[:, j]
        col += inactive[j][seg]
        np.maximum(aff32, col, out=aff32)
    aff = aff32.astype(np.float64)
    noise = rng.standard_normal(n)

    # -- impressions on the warm-up and evaluation days: requests of request_size candidates each ----------
    # (With warmup_days = 0 and request_size = 1 these are the very draws of the original world.)
    n_days, size = cfg.warmup_days + cfg.n_eval_days, cfg.request_size
    if cfg.impressions_per_behaviour > 0:  # in proportion to the user's own daily behaviours
        rate = cfg.impressions_per_behaviour * n * DAY_MS / max(end_ms(cfg) - life_start, DAY_MS)
    else:
        rate = cfg.impressions_per_day[level]
    per_day = rng.poisson(rate / size, n_days)
    r = int(per_day.sum())
    day = np.repeat(np.arange(n_days), per_day)
    hour = np.searchsorted(hours_cum, rng.random(r), side="right")
    s_ts = np.sort(cfg.first_day_ms + day * DAY_MS + hour * HOUR_MS + rng.integers(0, HOUR_MS, r))
    s_ts = np.repeat(s_ts, size)  # every candidate of a request shares its user and time
    s = len(s_ts)
    u_src_s, u_k_s, u_item_s, u_label = rng.random((4, s))
    source = np.minimum(np.searchsorted(np.cumsum(cfg.candidate_mix), u_src_s, side="right"), RANDOM).astype(np.int8)
    act_s = ints.active(s_ts)
    far_s = ints.dormant(s_ts, act_s)
    k_cur, k_dorm = choose(act_s, ints.strength, u_k_s), choose(far_s, ints.strength, u_k_s)
    source[(source == DORMANT) & (k_dorm < 0)] = RANDOM  # nothing is dormant yet: fall back to a random item
    s_item = _candidates(world, ints, source, k_cur, k_dorm, u_item_s)
    if size > 1:  # a page never shows one item twice: redraw repeats inside a request from fresh uniforms
        for _ in range(REDRAW_ROUNDS):
            dup = _repeats(s_item.reshape(-1, size)).ravel()
            if not dup.any():
                break
            s_item[dup] = _candidates(world, ints, source[dup], k_cur[dup], k_dorm[dup], rng.random(int(dup.sum())))
    terms = _click_terms(world, ints, act_s, far_s, s_item, s_ts, ts, item, cfg.recency_window)
    return UserDraw(interests=ints, b_ts=ts, b_item=item, b_affinity=aff, b_noise=noise,
                    b_unknown_dur=u_dur < cfg.unknown_duration_share,
                    b_interest=np.where(explore, -1, k).astype(np.int8), s_ts=s_ts, s_item=s_item,
                    s_source=source, s_terms=terms, s_u=u_label)


def _candidates(world: ItemWorld, ints: Interests, source: np.ndarray, k_cur: np.ndarray, k_dorm: np.ndarray,
                u: np.ndarray) -> np.ndarray:
    """Item index of each candidate from its source (random by default), one uniform each."""
    item = np.minimum((u * world.n_items).astype(np.int64), world.n_items - 1)
    for src, kk in ((CURRENT, k_cur), (DORMANT, k_dorm)):
        m = source == src
        item[m] = world.draw_in_topic(ints.topic[kk[m]], u[m])[0]
    m = source == POPULAR
    item[m] = world.draw_popular(u[m])
    return item


def _repeats(items: np.ndarray) -> np.ndarray:
    """(R, N) bool: the candidate repeats an earlier one of its request (row)."""
    same = items[:, :, None] == items[:, None, :]  # (R, N, N)
    return np.tril(same, k=-1).any(axis=2)


def _click_terms(world: ItemWorld, ints: Interests, act: np.ndarray, far: np.ndarray, item: np.ndarray,
                 ts: np.ndarray, b_ts: np.ndarray, b_item: np.ndarray, window: int) -> dict[str, np.ndarray]:
    """Inputs of the click model for each impression (see click_logit); `act` / `far`: (S, K) interests
    active / dormant at each impression."""
    aff = _affinities(world, ints, item)
    a_cur = np.where(act, aff, 0.0).max(axis=1, initial=0.0)
    a_far = np.where(far, aff, 0.0).max(axis=1, initial=0.0)
    fav = world.author[item][:, None] == ints.fav_author[None, :]
    fav_cur = (fav & act).any(axis=1)
    fav_far = (fav & far).any(axis=1) & ~fav_cur
    # Recency: is the item's topic among the last `window` behaviours strictly before the impression?
    pos = np.searchsorted(b_ts, ts, side="left")
    back = pos[:, None] - np.arange(1, window + 1)[None, :]
    b_topic = world.topic[b_item]
    rec = ((back >= 0) & (b_topic[np.maximum(back, 0)] == world.topic[item][:, None])).any(axis=1)
    return {"a_cur": a_cur.astype(np.float64), "a_far": a_far.astype(np.float64),
            "fav_cur": fav_cur.astype(np.float64), "fav_far": fav_far.astype(np.float64),
            "pop": world.pop_z[item], "rec": rec.astype(np.float64)}


def click_logit(terms: dict[str, np.ndarray], cfg: WorldConfig, bias: float, clip: bool = True) -> np.ndarray:
    """Ground-truth click logit of impressions.

    logit = bias + w_current * a_cur + far_past_signal * (w_far * a_far + w_author * fav_far)
            + w_author * fav_cur + w_popularity * pop + w_recency * rec

    a_cur / a_far: affinity (>= 0) to the user's interests active / dormant (active before, quiet now) at the
    impression time; fav_cur / fav_far: the item's author is a favourite of an active / only of a dormant
    interest; pop: standardised log popularity; rec: the item's topic is among the last `recency_window`
    behaviours. Every term about dormant interests is multiplied by far_past_signal, so 0 removes the far
    past from p_true.
    The logit is clipped to +-LOGIT_CLIP (unless `clip` is False) so p_true stays inside (0, 1) as float32.
    """
    f = cfg.far_past_signal
    logit = (bias + cfg.w_current * terms["a_cur"] + f * (cfg.w_far * terms["a_far"] + cfg.w_author * terms["fav_far"])
             + cfg.w_author * terms["fav_cur"] + cfg.w_popularity * terms["pop"] + cfg.w_recency * terms["rec"])
    return np.clip(logit, -LOGIT_CLIP, LOGIT_CLIP) if clip else logit


def watch_score(draw: UserDraw, cfg: WorldConfig, cal_mean: float, cal_std: float) -> np.ndarray:
    """Latent watch score: corr * standardised affinity + sqrt(1 - corr^2) * noise (unit variance)."""
    r = cfg.ratio_affinity_corr
    return r * (draw.b_affinity - cal_mean) / cal_std + np.sqrt(1.0 - r * r) * draw.b_noise


def finish_user(draw: UserDraw, user_id: int, world: ItemWorld, cfg: WorldConfig,
                cal: Calibration) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(behaviour columns, sample columns) of one user, ready for the writers."""
    z = watch_score(draw, cfg, cal.affinity_mean, cal.affinity_std)
    # Monotone map of the score onto KuaiRand's play/duration quantiles: higher affinity, higher ratio, and
    # the marginal is KuaiRand's (the pilot's score quantiles stand in for the world's).
    ratio = np.interp(z, np.asarray(cal.z_quantiles), np.asarray(RATIO_QUANTILES))
    dur = world.duration_ms[draw.b_item]
    n, s = len(draw.b_ts), len(draw.s_ts)
    beh = {"user_id": np.full(n, user_id, dtype=np.int64), "item_id": draw.b_item + 1, "ts": draw.b_ts,
           "play_ms": np.rint(ratio * dur).astype(np.int64), "duration_ms": np.where(draw.b_unknown_dur, 0, dur)}
    p = (1.0 / (1.0 + np.exp(-click_logit(draw.s_terms, cfg, cal.bias)))).astype(np.float32)
    smp = {"user_id": np.full(s, user_id, dtype=np.int64), "item_id": draw.s_item + 1, "ts": draw.s_ts,
           "label": (draw.s_u < p).astype(np.int8), "p_true": p}
    return beh, smp
