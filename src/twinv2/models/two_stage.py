"""Two-stage long-term modules: a GSU picks the top-K elements of a long sequence, an ESU (the shared target
attention of attention.py) attends over them. Models differ only in `gsu`; all keep the top 100 with
search.topk_exact (deterministic: exact ties go to the later, more recent position)."""

from __future__ import annotations

import torch
from torch import nn

from twinv2.models.attention import TargetAttention
from twinv2.models.batch import Batch, Seq
from twinv2.models.frame import CTRModel
from twinv2.models.search import item_table


def take(seq: Seq, idx: torch.Tensor, valid: torch.Tensor) -> Seq:
    """The elements `idx` (B, K) of `seq`; `valid` (B, K) marks real picks (a pick of padding is invalid)."""
    J = seq.cross.shape[-1]
    return Seq(
        rows=seq.rows.gather(1, idx),  # (B, K)
        cross=seq.cross.gather(1, idx.unsqueeze(-1).expand(-1, -1, J)),  # (B, K, J)
        mask=valid & seq.mask.gather(1, idx),  # (B, K)
        log_n=None if seq.log_n is None else seq.log_n.gather(1, idx),  # (B, K)
    )


def attend_kept(attn: TargetAttention, items: nn.Module, seq: Seq, q: torch.Tensor, idx: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
    """`attn`'s ESU (B, out) with queries q (B, H, d) over the elements idx (B, K) of `seq` a GSU kept."""
    sel = take(seq, idx, valid)
    table, rows = item_table(items, sel.rows)  # (U, D) once per kept item, (B, K)
    return attn.esu(q, table, rows, sel.cross, sel.log_n, sel.mask)  # (B, out)


class TwoStage(CTRModel):
    """Base for SIM/ETA/TWIN-style models: subclasses implement `gsu(batch, target, q) -> (idx, valid)`."""

    sequence = "recent"
    default_seq_len = 10_000

    def build_long_term(self) -> int:
        self.attn = TargetAttention(self.cfg.attention, self.cross_buckets)
        return self.cfg.attention.out_dim

    def gsu(self, batch: Batch, target: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def long_term(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        q = self.attn.query(target)  # (B, H, d)
        with torch.no_grad():
            idx, valid = self.gsu(batch, target, q)  # (B, K) each
        return attend_kept(self.attn, self.items, batch.seq, q, idx, valid)  # (B, out)
