"""TWIN + TWIN-V2, the deployed pair (paper §3.4: "TWIN (recent months) and TWIN-V2 (whole life cycle) run
side by side and complement each other"): one CTR model with two long-term interests beside each other in the
tower's input, TWIN-V2's over the user's clusters (`batch.seq`) and TWIN's over the latest `raw_len` raw
behaviours (`batch.recent`), each with its own target attention (GSU top 100 + ESU). The short-term interest of
the shared frame reads the last `short_len` of the same raw behaviours.

The paper gives no more detail of how the two are combined; concatenating the two interests into the one CTR
head is the frame's way of adding a long-term module, so nothing else changes. Serving: the clusters come from
the store, the raw behaviours from the request's `recent` (up to 10,000; fewer give TWIN a shorter history).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from twinv2.models.attention import TargetAttention
from twinv2.models.batch import Batch, Seq
from twinv2.models.serving import ItemCache, interest, item_cache
from twinv2.models.two_stage import attend_kept
from twinv2.models.twin import TWIN, own_gsu
from twinv2.models.twin_v2 import TWINV2


@dataclass(frozen=True)
class PairCache:
    """The serving caches of the pair's two attentions (models/serving.py ItemCache each)."""

    life: ItemCache  # TWIN-V2's attention (clusters)
    months: ItemCache  # TWIN's attention (raw behaviours)

    @property
    def items(self) -> torch.Tensor:  # (I, D): the one item table both caches hold
        return self.life.items

    @property
    def heads(self) -> int:
        return self.life.heads

    @property
    def head_dim(self) -> int:
        return self.life.head_dim


class TWINPair(TWINV2):
    raw_len = TWIN.default_seq_len  # TWIN's part: the latest 10,000 raw behaviours, as the TWIN row reads

    @property
    def recent_len(self) -> int:
        return max(self.short_len, self.raw_len)

    def build_long_term(self) -> int:
        life = super().build_long_term()  # self.attn: TWIN-V2's
        self.raw_attn = TargetAttention(self.cfg.attention, self.cross_buckets)  # TWIN's, its own weights
        return life + self.cfg.attention.out_dim

    @torch.no_grad()
    def start_neutral(self) -> None:
        """The frame's neutral start, with the bridge averaging the two interests ([I, I] / 2): at step 0 the
        match term is e(target) · (life + months) / 2, and the zero-shot reference the cosine with that mean."""
        super().start_neutral()
        D = self.cfg.dim
        self.bridge.weight.copy_(torch.cat([torch.eye(D, self.cfg.attention.out_dim)] * 2, dim=1) / 2)

    def long_term(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        life = super().long_term(batch, target)  # (B, out) over the clusters
        return torch.cat([life, self.months(batch.recent, target)], dim=-1)  # (B, 2·out)

    def months(self, recent: Seq | None, target: torch.Tensor) -> torch.Tensor:
        """TWIN's interest (B, out) over the latest `raw_len` raw behaviours; zeros when none are known."""
        a = self.raw_attn
        if recent is None:
            return target.new_zeros(target.shape[0], a.cfg.out_dim)
        seq, q = recent.last(self.raw_len), a.query(target)  # (B, L), (B, H, d)
        with torch.no_grad():
            idx, valid = own_gsu(a, self.items, seq, q)  # (B, K) each
        return attend_kept(a, self.items, seq, q, idx, valid)  # (B, out)

    @torch.no_grad()
    def precompute(self) -> PairCache:
        every = self.items.every_item()
        return PairCache(life=item_cache(self.attn, every), months=item_cache(self.raw_attn, every))

    def serve_long_term(self, cache: PairCache, e: torch.Tensor, seq: Seq, recent: Seq | None) -> torch.Tensor:
        """TWIN.score's long term for the pair: TWIN-V2's over `seq` beside TWIN's over `recent` (1, R)."""
        life = super().serve_long_term(cache.life, e, seq, recent)  # (N, out)
        a = self.raw_attn
        months = (e.new_zeros(e.shape[0], a.cfg.out_dim) if recent is None else
                  interest(a, cache.months, a.query(e), recent.last(self.raw_len)))  # (N, out)
        return torch.cat([life, months], dim=-1)  # (N, 2·out)
