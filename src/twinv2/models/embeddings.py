"""Item-side embedding tables (item id, author, tag) and the raw-id → row vocabulary they index.

These are the *inherent* features of the paper's K_h (§3.3.3): they depend on the item only, so the same
tables serve three consumers — `twinv2 embed` pre-trains them on behaviour sequences to produce K_s for the
offline clustering (§3.3.1, "embeddings from the recommendation model"), the CTR model reuses them, and
serving caches their output per item.

Row 0 of every table is reserved for "unknown or padding": a raw id missing from the vocabulary, an
`author_id`/`tag` of -1 (schema.UNKNOWN_ID) and padding all map there, and that row is a fixed zero vector
(`padding_idx=0`), so an unknown field contributes nothing to the sum instead of a shared learned vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import torch
from torch import nn


def rows_of(known_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each raw id in `known_ids` (sorted, unique) plus one; 0 for an id not in it.  (T,) int64"""
    ids = np.asarray(ids, dtype=np.int64)
    if len(known_ids) == 0:
        return np.zeros(ids.shape, dtype=np.int64)
    pos = np.searchsorted(known_ids, ids)
    pos_c = np.minimum(pos, len(known_ids) - 1)
    found = known_ids[pos_c] == ids
    return np.where(found, pos_c + 1, 0).astype(np.int64)


@dataclass(frozen=True)
class ItemVocab:
    """Raw item/author/tag ids → embedding rows, built once from the items table and shared by every model.

    `item_ids[r - 1]` is the raw id of item row r; `author_of[r]` / `tag_of[r]` give the author and tag rows
    of item row r (index 0 = the unknown item, whose author and tag are unknown too).
    """

    item_ids: np.ndarray  # (I,) int64 sorted unique raw item ids
    author_ids: np.ndarray  # (A,) int64 sorted unique known raw author ids (>= 0)
    tag_ids: np.ndarray  # (G,) int64 sorted unique known raw tags (>= 0)
    author_of: np.ndarray  # (I+1,) int64 author row of each item row
    tag_of: np.ndarray  # (I+1,) int64 tag row of each item row

    @classmethod
    def from_items(cls, items: pd.DataFrame) -> "ItemVocab":
        """Build from an items table (item_id, author_id, tag); negative author/tag ids mean unknown."""
        missing = [c for c in ("item_id", "author_id", "tag") if c not in items.columns]
        if missing:
            raise ValueError(f"items table lacks column(s) {missing}; columns present: {list(items.columns)}")
        item = items["item_id"].to_numpy(np.int64)
        order = np.argsort(item, kind="stable")
        item = item[order]
        if len(item) > 1 and np.any(item[1:] == item[:-1]):
            dup = int(item[1:][item[1:] == item[:-1]][0])
            raise ValueError(f"items table has duplicate item_id {dup}")
        author = items["author_id"].to_numpy(np.int64)[order]
        tag = items["tag"].to_numpy(np.int64)[order]
        author_ids = np.unique(author[author >= 0])
        tag_ids = np.unique(tag[tag >= 0])
        zero = np.zeros(1, dtype=np.int64)
        return cls(
            item_ids=item,
            author_ids=author_ids,
            tag_ids=tag_ids,
            author_of=np.concatenate([zero, rows_of(author_ids, author)]),
            tag_of=np.concatenate([zero, rows_of(tag_ids, tag)]),
        )

    @property
    def n_items(self) -> int:
        """Rows of the item table, including row 0."""
        return len(self.item_ids) + 1

    @property
    def n_authors(self) -> int:
        return len(self.author_ids) + 1

    @property
    def n_tags(self) -> int:
        return len(self.tag_ids) + 1

    @cached_property
    def _dense(self) -> tuple[int, np.ndarray] | None:
        """(lowest id, row of each id - lowest) when the ids are dense (span <= 4 I): a gather replaces the
        binary search, which dominated mapping the millions of ids a training epoch draws."""
        if len(self.item_ids) == 0:
            return None
        lo, span = int(self.item_ids[0]), int(self.item_ids[-1] - self.item_ids[0]) + 1
        if span > 4 * len(self.item_ids) + 1024:
            return None
        table = np.zeros(span, dtype=np.int64)
        table[self.item_ids - lo] = np.arange(1, len(self.item_ids) + 1)
        return lo, table

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Item row of each raw item id, 0 when unknown.  (T,) int64"""
        if self._dense is None:
            return rows_of(self.item_ids, item_ids)
        lo, table = self._dense
        off = np.asarray(item_ids, dtype=np.int64) - lo
        inside = (off >= 0) & (off < len(table))
        return np.where(inside, table[np.where(inside, off, 0)], 0)

    def author_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Author row of each raw item id (0 for an unknown item or author).  (T,) int64"""
        return self.author_of[self.rows(item_ids)]

    def tag_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Tag row of each raw item id (0 for an unknown item or tag).  (T,) int64"""
        return self.tag_of[self.rows(item_ids)]


class ItemEmbedding(nn.Module):
    """e(item) = E_item[id] + E_author[author] + E_tag[tag], each of dim D.

    Why a sum rather than a concatenation: the output keeps one dimension D however many fields there are, so
    the same vector is both the clustering key K_s and the CTR model's item input; and the author and tag
    terms are shared by many items, so a rarely seen item still lands near its author's and tag's items
    instead of at its (barely trained) id vector alone.
    """

    def __init__(self, n_items: int, n_authors: int, n_tags: int, dim: int = 32, init_std: float = 0.1,
                 sparse: bool = False) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.item = nn.Embedding(n_items, dim, padding_idx=0, sparse=sparse)
        self.author = nn.Embedding(n_authors, dim, padding_idx=0, sparse=sparse)
        self.tag = nn.Embedding(n_tags, dim, padding_idx=0, sparse=sparse)
        # Small random init: skip-gram-style objectives need symmetry breaking, but large initial dot
        # products would saturate the sigmoid; row 0 stays zero (padding_idx).
        for table in (self.item, self.author, self.tag):
            nn.init.normal_(table.weight, std=init_std)
            with torch.no_grad():
                table.weight[0].zero_()

    @classmethod
    def from_vocab(cls, vocab: ItemVocab, dim: int = 32, **kwargs) -> "ItemEmbedding":
        return cls(vocab.n_items, vocab.n_authors, vocab.n_tags, dim=dim, **kwargs)

    def forward(self, item_rows: torch.Tensor, author_rows: torch.Tensor, tag_rows: torch.Tensor) -> torch.Tensor:
        """Rows of any shape (...) → vectors (..., D)."""
        return self.item(item_rows) + self.author(author_rows) + self.tag(tag_rows)  # (..., D)
