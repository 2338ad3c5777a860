"""TWIN (Chang et al., KDD 2023): the ESU's own target attention is also the GSU (consistency between
stages) over the latest 10,000 behaviours; the top 100 go to the ESU. TWIN-V2 (twin_v2.py) runs the same
module over clusters, where the sequence carries ln n."""

from __future__ import annotations

import torch

from twinv2.models.batch import Batch
from twinv2.models.search import item_table
from twinv2.models.two_stage import TwoStage


class TWIN(TwoStage):
    sequence = "recent"
    default_seq_len = 10_000

    def gsu(self, batch: Batch, target: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq = batch.seq
        table, rows = item_table(self.items, seq.rows)  # (U, D) once per item, (B, L)
        return self.attn.gsu_topk(q, table, rows, seq.cross, seq.log_n, seq.mask)
