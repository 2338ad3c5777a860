"""Every knob of the generated world, with its default and why.

The world is meant to let the paper's premise (the far past of a life cycle helps predict today's clicks)
hold or fail depending on these knobs; none of them was tuned to make a particular model win. Defaults are
chosen from KuaiRand measurements (see reference.py), from the paper's reported shapes (§4.1: 14.5k mean,
100k max behaviours per user, 5 evaluation days) or, where neither speaks, set to a plainly stated guess
(marked "Guess" below): vary those before believing any conclusion that depends on them.
"""

from __future__ import annotations

import calendar
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

from twinv2.config import from_dict, to_dict
from twinv2.data.generate.reference import TAG_COUNTS

MAX_LENGTH = 1_000_000  # the largest life-cycle length the generator supports (paper: 10^4 to 10^6)


@dataclass(frozen=True)
class WorldConfig:
    """A generated world. Attribute docstrings document each knob; `preset()` gives the named defaults."""

    name: str = "custom"
    """Label stored in the manifest; presets set it to their own name."""
    seed: int = 0
    """Root of every random stream: user u draws from rng([seed, u]), items and the pilot from streams of
    their own, so the bytes never depend on the worker count."""

    # ---- items ------------------------------------------------------------------------------------------
    n_users: int = 2000
    """Users, with ids 0..n_users-1."""
    n_items: int = 200_000
    """Items, with ids 1..n_items (a later benchmark wants a world of about 200,000 items)."""
    n_tags: int = 43
    """Primary tags, the most frequent n_tags of KuaiRand (43 in all); item counts per tag follow its shares."""
    n_topics_per_tag: int = 10
    """Finer topics inside each tag (hidden from models). Interests are topics."""
    n_authors: int = 20_000
    """Authors; each belongs to one topic, so favourite authors are tied to interests. About 10 items each."""
    latent_dim: int = 32
    """Dimension of the hidden item vectors (topic centroid + noise) that define affinity."""
    topic_spread: float = 0.8
    """Noise norm of a topic centroid around its tag centroid: topics of one tag have cosine ~0.6, unrelated
    topics ~0, so a tag is a coarse but real hint of a topic. Guess."""
    item_noise: float = 0.5
    """Noise norm of an item around its topic centroid (item-topic cosine ~0.9). Guess."""
    zipf_exponent: float = 0.9
    """Popularity of the r-th most popular item of a topic is proportional to r^-zipf_exponent; topic mass
    follows topic size. 0.9 gives a heavy head (the top 1% of items draw ~28% of popularity-driven plays)
    without one item swallowing its topic. Guess."""
    unknown_tag_share: float = 96 / 7583
    """Share of items whose tag is stored as -1 (unknown), KuaiRand's untagged share (1.3%)."""

    # ---- users and time ---------------------------------------------------------------------------------
    length_mean: float = 14_500.0
    """Mean life-cycle length (behaviours per user, evaluation days included); the paper's 14.5k."""
    length_sigma: float = 1.2
    """Log-scale spread of the truncated log-normal length distribution: heavy tailed (median ~60% of the
    mean; the top 2% of users hold ~11% of all behaviours, where a cap of 100k at a mean of 14.5k allows at
    most 14%; the paper's "2% of users bring 60% of watch time" is about untruncated platform use). Guess."""
    length_min: int = 50
    """Shortest life cycle."""
    length_max: int = 100_000
    """Longest life cycle (the paper truncates at 100k); at most 1,000,000."""
    max_daily_behaviours: float = 400.0
    """A user's life spans at least length / this many days, so a heavy user is not squeezed into a week
    (400 videos of ~1 min is about 7 hours a day)."""
    history_years: float = 3.0
    """Event time before the evaluation days (warm-up days included); life cycles start anywhere in it (span ~
    Beta(2, 1))."""
    eval_start: str = "2024-04-08"
    """First evaluation day (YYYY-MM-DD, midnight UTC of the data's clock)."""
    n_eval_days: int = 5
    """Consecutive evaluation days of impressions (paper §4.1: five). Behaviours continue through them."""
    warmup_days: int = 0
    """Train-only days of impressions right before the evaluation days (`Dataset.warmup_days`: every hour is
    training, none is ever tested). Why: the five days alone give learned models a few thousand samples, and
    on the demo world TWIN drew level with SIM Hard only after ~200k (issue 11's 10x-impressions curve); the
    paper's models start warm from billions. 0 = the paper's protocol alone (the `tiny` world's bytes)."""
    activity_quantiles: tuple[float, float] = (1 / 3, 2 / 3)
    """Length quantiles splitting users into activity levels low / medium / high (paper Fig. 5's split)."""
    session_mean: float = 12.0
    """Mean behaviours per session (guess); sessions start at hours drawn from KuaiRand's hour-of-day profile."""
    gap_mean_s: float = 45.0
    """Mean seconds between behaviours inside a session (guess: about one short video)."""
    stickiness: float = 0.5
    """Chance that a behaviour keeps the previous one's interest within a session (gap < 30 min): sessions
    are bursty, which gives the recent history its short-term signal. Guess."""

    # ---- interests (each is a topic with a timeline) ----------------------------------------------------
    persistent_mean: float = 1.5
    """Persistent interests, active always: 1 + Poisson(persistent_mean). Guess, like the other interest
    counts: about 6 interests per user in all."""
    seasonal_mean: float = 1.5
    """Seasonal interests: Poisson(seasonal_mean); active in periodic windows, dormant for months between."""
    season_period_days: tuple[float, float] = (120.0, 400.0)
    """Range of a seasonal interest's period (uniform). Guess: from a season to a bit more than a year."""
    season_duty: tuple[float, float] = (0.15, 0.35)
    """Range of the active share of each period: a 300-day period at 0.25 is 75 days on, 225 days off."""
    old_mean: float = 2.0
    """Old interests: Poisson(old_mean); active only in the first part of the life cycle."""
    old_end_frac: tuple[float, float] = (0.1, 0.5)
    """An old interest ends after this share of the user's life span (uniform)."""
    recent_prob: float = 0.3
    """Chance of one recent interest, started within the last `recent_days` before the evaluation ends."""
    recent_days: tuple[float, float] = (3.0, 45.0)
    """Range of days before the end of the last evaluation day at which a recent interest starts."""
    strength_sigma: float = 0.8
    """Interest strengths are log-normal(0, strength_sigma); behaviours pick interests in proportion to
    strength among the active ones, and affinity scales with sqrt(strength / strongest)."""
    fav_author_prob: float = 0.5
    """Chance that an interest has a favourite author (drawn from its topic by author size). Guess."""
    fav_author_share: float = 0.15
    """Share of an interest's behaviours taken from its favourite author's items. Guess."""
    explore: float = 0.1
    """Share of behaviours outside the interests: half by global popularity, half uniform (feeds, trends).
    Guess."""

    # ---- completion ratio -------------------------------------------------------------------------------
    ratio_affinity_corr: float = 0.5
    """Correlation of the latent watch score with the standardised affinity (the rest is noise). The score is
    mapped through a pilot-calibrated monotone transform onto KuaiRand's play/duration quantiles, so the
    marginal matches KuaiRand whatever this value; 0.5 keeps the ratio informative but noisy."""
    unknown_duration_share: float = 0.015
    """Share of behaviours stored with duration_ms = 0 (ratio NaN). KuaiRand's log has 18.5%; 1.5% is enough
    to exercise every NaN path without making a sixth of the data unusable."""

    # ---- impressions and clicks -------------------------------------------------------------------------
    impressions_per_day: tuple[float, float, float] = (8.0, 20.0, 50.0)
    """Mean impressions (candidates) per user per warm-up or evaluation day for activity low / medium / high.
    The paper's data has 46.2B samples over 345.5M users and 5 days, about 27 per user-day; the defaults
    average 26. Raise it (all three) for more training samples per day; a test hour holds ~1/24 of a day."""
    impressions_per_behaviour: float = 0.0
    """0: impressions per user-day follow `impressions_per_day` by activity level. > 0: a user's mean
    impressions per day are this times the user's own behaviours per day (life length / life span), so samples
    concentrate where the watching is, as in the paper's data (§1: 2% of users bring 60% of watch time).
    The paper's totals give ~2: 46.2B samples / 345.5M users / 5 days = 26.7 a user-day against 14.5k
    behaviours over ~3 years = 13.2 a day (§4.1). A user-day rate, warm-up and evaluation days alike."""
    request_size: int = 1
    """Candidates per request: impressions come in requests of this many candidates for the same user at the
    same time, each drawn from candidate_mix, so GAUC and diversity can be taken over requests as a ranking
    page is. Requests per user-day are Poisson(impressions_per_day / request_size). 1 = independent
    impressions (the original world's bytes); Kuaishou's page size is not published, so any other value is a
    Guess."""
    candidate_mix: tuple[float, float, float, float] = (0.4, 0.2, 0.2, 0.2)
    """Sources of impressions: current interests, dormant interests (active before, quiet now), global
    popularity, uniform random (a user with nothing dormant yet gets a random item instead). Retrieval in
    practice serves both long- and short-term interests plus trending items."""
    target_ctr: float = 0.3
    """Mean click probability; the bias is solved on a pilot so that mean p_true is about this. A CTR-like
    rate (KuaiRand's 27K log shows 0.66 clicks per impression, a filtered log)."""
    w_current: float = 4.0
    """Logit weight of the affinity to interests active at the impression time. With the defaults the oracle
    AUC of p_true on `small` is about 0.85: above the paper's best model (0.80, Table 3), so models have
    headroom, yet labels are far from deterministic."""
    w_far: float = 4.0
    """Logit weight of the affinity to dormant interests (active before, quiet now: old or out of season),
    before far_past_signal."""
    far_past_signal: float = 0.5
    """THE knob: multiplies every far-past term (w_far and the far favourite-author term). 0 = interests that
    are quiet now carry no signal, so the far past cannot help; 1 = a dormant interest counts as much as an
    active one. Default 0.5: a dormant interest still pulls (it returns) but weaker than an active one."""
    w_author: float = 0.7
    """Logit bonus for an item by a favourite author of an active interest (x far_past_signal if dormant)."""
    w_popularity: float = 0.3
    """Logit weight of the item's standardised log popularity."""
    w_recency: float = 0.5
    """Logit bonus if the item's topic is among the user's last `recency_window` behaviours."""
    recency_window: int = 50
    """Behaviours counted as recent for w_recency."""

    # ---- storage ----------------------------------------------------------------------------------------
    n_shards: int = 8
    """Shards of behaviours and samples (hash of user_id); the unit of parallel work."""

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def eval_start_ms(self) -> int:
        """Midnight UTC of the first evaluation day, in ms."""
        return int(_parse_date(self.eval_start)) * 1000

    @property
    def first_day_ms(self) -> int:
        """Midnight UTC of the first day with impressions: the first warm-up day, else the first evaluation day."""
        return self.eval_start_ms - self.warmup_days * 86_400_000


