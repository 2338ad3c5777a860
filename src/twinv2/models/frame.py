"""The frame every CTR model shares; models differ only in their long-term module (paper §4.1).

logit = MLP([e(target), long, e(target) ⊙ W long, short, e(target) ⊙ W_s short, user features])
        + γ · e(target)·W long + γ_s · e(target)·W_s short

long = long_term(batch, e(target)); short = a target attention over the latest `short_len` raw behaviours
(every long-sequence model; DIN and Avg-Pooling, whose sequence is the recent 100, have none).

e(item) = ItemEmbedding(item, author, tag) + E_dur[duration bucket]: the inherent features K_h of A.2.
Author, tag and duration bucket are looked up from the item row inside the model (buffers), so a batch
carries only item rows and the same tables serve the target, the sequence and the cached projections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from twinv2.models.attention import AttentionConfig, TargetAttention
from twinv2.models.batch import Batch, Seq
from twinv2.models.embeddings import ItemEmbedding
from twinv2.models.search import item_table


@dataclass(frozen=True)
class ETAConfig:
    """ETA's SimHash GSU (models/eta.py)."""

    n_bits: int = 64  # m, signature length: more bits rank closer to the angle, at m/8 bytes a behaviour
    lsh_seed: int = 20_210_801  # fixed: the hyperplanes must not depend on the global torch seed

    def __post_init__(self) -> None:
        if self.n_bits < 1:
            raise ValueError(f"eta.n_bits must be >= 1, got {self.n_bits}")


@dataclass(frozen=True)
class SDIMConfig:
    """SDIM's hash sampling (models/sdim.py)."""

    n_hashes: int = 48  # m hash functions; more average out the collision noise
    n_bits: int = 3  # τ bits per hash function (<= 8: a signature is one byte); more = sharper kernel
    lsh_seed: int = 20_221_017  # fixed, as ETA's

    def __post_init__(self) -> None:
        if self.n_hashes < 1 or not 1 <= self.n_bits <= 8:
            raise ValueError(f"sdim needs n_hashes >= 1 and 1 <= n_bits <= 8, got n_hashes={self.n_hashes}, "
                             f"n_bits={self.n_bits}")


@dataclass(frozen=True)
class SIMClusterConfig:
    """The global k-means of SIM Cluster / SIM Cluster+ (models/sim_cluster.py)."""

    n_clusters: int = 1_000  # global item groups: SIM Cluster's 1,000 (paper §4.1)
    kmeans_iter: int = 20  # Lloyd iterations of the one-off global k-means
    kmeans_seed: int = 1234  # fixed, so the groups do not depend on the global seed

    def __post_init__(self) -> None:
        if self.n_clusters < 1 or self.kmeans_iter < 1:
            raise ValueError(f"sim_cluster needs n_clusters >= 1 and kmeans_iter >= 1, got n_clusters="
                             f"{self.n_clusters}, kmeans_iter={self.kmeans_iter}")


@dataclass(frozen=True)
class SIMClusterPlusConfig(SIMClusterConfig):
    """SIM Cluster+: the same k-means with more groups (its own class, so a partial YAML keeps this default)."""

    n_clusters: int = 10_000  # SIM Cluster+'s 10,000 (paper §4.1)


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 32  # D, every item-side embedding
    mlp: tuple[int, ...] = (128, 64)  # hidden sizes of the CTR tower
    seq_len: int = 0  # L fed to the long-term module; 0 = the model's own default
    user_dim: int = 8  # per user feature
    short_len: int = 50  # S: a short-term target attention over the latest S raw behaviours beside the
    #  long-term module, as in every long-sequence model of FuxiCTR's LongCTR zoo (SIM, ETA, SDIM, TWIN:
    #  short_seq_len 50; reczoo/FuxiCTR model_zoo/LongCTR/*/ at 0245987). Models whose own sequence is the recent
    #  100 (DIN, Avg-Pooling) take none. 0 = no short-term part. Why: TWIN over the latest 100 (= DIN, 0.7842 AUC)
    #  beat TWIN over 10,000 (0.7728): a similarity top-100 of the whole history loses which interests are
    #  current. With it (demo, 2,500 samples a day): TWIN 0.7728 -> 0.7892, TWIN-V2 0.7737 -> 0.7895, SIM Hard
    #  0.7927 -> 0.7974 mean AUC.
    match_init: float = 1.0  # γ0: the logit is tower + γ · e(target)·bridge(interest), γ starting at γ0 / r²
    #  (r = the item vectors' RMS norm) with the tower's output layer at zero, so step 0 ranks by the match
    #  (demo: step-0 AUC 0.779, its zero-shot reference 0.780; a random tower: 0.500). 0 = a plain tower.
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    eta: ETAConfig = field(default_factory=ETAConfig)
    sdim: SDIMConfig = field(default_factory=SDIMConfig)
    sim_cluster: SIMClusterConfig = field(default_factory=SIMClusterConfig)
    sim_cluster_plus: SIMClusterPlusConfig = field(default_factory=SIMClusterPlusConfig)

    def __post_init__(self) -> None:
        if self.dim < 1 or any(h < 1 for h in self.mlp) or self.seq_len < 0 or self.short_len < 0:
            raise ValueError(f"bad ModelConfig: dim={self.dim}, mlp={self.mlp}, seq_len={self.seq_len}, "
                             f"short_len={self.short_len}")
        if self.attention.dim != self.dim:
            raise ValueError(f"attention.dim ({self.attention.dim}) must equal dim ({self.dim})")


