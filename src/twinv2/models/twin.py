"""TWIN (Chang et al., KDD 2023): the same target attention in GSU and ESU over the latest 10,000 behaviours,
keeping the top 100. TWIN-V2 (twin_v2.py) reuses this module over clusters with ln n."""

from __future__ import annotations

import torch

from twinv2.models.attention import TargetAttention
from twinv2.models.batch import Batch
from twinv2.models.frame import CTRModel


class TWIN(CTRModel):
    sequence = "recent"
    default_seq_len = 10_000

    def build_long_term(self) -> int:
        self.attn = TargetAttention(self.cfg.attention, self.cross_buckets)
        return self.cfg.attention.out_dim

    @torch.no_grad()
    def key_table(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K_h W^h once per item: for every vocabulary item when that is no more work than the batch's
        positions, else for the batch's unique items. Returns (table (U, H, d), rows into it (B, L))."""
        if self.items.n_items <= rows.numel():
            every = torch.arange(self.items.n_items, device=rows.device)
            return self.attn.keys(self.items(every)), rows  # (I, H, d)
        uniq, inv = torch.unique(rows, return_inverse=True)
        return self.attn.keys(self.items(uniq)), inv  # (U, H, d)

    def long_term(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        seq = batch.seq
        q = self.attn.query(target)  # (B, H, d)
        table, rows = self.key_table(seq.rows)
        idx, valid = self.attn.gsu_topk(q, table, rows, seq.cross, seq.log_n, seq.mask)  # (B, K) each
        sel_rows = seq.rows.gather(1, idx)  # (B, K)
        sel_cross = seq.cross.gather(1, idx.unsqueeze(-1).expand(-1, -1, seq.cross.shape[-1]))  # (B, K, J)
        sel_log_n = None if seq.log_n is None else seq.log_n.gather(1, idx)  # (B, K)
        sel_mask = valid & seq.mask.gather(1, idx)  # (B, K)
        return self.attn.esu(q, self.items(sel_rows), sel_cross, sel_log_n, sel_mask)  # (B, out)