def _parse_date(s: str) -> int:
    try:
        return calendar.timegm(time.strptime(s, "%Y-%m-%d"))
    except (TypeError, ValueError):
        raise ValueError(f"eval_start must be a date YYYY-MM-DD, got {s!r}") from None


def _check(ok: bool, field: str, value: Any, need: str) -> None:
    if not ok:
        raise ValueError(f"WorldConfig.{field} = {value!r} is invalid: {need}")


def _range_pair(cfg: WorldConfig, field: str, lo: float, hi: float) -> None:
    v = getattr(cfg, field)
    _check(isinstance(v, tuple) and len(v) == 2 and lo <= v[0] <= v[1] <= hi, field, v,
           f"need a pair (a, b) with {lo} <= a <= b <= {hi}")


def _validate(c: WorldConfig) -> None:
    """Raise ValueError naming the field and value of the first bad setting."""
    ints = {"seed": 0, "n_users": 1, "n_items": 1, "n_tags": 1, "n_topics_per_tag": 1, "n_authors": 1,
            "latent_dim": 2, "length_min": 1, "length_max": 1, "n_eval_days": 1, "warmup_days": 0, "request_size": 1,
            "recency_window": 1, "n_shards": 1}
    for f, lo in ints.items():
        v = getattr(c, f)
        _check(isinstance(v, int) and not isinstance(v, bool) and v >= lo, f, v, f"need an integer >= {lo}")
    nonneg = ("topic_spread", "item_noise", "zipf_exponent", "length_sigma", "persistent_mean", "seasonal_mean",
              "old_mean", "strength_sigma", "w_current", "w_far", "far_past_signal", "w_author", "w_popularity",
              "w_recency")
    for f in nonneg:
        v = getattr(c, f)
        _check(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, f, v, "need a finite number >= 0")
    shares = ("unknown_tag_share", "stickiness", "recent_prob", "fav_author_prob", "fav_author_share", "explore",
              "ratio_affinity_corr", "unknown_duration_share")
    for f in shares:
        v = getattr(c, f)
        _check(isinstance(v, (int, float)) and 0 <= v <= 1, f, v, "need a share in [0, 1]")
    _check(c.n_tags <= len(TAG_COUNTS), "n_tags", c.n_tags, f"KuaiRand has {len(TAG_COUNTS)} primary tags")
    topics = c.n_tags * c.n_topics_per_tag
    _check(c.n_items >= 2 * topics, "n_items", c.n_items, f"need at least 2 items per topic ({2 * topics})")
    _check(c.n_authors <= c.n_items, "n_authors", c.n_authors, f"need at most n_items ({c.n_items})")
    _check(c.n_authors >= topics, "n_authors", c.n_authors, f"need at least one author per topic ({topics})")
    _check(c.length_max <= MAX_LENGTH, "length_max", c.length_max, f"need <= {MAX_LENGTH}")
    _check(c.length_min < c.length_max, "length_min", c.length_min, f"need < length_max ({c.length_max})")
    _check(c.length_min < c.length_mean < c.length_max, "length_mean", c.length_mean,
           f"need strictly between length_min ({c.length_min}) and length_max ({c.length_max})")
    _check(c.length_sigma > 0, "length_sigma", c.length_sigma, "need > 0")
    _check(isinstance(c.impressions_per_behaviour, (int, float)) and math.isfinite(c.impressions_per_behaviour)
           and c.impressions_per_behaviour >= 0, "impressions_per_behaviour", c.impressions_per_behaviour,
           "need a finite number >= 0 (0 = impressions_per_day by activity level)")
    for f in ("max_daily_behaviours", "session_mean", "gap_mean_s", "history_years"):
        v = getattr(c, f)
        _check(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f, v, "need a finite number > 0")
    _check(c.history_years * 365 >= 30, "history_years", c.history_years, "need at least 30 days of history")
    _check(c.warmup_days + 30 <= c.history_years * 365, "warmup_days", c.warmup_days,
           f"need at least 30 days of history before the warm-up days (history_years = {c.history_years})")
    _parse_date(c.eval_start)
    _range_pair(c, "activity_quantiles", 0.0, 1.0)
    _range_pair(c, "season_period_days", 2.0, 10_000.0)
    _range_pair(c, "season_duty", 0.01, 0.99)
    _range_pair(c, "old_end_frac", 0.01, 1.0)
    _range_pair(c, "recent_days", 1.0, 10_000.0)
    imp = c.impressions_per_day
    _check(isinstance(imp, tuple) and len(imp) == 3 and all(x >= 0 for x in imp) and sum(imp) > 0,
           "impressions_per_day", imp, "need three rates >= 0 (low, medium, high), not all 0")
    mix = c.candidate_mix
    _check(isinstance(mix, tuple) and len(mix) == 4 and all(x >= 0 for x in mix) and abs(sum(mix) - 1) < 1e-6,
           "candidate_mix", mix, "need four shares >= 0 (current, dormant, popular, random) summing to 1")
    _check(0 < c.target_ctr < 1, "target_ctr", c.target_ctr, "need a rate strictly inside (0, 1)")