@dataclass(frozen=True)
class ItemTables:
    """Per item row: author row, tag row, duration bucket (row 0 = unknown item). Built from the vocabulary."""

    author_of: np.ndarray  # (I,) int64
    tag_of: np.ndarray  # (I,) int64
    dur_of: np.ndarray  # (I,) int64
    n_authors: int
    n_tags: int
    n_dur: int

    @property
    def n_items(self) -> int:
        return len(self.author_of)


class ItemFeatures(nn.Module):
    """Item row (...) → inherent embedding (..., D)."""

    def __init__(self, tables: ItemTables, dim: int) -> None:
        super().__init__()
        # Sparse gradients: a step touches a few thousand of the (up to millions of) item rows, so dense
        # gradients and dense Adam updates of the whole table would dominate the step (train/optim.py).
        self.emb = ItemEmbedding(tables.n_items, tables.n_authors, tables.n_tags, dim=dim, sparse=True)
        self.dur = nn.Embedding(tables.n_dur, dim, padding_idx=0)
        # Zero start: with torch's N(0, 1) default the duration vectors (norm 4-7 at D = 32) outweighed the
        # item vectors (norm ~1.8 pre-trained, ~1 random) and the model's item cosine followed "same duration
        # bucket" (corr. 0.91) instead of the pre-trained cosine (0.05); demo TWIN GAUC 0.514 -> 0.603 (issue 11).
        nn.init.zeros_(self.dur.weight)
        self.register_buffer("author_of", torch.as_tensor(tables.author_of, dtype=torch.long))
        self.register_buffer("tag_of", torch.as_tensor(tables.tag_of, dtype=torch.long))
        self.register_buffer("dur_of", torch.as_tensor(tables.dur_of, dtype=torch.long))

    @property
    def n_items(self) -> int:
        return self.author_of.shape[0]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.emb(rows, self.author_of[rows], self.tag_of[rows]) + self.dur(self.dur_of[rows])  # (..., D)

    def every_item(self) -> torch.Tensor:
        """Embeddings of every item row (I, D), summed as `forward` sums them (item + author + tag + duration,
        bit for bit: a + b == b + a), the item table used as is; index_select and in-place sums run ~2.5x
        faster than indexing and chained adds (7 vs 19 ms at 200,000 items, 2 threads).

        Without gradient the table is kept until a table changes: the key is each tensor's storage and version
        counter, which every in-place write (an optimizer step, load_state_dict, load_pretrained) bumps, so an
        evaluation pass builds it once instead of once a batch."""
        e = self.emb
        tensors = (e.item.weight, e.author.weight, e.tag.weight, self.dur.weight, self.author_of, self.tag_of,
                   self.dur_of)
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        cached = None if torch.is_grad_enabled() else self.__dict__.get("_every")
        if cached is not None and cached[0] == key:
            return cached[1]
        out = e.author.weight.index_select(0, self.author_of)  # (I, D)
        out += e.item.weight
        out += e.tag.weight.index_select(0, self.tag_of)
        out += self.dur.weight.index_select(0, self.dur_of)
        if not torch.is_grad_enabled():
            self.__dict__["_every"] = (key, out)
        return out

    def tag(self, rows: torch.Tensor) -> torch.Tensor:
        return self.tag_of[rows]

    @torch.no_grad()
    def load_pretrained(self, vectors: np.ndarray) -> None:
        """Start from offline item embeddings (I, D) by item row (the `twinv2 embed` table): they already hold
        item + author + tag, so the item table takes them and the author, tag and duration tables start at zero.

        Every known row is rescaled to the table's RMS row norm, so a dot product between two items is their
        pre-trained cosine times one constant: the similarity the offline clustering and the zero-shot
        reference use, and what the attention starts from (`TargetAttention.start_item_term`)."""
        e = self.emb
        if vectors.shape != tuple(e.item.weight.shape):
            raise ValueError(f"pretrained item vectors have shape {vectors.shape}, the item table "
                             f"{tuple(e.item.weight.shape)} (rows x dim must match)")
        v = torch.as_tensor(vectors, dtype=e.item.weight.dtype).clone()
        v[0] = 0.0
        norm = v.norm(dim=1, keepdim=True)  # (I, 1)
        known = norm[:, 0] > 0
        if known.any():
            rms = norm[known].square().mean().sqrt()
            v[known] *= rms / norm[known]
        e.item.weight.copy_(v)
        e.author.weight.zero_()
        e.tag.weight.zero_()
        self.dur.weight.zero_()

    @torch.no_grad()
    def rms_norm(self) -> float:
        """RMS norm of the known items' inherent embeddings (row 0, the unknown item, excluded)."""
        e = self.every_item()[1:]
        return float(e.square().sum(1).mean().sqrt()) if len(e) else 1.0


