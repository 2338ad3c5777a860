"""SIM Hard (Pi et al., "Search-based User Interest Modeling with Lifelong Sequential Behavior Data for
Click-Through Rate Prediction", CIKM 2020): the hard-search GSU keeps the behaviours whose category equals the
target's; the ESU attends over them.

Simplified: SIM keeps a category-keyed user behaviour tree and a time-interval embedding in its ESU; here the
GSU scans the latest 10,000 behaviours for the target's tag and keeps the most recent 100 matches, and the ESU
is the frame's shared target attention (cross features carry the behaviour's age), without ln n. An unknown
tag (tag row 0) never matches, even another unknown one: "no category" is not a category.
"""

from __future__ import annotations

import torch

from twinv2.models.batch import Batch
from twinv2.models.two_stage import TwoStage


class SIMHard(TwoStage):
    sequence = "recent"
    default_seq_len = 10_000

    @torch.no_grad()
    def gsu(self, batch: Batch, target: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq = batch.seq
        tag = self.items.tag(batch.target)  # (B,)
        match = seq.mask & (self.items.tag(seq.rows) == tag[:, None]) & (tag[:, None] != 0)  # (B, L)
        # Every match scores the same, so search.topk_exact's recency tie-break keeps the latest K matches: the
        # same picks in the same order as one top-k on the position, lifted by L for a match (exact in float32
        # for L < 2^23; topk_exact itself would rank every row by int64 keys, all of them being ties).
        B, L = match.shape
        pos = torch.arange(L, device=match.device, dtype=torch.float32).expand(B, L)
        idx = (pos + match * float(L)).topk(min(self.cfg.attention.top_k, L), dim=1).indices  # (B, K')
        return idx, match.gather(1, idx)