TINY = WorldConfig(
    name="tiny", n_users=96, n_items=4000, n_tags=12, n_topics_per_tag=4, n_authors=400, latent_dim=16,
    length_mean=1000.0, length_min=20, length_max=8000, impressions_per_day=(4.0, 8.0, 16.0), n_shards=4,
)
"""Seconds to generate; for tests. Same shape as `small`, scaled down (96 users, lengths ~1k, 4,000 items)."""

# Paper-shaped settings shared by `small` and `paper` (each measured on `small`, seed 0, in premise.json):
_PAPER_SHAPES = dict(
    # §1: "10,000 behaviours cover only the last 3-4 months of a heavy user": 10,000 / (3.5 x 30.4 days) ~ 95
    # a day. A heavy user (the longest 2%, >= 70.7k) now spans >= 2 years and the latest 10,000 behaviours
    # cover a median 108 days (3.6 months; 83 days at the generic cap of 400).
    max_daily_behaviours=95.0,
    # §4.1: 46.2B samples / 345.5M users / 5 days = 26.7 impressions a user-day, and they follow the watching
    # (§1: 2% of users bring 60% of watch time). 1.25 x the world's mean ~21 behaviours a user-day gives
    # 26.5 measured (53k a day on `small`).
    impressions_per_behaviour=1.25,
    # Issue 11's learning curve: learned models need >= 100k samples to approach SIM Hard; five train-only
    # days double what the five evaluation days hold (the experiment presets cap samples per day).
    warmup_days=5,
    # Requests of 10 candidates (Guess: the page size is not published) so GAUC over requests means something.
    request_size=10,
)

