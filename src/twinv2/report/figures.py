"""PNG figures (matplotlib, Agg backend) drawn from the report's tables; each returns its path or None."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from twinv2.report.tables import num


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Constrained layout (set at creation) lays out during the one draw savefig does; fast zlib level.
    fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 3})
    plt.close(fig)
    return path


def _bars(ax: Any, labels: list[str], means: list[float], stds: list[float], title: str, ylabel: str,
          colors: list[str] | None = None) -> None:
    m = np.array([num(x) for x in means])
    s = np.array([0.0 if not math.isfinite(num(x)) else num(x) for x in stds])
    x = np.arange(len(labels))
    ax.bar(x, np.nan_to_num(m), yerr=s, capsize=3, color=colors or "C0", edgecolor="black")
    ok = m[np.isfinite(m)]
    if len(ok):
        lo, hi = float((ok - s[np.isfinite(m)]).min()), float((ok + s[np.isfinite(m)]).max())
        pad = max((hi - lo) * 0.25, 1e-3)
        ax.set_ylim(lo - pad, hi + pad)  # differences are small: zoom in, as the paper's bar charts do
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set(title=title, ylabel=ylabel)


def table3_figure(t3: dict[str, Any], path: Path, title: str) -> Path | None:
    rows = t3["rows"]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    labels = [r["name"] for r in rows]
    colors = ["C3" if r["model"] == "twin_v2" else "C1" if r["model"] == "twin" else "C0" for r in rows]
    for ax, col in zip(axes, ("auc", "gauc")):
        _bars(ax, labels, [r.get(f"{col}_mean") for r in rows], [r.get(f"{col}_std") for r in rows],
              f"{title}: {col.upper()} (mean ± std over days)", col.upper(), colors)
        o = t3.get("oracle")
        if o and math.isfinite(num(o.get(f"{col}_mean"))) and num(o[f"{col}_mean"]) <= ax.get_ylim()[1] * 1.05:
            ax.axhline(num(o[f"{col}_mean"]), color="gray", ls="--", lw=1, label="oracle (p_true)")
            ax.legend(fontsize=8)
    return _save(fig, path)


def ablation_figure(ab: dict[str, Any], path: Path) -> Path | None:
    rows = [r for r in ab["rows"] if not r.get("missing")]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    labels = [r["name"] for r in rows]
    colors = ["C3" if r["variant"] == "full" else "C0" for r in rows]
    for ax, col in zip(axes, ("gauc", "auc")):
        _bars(ax, labels, [r.get(f"{col}_mean") for r in rows], [r.get(f"{col}_std") for r in rows],
              f"Figure 4 analog: {col.upper()} without ln n", col.upper(), colors)
    return _save(fig, path)


def groups_figure(hg: dict[str, Any], path: Path) -> Path | None:
    rows = hg.get("rows") or []
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    x = np.arange(len(rows))
    m = np.array([num(r["gain"]["mean_diff"]) for r in rows])
    s = np.nan_to_num(np.array([num(r["gain"]["std_diff"]) for r in rows]))
    ax.bar(x, np.nan_to_num(m), yerr=s, capsize=4, color="C3", edgecolor="black")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [f"{r['group']}\n{r['share_users']:.0%} of users\nlen {r['length_min']}–{r['length_max']}"
                      for r in rows], fontsize=8)
    ax.set(title=f"Figure 5 analog: {hg['name_a']} − {hg['name_b']} GAUC by history length",
           ylabel="GAUC gain (mean ± std over days)")
    return _save(fig, path)


def sweep_figure(sw: dict[str, Any], path: Path) -> Path | None:
    rows = [r for r in sw["rows"] if r["gain"]]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    x = np.array([r["value"] for r in rows], dtype=float)
    for metric, color, off in (("gauc", "C3", -0.005), ("auc", "C0", 0.005)):
        m = np.array([num(r["gain"][metric]["mean_diff"]) for r in rows])
        s = np.nan_to_num(np.array([num(r["gain"][metric]["std_diff"]) for r in rows]))
        ax.errorbar(x + off * (x.max() - x.min() if len(x) > 1 else 1), m, yerr=s, marker="o", capsize=4,
                    color=color, label=f"Δ{metric.upper()}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.set(title="TWIN-V2 − TWIN by far_past_signal", xlabel="far_past_signal (0 = the far past carries no signal)",
           ylabel="gain (mean ± std over days)")
    ax.legend()
    return _save(fig, path)


def diversity_figure(dv: dict[str, Any], path: Path) -> Path | None:
    rows = dv.get("rows") or []
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4), layout="constrained")
    x = np.arange(len(rows))
    ax.bar(x, [r["mean"] for r in rows], color=["C0" if r["kind"] == "model" else "C7" for r in rows],
           edgecolor="black")
    ax.set_xticks(x, [r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set(title=f"Distinct tags among each user's top {dv['k']} test candidates (mean over user-days)",
           ylabel="distinct tags")
    return _save(fig, path)