class CTRModel(nn.Module):
    """Base class. Subclasses set `sequence` ("recent" or "clusters"), `default_seq_len`, and `long_term`."""

    sequence: str = "recent"
    default_seq_len: int = 100
    interest_dim: int = 32
    short_term: bool = True  # reads a short-term interest (ModelConfig.short_len); False where the model's own
    #  sequence already is the recent behaviours (DIN, Avg-Pooling)

    def __init__(self, tables: ItemTables, cfg: ModelConfig, cross_buckets: list[int],
                 user_buckets: list[int] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.cross_buckets = list(cross_buckets)
        self.items = ItemFeatures(tables, cfg.dim)
        self.users = nn.ModuleList(nn.Embedding(n, cfg.user_dim) for n in (user_buckets or []))
        self.interest_dim = self.build_long_term()
        self.bridge = nn.Linear(self.interest_dim, cfg.dim, bias=False)
        width = cfg.dim + self.interest_dim + cfg.dim + cfg.user_dim * len(self.users)
        self.short_len = cfg.short_len if self.short_term else 0
        if self.short_len:  # its own attention (FuxiCTR's short_attention), bridge and match weight
            self.short = TargetAttention(cfg.attention, self.cross_buckets)
            self.short_bridge = nn.Linear(cfg.attention.out_dim, cfg.dim, bias=False)
            self.short_match = nn.Parameter(torch.zeros(()))  # starts at 0: step 0 ranks by the long-term match
            width += cfg.attention.out_dim + cfg.dim
        layers: list[nn.Module] = []
        for h in cfg.mlp:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.tower = nn.Sequential(*layers)
        self.match = nn.Parameter(torch.zeros(()))  # γ: weight of the target-interest match in the logit
        self.start_neutral()

    @torch.no_grad()
    def start_neutral(self) -> None:
        """Initialise the maps between the item space and the interest so the first step already uses the
        item similarity: the bridge starts as the identity (so e(target) ⊙ bridge(interest) sums to the
        target-interest dot product; a random start lifted nothing: demo Avg-Pooling GAUC 0.686 -> 0.740 with
        the identity, issue 11), and every target attention starts with its item term dominant
        (`TargetAttention.start_item_term`) at the scale of the current item vectors. Called again after
        pre-trained vectors are loaded (`load_pretrained`)."""
        nn.init.eye_(self.bridge.weight)
        if self.short_len:
            nn.init.eye_(self.short_bridge.weight)
        scale = self.items.rms_norm()
        if self.cfg.match_init:
            nn.init.zeros_(self.tower[-1].weight)  # the tower starts silent; the match term ranks at step 0
        self.match.fill_(self.cfg.match_init / max(scale, 1e-6) ** 2)
        for m in self.modules():
            start = getattr(m, "start_item_term", None)
            if start is not None:
                start(scale)

    @torch.no_grad()
    def start_base_rate(self, rate: float) -> None:
        """With the match start, the logit's bias at the log-odds of `rate` (the first training hours' click
        rate, never a test label): at 0 (p = 0.5 against rates of ~0.1-0.3) the first steps go to calibration."""
        if 0.0 < rate < 1.0 and self.cfg.match_init:
            self.tower[-1].bias.fill_(float(np.log(rate / (1.0 - rate))))

    def load_pretrained(self, vectors: np.ndarray) -> None:
        """Item tables from offline vectors (ItemFeatures.load_pretrained), then the neutral start at their scale."""
        self.items.load_pretrained(vectors)
        self.start_neutral()

    @property
    def seq_len(self) -> int:
        return self.cfg.seq_len or self.default_seq_len

    @property
    def recent_len(self) -> int:
        """How many of the latest raw behaviours `Batch.recent` must hold (0: the model reads none): a clusters
        model's short-term interest reads `short_len` of them; a recent model reads its own sequence."""
        return self.short_len if self.sequence == "clusters" else 0

    def build_long_term(self) -> int:
        """Create the long-term module's parameters; return its output dim."""
        raise NotImplementedError

    def long_term(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        """(B, interest_dim) from the batch's sequence and the target embeddings (B, D)."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:
        target = self.items(batch.target)  # (B, D)
        short = None
        if self.short_len:  # a recent model's own sequence holds the latest behaviours; a clusters model's batch
            #  carries them in `recent` (None: none known, an empty short term)
            short = self.short_interest(batch.seq if self.sequence == "recent" else batch.recent, target)
        return self.ctr_head(target, self.long_term(batch, target), batch.user, short)  # (B,)

    def short_interest(self, recent: Seq | None, target: torch.Tensor) -> torch.Tensor:
        """Target attention (B, out_dim) over the latest `short_len` of the raw behaviours `recent` (right-aligned,
        the latest last: the batcher's layout), without ln n; zeros when `recent` is None, as for a sample with
        no behaviour."""
        if recent is None:
            return target.new_zeros(target.shape[0], self.short.cfg.out_dim)
        if recent.log_n is not None:
            raise ValueError("the short-term interest reads raw behaviours; got a cluster sequence (log_n set)")
        recent = recent.last(self.short_len)  # (B, S')
        table, rows = item_table(self.items, recent.rows)  # (U, D), (B, S')
        q = self.short.query(target)  # (B, H, d)
        return self.short.esu(q, table, rows, recent.cross, None, recent.mask)  # (B, out_dim)

    def ctr_head(self, target: torch.Tensor, interest: torch.Tensor, user: torch.Tensor | None,
                 short: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B,) of the tower on [e(target) (B, D), interest (B, interest_dim), e(target) ⊙ W interest,
        the short-term interest (B, out_dim) and e(target) ⊙ W_s short when the model reads one, user features
        (B, F) bucket ids]: the one head of the offline forward and of serving (TWIN.score)."""
        match = target * self.bridge(interest)  # (B, D)
        parts = [target, interest, match]
        logit = self.match * match.sum(-1)  # (B,)
        if self.short_len:
            if short is None:
                raise ValueError(f"{type(self).__name__} reads a short-term interest (short_len {self.short_len}); "
                                 f"none was given")
            short_match = target * self.short_bridge(short)  # (B, D)
            parts += [short, short_match]
            logit = logit + self.short_match * short_match.sum(-1)
        if len(self.users):
            if user is None or user.shape[-1] != len(self.users):
                raise ValueError(f"the model reads {len(self.users)} user feature(s), got "
                                 f"{None if user is None else tuple(user.shape)} user bucket ids")
            parts += [emb(user[:, f]) for f, emb in enumerate(self.users)]  # F × (B, user_dim)
        return self.tower(torch.cat(parts, dim=-1)).squeeze(-1) + logit  # (B,)