SMALL = WorldConfig(name="small", **_PAPER_SHAPES)
"""About 2,000 users x 14.5k behaviours (~29M) over 200,000 items; the default for demos and benchmarks.
Measured premise (premise.json, seed 0): 9.9% of test samples have their target interest's evidence only
beyond the latest 10,000 behaviours; the oracle's ceiling for a life-cycle gain is +0.011 AUC."""

PAPER = WorldConfig(
    name="paper", n_users=20_000, n_items=1_000_000, n_topics_per_tag=40, n_authors=100_000, n_shards=64,
    **_PAPER_SHAPES,
)
"""Paper-shaped lengths (mean 14.5k, max 100k). 20,000 users: ~290M behaviours, ~3 GB on disk and several
minutes on a 2-core box. Generation streams, so raise n_users as far as time and disk allow: memory does not
grow with it."""

PRESETS: dict[str, WorldConfig] = {"tiny": TINY, "small": SMALL, "paper": PAPER}


def preset(name: str, **overrides: Any) -> WorldConfig:
    """The named preset with `overrides` applied (unknown fields or bad values raise ValueError)."""
    if name not in PRESETS:
        raise ValueError(f"unknown world preset {name!r}; valid presets are {sorted(PRESETS)}")
    data = {**to_dict(PRESETS[name]), **overrides}
    return from_dict(WorldConfig, data, where=f"preset {name!r}")


def replace(cfg: WorldConfig, **changes: Any) -> WorldConfig:
    """`dataclasses.replace` that validates (frozen dataclass, so this is the way to vary one knob)."""
    return dataclasses.replace(cfg, **changes)
