"""The items of a generated world: tags, hidden topics, authors, durations, popularity and latent vectors.

Tags and durations follow KuaiRand (reference.py; durations from the overall distribution, not per tag).
Inside each tag sit `n_topics_per_tag` hidden topics; a topic's latent centroid is its tag's centroid plus
noise, and an item's latent vector is its topic centroid plus noise. Models see item id, author, tag and
duration; topics, vectors and popularity stay in `truth/`. Item ids are a random permutation, so an id says
nothing about the topic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinv2.data.generate.config import WorldConfig
from twinv2.data.generate.reference import sample_durations, tag_shares
from twinv2.data.storage import write_table

ITEM_STREAM = 0x17E45  # tag of the items' random stream


def user_rng(seed: int, user_id: int) -> np.random.Generator:
    """User `user_id`'s own generator: its bytes never depend on which worker draws it, or when."""
    return np.random.default_rng([seed, user_id])


def world_rng(seed: int, tag: int, index: int = 0) -> np.random.Generator:
    """A non-user stream. Three words with a non-zero last one: numpy's SeedSequence pads short entropy with
    zeros, so [seed, tag] would equal the stream of user `tag`, and [seed, tag, 0] would equal [seed, tag]."""
    return np.random.default_rng([seed, tag, 1 + index])


def truth_files(w: "ItemWorld") -> dict[str, np.ndarray]:
    """File name under truth/ -> hidden array."""
    return {"item_topic.npy": w.topic, "item_popularity.npy": w.popularity, "item_latent.npy": w.latent,
            "topic_tag.npy": w.topic_tag, "topic_centroid.npy": w.topic_centroid}


def _allocate(total: int, shares: np.ndarray, minimum: int) -> np.ndarray:
    """Integer counts summing to `total`, each >= `minimum`, proportional to `shares` (largest remainder)."""
    n = len(shares)
    spare = total - minimum * n
    assert spare >= 0, "caller guarantees total >= minimum * len(shares)"
    raw = spare * np.asarray(shares, dtype=np.float64) / np.sum(shares)
    base = np.floor(raw).astype(np.int64)
    rest = spare - int(base.sum())
    base[np.argsort(-(raw - base), kind="stable")[:rest]] += 1
    return base + minimum


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def zipf_span(m: np.ndarray, a: float) -> np.ndarray:
    """G(m+1) - G(1) for lists of m items, G(x) = x^(1-a) (log x when a = 1); see `zipf_rank`."""
    m1 = np.asarray(m, dtype=np.float64) + 1.0
    return np.log(m1) if abs(1.0 - a) < 1e-9 else m1 ** (1.0 - a) - 1.0


def zipf_rank(u: np.ndarray, m: np.ndarray, a: float, span: np.ndarray | None = None) -> np.ndarray:
    """0-based rank in a list of m items with P(rank r-1) = (G(r+1) - G(r)) / (G(m+1) - G(1)): a discrete
    Zipf law (P ~ r^-a) whose inverse CDF is closed-form, so a draw is O(1). `span` = zipf_span(m, a) if known."""
    c = zipf_span(m, a) if span is None else span
    x = np.exp(u * c) if abs(1.0 - a) < 1e-9 else (1.0 + u * c) ** (1.0 / (1.0 - a))
    return np.clip(x.astype(np.int64) - 1, 0, np.asarray(m, dtype=np.int64) - 1)  # x >= 1: int() is floor


def zipf_probs(rank: np.ndarray, m: np.ndarray, a: float) -> np.ndarray:
    """P(0-based rank) of `zipf_rank` in lists of m items."""
    r, m1 = rank + 1.0, np.asarray(m, dtype=np.float64) + 1.0
    if abs(1.0 - a) < 1e-9:
        return np.log((r + 1.0) / r) / np.log(m1)
    b = 1.0 - a
    return ((r + 1.0) ** b - r**b) / (m1**b - 1.0)


