"""SIM Soft (Pi et al., "Search-based User Interest Modeling with Lifelong Sequential Behavior Data for
Click-Through Rate Prediction", CIKM 2020): the soft-search GSU keeps the top-100 of the latest 10,000
behaviours by inner product between the target's and the behaviour's embeddings; the ESU attends over them.

Simplified: SIM trains the soft-search embeddings with an auxiliary task and serves the search with an ANN
index; here the GSU uses the CTR model's own inherent item embeddings (no projection, no auxiliary loss, exact
search), and the ESU is the frame's shared target attention without ln n.

"""

from __future__ import annotations

import torch

from twinv2.models.batch import Batch
from twinv2.models.search import item_table, select
from twinv2.models.two_stage import TwoStage

class SIMSoft(TwoStage):
    sequence = "recent"
    default_seq_len = 10_000

    @torch.no_grad()
    def gsu(self, batch: Batch, target: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq = batch.seq
        table, rows = item_table(self.items, seq.rows)  # (U, D), (B, L)
        return select(target, table, rows, seq.mask, self.cfg.attention.top_k, self.cfg.attention.gsu_chunk)
