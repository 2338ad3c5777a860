"""The frame every CTR model shares; models differ only in their long-term module (paper §4.1).

logit = MLP([e(target), long_term(batch, e(target)), e(target) ⊙ W long_term, user features])

e(item) = ItemEmbedding(item, author, tag) + E_dur[duration bucket]: the inherent features K_h of A.2.
Author, tag and duration bucket are looked up from the item row inside the model (buffers), so a batch
carries only item rows and the same tables serve the target, the sequence and the cached projections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from twinv2.models.attention import AttentionConfig
from twinv2.models.batch import Batch
from twinv2.models.embeddings import ItemEmbedding


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 32  # D, every item-side embedding
    mlp: tuple[int, ...] = (128, 64)  # hidden sizes of the CTR tower
    seq_len: int = 0  # L fed to the long-term module; 0 = the model's own default
    user_dim: int = 8  # per user feature
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def __post_init__(self) -> None:
        if self.dim < 1 or any(h < 1 for h in self.mlp) or self.seq_len < 0:
            raise ValueError(f"bad ModelConfig: dim={self.dim}, mlp={self.mlp}, seq_len={self.seq_len}")
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
        self.register_buffer("author_of", torch.as_tensor(tables.author_of, dtype=torch.long))
        self.register_buffer("tag_of", torch.as_tensor(tables.tag_of, dtype=torch.long))
        self.register_buffer("dur_of", torch.as_tensor(tables.dur_of, dtype=torch.long))

    @property
    def n_items(self) -> int:
        return self.author_of.shape[0]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.emb(rows, self.author_of[rows], self.tag_of[rows]) + self.dur(self.dur_of[rows])  # (..., D)

    def every_item(self) -> torch.Tensor:
        """Embeddings of every item row (I, D): the item table is used as is (no identity gather)."""
        e = self.emb
        return e.item.weight + e.author.weight[self.author_of] + e.tag.weight[self.tag_of] + \
            self.dur.weight[self.dur_of]  # (I, D)

    def tag(self, rows: torch.Tensor) -> torch.Tensor:
        return self.tag_of[rows]

    @torch.no_grad()
    def load_pretrained(self, vectors: np.ndarray) -> None:
        """Start from offline item embeddings (I, D) by item row (the `twinv2 embed` table): they already hold
        item + author + tag, so the item table takes them and the author and tag tables start at zero."""
        e = self.emb
        if vectors.shape != tuple(e.item.weight.shape):
            raise ValueError(f"pretrained item vectors have shape {vectors.shape}, the item table "
                             f"{tuple(e.item.weight.shape)} (rows x dim must match)")
        e.item.weight.copy_(torch.as_tensor(vectors, dtype=e.item.weight.dtype))
        e.item.weight[0].zero_()
        e.author.weight.zero_()
        e.tag.weight.zero_()


class CTRModel(nn.Module):
    """Base class. Subclasses set `sequence` ("recent" or "clusters"), `default_seq_len`, and `long_term`."""

    sequence: str = "recent"
    default_seq_len: int = 100
    interest_dim: int = 32

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
        layers: list[nn.Module] = []
        for h in cfg.mlp:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.tower = nn.Sequential(*layers)

    @property
    def seq_len(self) -> int:
        return self.cfg.seq_len or self.default_seq_len

    def build_long_term(self) -> int:
        """Create the long-term module's parameters; return its output dim."""
        raise NotImplementedError

    def long_term(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        """(B, interest_dim) from the batch's sequence and the target embeddings (B, D)."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:
        target = self.items(batch.target)  # (B, D)
        interest = self.long_term(batch, target)  # (B, interest_dim)
        parts = [target, interest, target * self.bridge(interest)]
        if batch.user is not None and len(self.users):
            parts += [emb(batch.user[:, f]) for f, emb in enumerate(self.users)]  # F × (B, user_dim)
        return self.tower(torch.cat(parts, dim=-1)).squeeze(-1)  # (B,)