class SegmentSampler:
    """Draw a member of a segment (e.g. a topic's authors) in proportion to member weights.

    Members are ordered by segment and keyed by `segment + cumulative share within the segment`, so a whole
    vector of (segment, uniform) pairs is answered by one `searchsorted`: no Python loop per draw.
    """

    def __init__(self, segment: np.ndarray, weight: np.ndarray) -> None:
        self.members = np.argsort(segment, kind="stable")
        seg = segment[self.members].astype(np.float64)
        self.keys = seg + _segment_cumshare(seg, weight[self.members].astype(np.float64))

    def draw(self, segments: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Member index for each (segment, u in [0, 1))."""
        q = segments.astype(np.float64) + np.minimum(u, 1.0 - 1e-9)
        pos = np.searchsorted(self.keys, q, side="right")
        return self.members[np.minimum(pos, len(self.members) - 1)]


def _segment_cumshare(seg: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Cumulative share of `w` within runs of equal `seg` (last of each run exactly 1.0)."""
    cs = np.cumsum(w)
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    ends = np.r_[starts[1:], len(seg)]
    before = np.r_[0.0, cs][starts]
    sizes = ends - starts
    frac = (cs - np.repeat(before, sizes)) / np.repeat(cs[ends - 1] - before, sizes)
    frac[ends - 1] = 1.0  # exact upper edge, so u < 1 never spills into the next segment
    return frac


@dataclass
class ItemWorld:
    """Per-item arrays indexed by item_id - 1, per-topic arrays indexed by topic, and samplers built on them."""

    tag: np.ndarray  # (N,) int64 visible tag, -1 = unknown
    author: np.ndarray  # (N,) int64
    duration_ms: np.ndarray  # (N,) int64
    topic: np.ndarray  # (N,) int32, hidden
    popularity: np.ndarray  # (N,) float64, draw probability (sums to 1), hidden
    latent: np.ndarray  # (N, D) float32 unit vectors, hidden
    topic_tag: np.ndarray  # (T,) int64 true tag of each topic
    topic_centroid: np.ndarray  # (T, D) float32 unit vectors
    zipf_exponent: float
    _index: dict = field(default_factory=dict, repr=False)

    @property
    def n_items(self) -> int:
        return len(self.tag)

    @property
    def n_topics(self) -> int:
        return len(self.topic_tag)

    # ---- samplers (built lazily from the arrays alone, so a built and a loaded world draw the same) ------
    def _build_index(self) -> None:
        ix = self._index
        # Items of a topic in decreasing popularity: position r in a topic's run is Zipf rank r.
        order = np.lexsort((np.arange(self.n_items), -self.popularity, self.topic))
        size = np.bincount(self.topic, minlength=self.n_topics)
        start = np.r_[0, np.cumsum(size)[:-1]]
        rank = np.empty(self.n_items, dtype=np.int64)
        rank[order] = np.arange(self.n_items) - np.repeat(start, size)
        ix.update(rank_order=order, topic_size=size, topic_start=start, item_rank=rank)
        # Latent vectors in (topic, rank) order: a topic's vectors are one contiguous slice, because random
        # row gathers from a large array are slow (one TLB miss per row).
        ix["latent_by_rank"] = np.ascontiguousarray(self.latent[order])
        ix["zipf_span"] = zipf_span(size, self.zipf_exponent)
        mass = np.bincount(self.topic, weights=self.popularity, minlength=self.n_topics)
        ix["topic_cum"], ix["topic_mass"] = np.cumsum(mass), mass
        n_authors = int(self.author.max()) + 1
        by_author = np.argsort(self.author, kind="stable")
        counts = np.bincount(self.author, minlength=n_authors)
        ix.update(author_items=by_author, author_off=np.r_[0, np.cumsum(counts)], author_count=counts)
        author_topic = np.zeros(n_authors, dtype=np.int64)
        author_topic[self.author] = self.topic  # every item of an author has the author's topic
        ix["author_by_topic"] = SegmentSampler(author_topic[counts > 0], counts[counts > 0].astype(np.float64))
        ix["author_ids"] = np.flatnonzero(counts > 0)
        logp = np.log(self.popularity)
        ix["pop_z"] = ((logp - logp.mean()) / logp.std()).astype(np.float64)

    def index(self, key: str) -> Any:
        if not self._index:
            self._build_index()
        return self._index[key]

    def topic_slice(self, topic: int) -> slice:
        """Rows of a topic's items, in rank order, in `index("rank_order")` and `index("latent_by_rank")`."""
        a = int(self.index("topic_start")[topic])
        return slice(a, a + int(self.index("topic_size")[topic]))

    def draw_in_topic(self, topics: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(item index, rank within its topic) per topic, by popularity within the topic."""
        r = zipf_rank(u, self.index("topic_size")[topics], self.zipf_exponent, self.index("zipf_span")[topics])
        return self.index("rank_order")[self.index("topic_start")[topics] + r], r

    def draw_popular(self, u: np.ndarray) -> np.ndarray:
        """Item index by global popularity: a topic by its mass, then a rank inside it, from one uniform
        (popularity is topic mass x Zipf share, so this is exact; and O(1) instead of a binary search over
        every item)."""
        cum, mass = self.index("topic_cum"), self.index("topic_mass")
        x = u * cum[-1]
        t = np.minimum(np.searchsorted(cum, x, side="right"), self.n_topics - 1)
        u_in = np.clip((x - (cum[t] - mass[t])) / mass[t], 0.0, 1.0 - 1e-12)
        return self.draw_in_topic(t, u_in)[0]

    def draw_by_author(self, authors: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Item index uniformly among each author's items."""
        off, cnt = self.index("author_off"), self.index("author_count")
        k = np.minimum((u * cnt[authors]).astype(np.int64), cnt[authors] - 1)
        return self.index("author_items")[off[authors] + k]

    def draw_author_of_topic(self, topics: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Author id per topic, in proportion to the author's item count."""
        pos = self.index("author_by_topic").draw(topics, u)
        return self.index("author_ids")[pos]

    @property
    def pop_z(self) -> np.ndarray:
        """Standardised log popularity per item (the click model's popularity term)."""
        return self.index("pop_z")

    # ---- files ------------------------------------------------------------------------------------------
    def save(self, root: Path) -> None:
        """items.parquet (what models see) and truth/*.npy (what they never see)."""
        items = pd.DataFrame({"item_id": np.arange(1, self.n_items + 1, dtype=np.int64), "author_id": self.author,
                              "tag": self.tag, "duration_ms": self.duration_ms})
        write_table(Path(root) / "items.parquet", items)
        truth = Path(root) / "truth"
        truth.mkdir(parents=True, exist_ok=True)
        for fname, arr in truth_files(self).items():
            np.save(truth / fname, arr)

    @classmethod
    def load(cls, root: Path, zipf_exponent: float) -> "ItemWorld":
        """Read a saved world; the latent vectors are memory-mapped so worker processes share one copy."""
        root = Path(root)
        items = pd.read_parquet(root / "items.parquet")
        t = root / "truth"
        return cls(tag=items["tag"].to_numpy(), author=items["author_id"].to_numpy(),
                   duration_ms=items["duration_ms"].to_numpy(), topic=np.load(t / "item_topic.npy"),
                   popularity=np.load(t / "item_popularity.npy"),
                   latent=np.load(t / "item_latent.npy", mmap_mode="r"),
                   topic_tag=np.load(t / "topic_tag.npy"), topic_centroid=np.load(t / "topic_centroid.npy"),
                   zipf_exponent=zipf_exponent)


def build_items(cfg: WorldConfig) -> ItemWorld:
    """Draw the item world of `cfg` from its own random stream (independent of users and workers)."""
    rng = world_rng(cfg.seed, ITEM_STREAM)
    tags, shares = tag_shares(cfg.n_tags)
    k, n, d = cfg.n_topics_per_tag, cfg.n_items, cfg.latent_dim
    per_tag = _allocate(n, shares, minimum=2 * k)
    # Topic sizes inside a tag vary (Dirichlet(2) shares), so some topics are niches and some are broad.
    per_topic = np.concatenate([_allocate(int(m), rng.dirichlet(np.full(k, 2.0)), minimum=2) for m in per_tag])
    n_topics = len(per_topic)
    topic_tag_idx = np.repeat(np.arange(cfg.n_tags), k)
    starts = np.r_[0, np.cumsum(per_topic)[:-1]]
    topic_row = np.repeat(np.arange(n_topics), per_topic)  # rows are in topic order, then popularity rank
    rank = np.arange(n) - np.repeat(starts, per_topic)  # 0-based popularity rank inside the topic
    # A topic's mass is its share of items, so tag masses follow KuaiRand's tag shares.
    pop_row = (per_topic / n)[topic_row] * zipf_probs(rank, per_topic[topic_row], cfg.zipf_exponent)

    tag_c = _unit(rng.standard_normal((cfg.n_tags, d)))
    topic_c = _unit(tag_c[topic_tag_idx] + cfg.topic_spread * rng.standard_normal((n_topics, d)) / np.sqrt(d))
    latent_row = _unit(topic_c[topic_row] + cfg.item_noise * rng.standard_normal((n, d)) / np.sqrt(d))
    duration_row = sample_durations(rng.random(n))

    # Authors: each topic gets authors in proportion to its size (at least one, at most one per item). The
    # first a_t slots give every author one item; the rest go to authors with a skewed (u^2) draw, so a few
    # authors are prolific. Slots are then shuffled within the topic so authorship is unrelated to rank.
    a_t = np.minimum(_allocate(cfg.n_authors, per_topic / n, minimum=1), per_topic)
    a_row = np.repeat(a_t, per_topic)
    local = np.where(rank < a_row, rank, (a_row * rng.random(n) ** 2).astype(np.int64))
    local = local[np.lexsort((rng.random(n), topic_row))]  # shuffle within each topic (rows stay topic-ordered)
    author_row = np.r_[0, np.cumsum(a_t)[:-1]][topic_row] + local
    author_perm = rng.permutation(int(a_t.sum()))
    author_row = author_perm[author_row]

    tag_row = tags[topic_tag_idx][topic_row]
    tag_row = np.where(rng.random(n) < cfg.unknown_tag_share, -1, tag_row)

    perm = rng.permutation(n)  # row j becomes item id perm[j] + 1

    def by_id(a: np.ndarray) -> np.ndarray:
        out = np.empty_like(a)
        out[perm] = a
        return out

    return ItemWorld(tag=by_id(tag_row).astype(np.int64), author=by_id(author_row).astype(np.int64),
                     duration_ms=by_id(duration_row), topic=by_id(topic_row).astype(np.int32),
                     popularity=by_id(pop_row), latent=by_id(latent_row.astype(np.float32)),
                     topic_tag=tags[topic_tag_idx].astype(np.int64), topic_centroid=topic_c.astype(np.float32),
                     zipf_exponent=cfg.zipf_exponent)
