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
from twinv2.models.search import item_table
from twinv2.models.serving import ItemCache, interest, item_cache
from twinv2.models.two_stage import take
from twinv2.models.twin import TWIN
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
        L = self.raw_len
        seq = Seq(rows=recent.rows[:, -L:], cross=recent.cross[:, -L:], mask=recent.mask[:, -L:])
        q = a.query(target)  # (B, H, d)
        with torch.no_grad():
            table, rows = item_table(self.items, seq.rows)  # (U, D), (B, L)
            idx, valid = a.gsu_topk(q, table, rows, seq.cross, None, seq.mask)  # (B, K) each
        sel = take(seq, idx, valid)
        table, rows = item_table(self.items, sel.rows)  # (U', D), (B, K)
        return a.esu(q, table, rows, sel.cross, None, sel.mask)  # (B, out)

    @torch.no_grad()
    def precompute(self) -> PairCache:
        every = self.items.every_item()
        return PairCache(life=item_cache(self.attn, every), months=item_cache(self.raw_attn, every))

    @torch.no_grad()
    def score(self, cache: PairCache, target: torch.Tensor, seq: Seq, user: torch.Tensor | None = None,
              recent: Seq | None = None) -> torch.Tensor:
        """Logits (N,) as TWIN.score, with TWIN's interest over `recent` (1, R) beside TWIN-V2's over `seq`."""
        N = target.shape[0]
        e = cache.items.index_select(0, target)  # (N, D)
        life = interest(self.attn, cache.life, self.attn.query(e), seq)  # (N, out)
        months, short = e.new_zeros(N, self.raw_attn.cfg.out_dim), None
        if recent is not None:
            L = self.raw_len
            months = interest(self.raw_attn, cache.months, self.raw_attn.query(e),
                              Seq(rows=recent.rows[:, -L:], cross=recent.cross[:, -L:], mask=recent.mask[:, -L:]))
        if self.short_len:
            short = self.short_interest(None if recent is None else Seq(
                rows=recent.rows.expand(N, -1), cross=recent.cross.expand(N, -1, -1),
                mask=recent.mask.expand(N, -1)), e)
        u = None if user is None else user.reshape(1, -1).expand(N, -1)
        return self.ctr_head(e, torch.cat([life, months], dim=-1), u, short)
