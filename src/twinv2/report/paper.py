"""The paper's numbers, the only hand-typed numbers in the report.

Source: Si et al., "TWIN V2", CIKM 2024, as summarised in ../shared/paper/twin-v2.md, section
"Experiments (what we reproduce in spirit)": Table 3 (AUC / GAUC, mean over 5 days of Kuaishou logs) and
Table 4 (hierarchical clustering variants). Figures 4 and 5 are only described qualitatively there, so the
report quotes their claims, not numbers.
"""

from __future__ import annotations

SOURCE = "../shared/paper/twin-v2.md, section \"Experiments (what we reproduce in spirit)\""

# Table 3: model key (models.registry.MODELS) -> (AUC, GAUC), mean over five days.
TABLE3: dict[str, tuple[float, float]] = {
    "avg_pooling": (0.7855, 0.7168),
    "din": (0.7873, 0.7191),
    "sim_hard": (0.7901, 0.7224),
    "eta": (0.7910, 0.7243),
    "sim_cluster": (0.7915, 0.7253),
    "sdim": (0.7919, 0.7267),
    "sim_cluster_plus": (0.7927, 0.7275),
    "sim_soft": (0.7939, 0.7299),
    "twin": (0.7962, 0.7336),
    "twin_v2": (0.7975, 0.7360),
}
TABLE3_NOTE = ("paper: Kuaishou, 5 days, 46.2B samples, mean over the 5 test hours (no std given); "
               "a 0.001 AUC gain counts as significant for CTR prediction")

# Table 4: our variant name (offline.table4 VARIANTS) -> (paper's label, δ, accuracy, seconds per user).
TABLE4: dict[str, tuple[str, str, float, float]] = {
    "balanced_binary": ("Balanced & Binary", "2", 0.765, 1.010),
    "binary": ("Binary", "2", 0.789, 1.201),
    "adaptive": ("Adaptive (TWIN-V2)", "⌊n^0.3⌋", 0.802, 0.750),
}

FIGURE4_CLAIM = "removing ln n from the GSU, or from the ESU, lowers AUC and GAUC (paper Figure 4)"
FIGURE5_CLAIM = ("TWIN-V2's GAUC gain over TWIN grows with history length and is positive in every group "
                 "(paper Figure 5)")
DIVERSITY_CLAIM = "online A/B vs TWIN: watch time +0.67% to +0.80%, and recommendation diversity up (paper §4)"
