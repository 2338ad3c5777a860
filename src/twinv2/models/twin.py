"""TWIN (Chang et al., KDD 2023): the ESU's own target attention is also the GSU (consistency between
stages) over the latest 10,000 behaviours; the top 100 go to the ESU. TWIN-V2 (twin_v2.py) runs the same
module over clusters, where the sequence carries ln n.

Servable (models/serving.py): `precompute()` caches the item-only parts, `score()` scores one user against N
candidates with the GSU, ESU and CTR head of `forward`. `twinv2 serve` serves TWIN-V2 (the cluster store holds
its sequences); raw behaviours have no online store, but `score` serves TWIN the same way (tested).
"""

from __future__ import annotations

import torch
from torch import nn

from twinv2.models.attention import TargetAttention
from twinv2.models.batch import Batch, Seq
from twinv2.models.search import item_table
from twinv2.models.serving import ItemCache, interest, item_cache
from twinv2.models.two_stage import TwoStage


def own_gsu(attn: TargetAttention, items: nn.Module, seq: Seq, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TWIN's GSU: the top K of `seq` by `attn`'s own relevance α' for queries q (B, H, d); (idx, valid) (B, K)."""
    table, rows = item_table(items, seq.rows)  # (U, D) once per item, (B, L)
    return attn.gsu_topk(q, table, rows, seq.cross, seq.log_n, seq.mask)


class TWIN(TwoStage):
    sequence = "recent"
    default_seq_len = 10_000

    def gsu(self, batch: Batch, target: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return own_gsu(self.attn, self.items, batch.seq, q)

    @torch.no_grad()
    def precompute(self) -> ItemCache:
        """The per-item serving cache of these weights (inherent embeddings and projections of every row)."""
        return item_cache(self.attn, self.items.every_item())

    @torch.no_grad()
    def score(self, cache: ItemCache, target: torch.Tensor, seq: Seq, user: torch.Tensor | None = None,
              recent: Seq | None = None) -> torch.Tensor:
        """Logits (N,) of candidate rows `target` (N,) for one user: `seq` of batch size 1 (the batcher's
        sequence for that user and time), `user` (F,) bucket ids when the model reads user features, and for a
        clusters model `recent`, the user's latest raw behaviours (1, S) as Batch.recent (None: none known)."""
        N = target.shape[0]
        e = cache.items.index_select(0, target)  # (N, D)
        short = None
        if self.short_len:  # the offline short-term attention, its one sequence shared by the N candidates
            src = seq if self.sequence == "recent" else recent
            short = self.short_interest(None if src is None else src.expand(N), e)
        u = None if user is None else user.reshape(1, -1).expand(N, -1)
        return self.ctr_head(e, self.serve_long_term(cache, e, seq, recent), u, short)

    def serve_long_term(self, cache: ItemCache, e: torch.Tensor, seq: Seq, recent: Seq | None) -> torch.Tensor:
        """`long_term` (N, interest_dim) of N candidates with embeddings e (N, D) for one user, from the cache."""
        return interest(self.attn, cache, self.attn.query(e), seq)  # (N, out_dim)
