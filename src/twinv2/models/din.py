"""DIN (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018): target attention
over the latest 100 behaviours, the paper's DIN baseline (Table 3).

Simplified to the frame's shared attention: DIN's activation unit (an MLP over [e_l, e_t, e_l - e_t, e_l ⊙ e_t]
giving unnormalised weights) is replaced by `TargetAttention` — multi-head scaled dot products of the inherent
projections plus the cross-feature term (Appendix A.2), softmax-normalised over all valid positions. This is
exactly the ESU of the two-stage models run on every position (no GSU), without ln n, so DIN differs from
them only in which behaviours it sees. DIN's Dice activation and mini-batch aware regularisation are not used.
"""

from __future__ import annotations

import torch

from twinv2.models.attention import TargetAttention
from twinv2.models.batch import Batch
from twinv2.models.frame import CTRModel
from twinv2.models.search import item_table


class DIN(CTRModel):
    short_term = False  # its own sequence is the short term
    sequence = "recent"
    default_seq_len = 100

    def build_long_term(self) -> int:
        self.attn = TargetAttention(self.cfg.attention, self.cross_buckets)
        return self.cfg.attention.out_dim

    def long_term(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        seq = batch.seq
        q = self.attn.query(target)  # (B, H, d)
        # Raw behaviours carry no cluster size: attention without ln n, over every masked-in position.
        table, rows = item_table(self.items, seq.rows)  # (U, D) once per item, (B, L)
        return self.attn.esu(q, table, rows, seq.cross, None, seq.mask)  # (B, out_dim)
