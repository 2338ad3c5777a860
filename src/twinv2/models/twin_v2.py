"""TWIN-V2 (Si et al., CIKM 2024): cluster-aware target attention over a user's whole life cycle.

The sequence is the user's clusters (virtual items) from the latest offline snapshot before the sample's day
(§3.3.1–3.3.2); the GSU ranks clusters by α' = α + ln n and keeps the top 100, the ESU attends with
softmax(α') (Eq. 8–11). Switches `attention.log_n_gsu` / `attention.log_n_esu` remove ln n for Figure 4.
Cross features of a cluster are bucketed from its mean play time, mean completion ratio and the age of its
mean timestamp at the sample's time (Eq. 5).
"""

from __future__ import annotations

from twinv2.models.twin import TWIN


class TWINV2(TWIN):
    sequence = "clusters"
    default_seq_len = 10_000  # clusters per user kept (the most recent by mean time when a user has more)
