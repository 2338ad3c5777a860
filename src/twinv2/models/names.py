"""The model names, their display names and classes, in the paper's Table 3 order. Torch-free, so the report,
the experiment config and the CLI read the one list without importing a model (registry.py imports them)."""

from __future__ import annotations

_TABLE = (  # name, display name, "module:class" under twinv2.models
    ("avg_pooling", "Avg-Pooling", "avg_pooling:AvgPooling"),
    ("din", "DIN", "din:DIN"),
    ("sim_hard", "SIM Hard", "sim_hard:SIMHard"),
    ("eta", "ETA", "eta:ETA"),
    ("sim_cluster", "SIM Cluster", "sim_cluster:SIMCluster"),
    ("sdim", "SDIM", "sdim:SDIM"),
    ("sim_cluster_plus", "SIM Cluster+", "sim_cluster:SIMClusterPlus"),
    ("sim_soft", "SIM Soft", "sim_soft:SIMSoft"),
    ("twin", "TWIN", "twin:TWIN"),
    ("twin_v2", "TWIN-V2", "twin_v2:TWINV2"),
    ("twin_pair", "TWIN + TWIN-V2", "twin_pair:TWINPair"),  # the deployed pair (paper §3.4), not in Table 3
)
MODELS: tuple[str, ...] = tuple(name for name, _, _ in _TABLE)
DISPLAY: dict[str, str] = {name: display for name, display, _ in _TABLE}
CLASSES: dict[str, str] = {name: f"twinv2.models.{path}" for name, _, path in _TABLE}
