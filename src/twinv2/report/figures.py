"""PNG figures (matplotlib, Agg backend) drawn from the report's tables; each returns its path or None."""

from __future__ import annotations

import itertools
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


def vs_best_figure(t3: dict[str, Any], path: Path) -> Path | None:
    """Each model − the best model with its 95% bootstrap CI (a forest plot); 0 = level with the best."""
    vb = (t3.get("power") or {}).get("vs_best") or {}
    names = {r["model"]: r["name"] for r in t3["rows"]}
    panels = []
    for col in ("auc", "gauc"):
        recs = [(names.get(m, m), rec[col]) for m, rec in (vb.get(col) or {}).get("rows", {}).items()
                if "missing" not in rec]
        if recs:
            panels.append((col, recs, names.get(vb[col]["best"], vb[col]["best"])))
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 0.35 * max(len(p[1]) for p in panels) + 1.5),
                             layout="constrained", squeeze=False)
    for ax, (col, recs, best) in zip(axes[0], panels):
        y = np.arange(len(recs))
        v = np.array([num(iv["value"]) for _, iv in recs])
        lo = v - np.array([num(iv["ci_low"]) for _, iv in recs])
        hi = np.array([num(iv["ci_high"]) for _, iv in recs]) - v
        resolved = [iv.get("verdict") != "not resolved" for _, iv in recs]
        ax.errorbar(v, y, xerr=np.nan_to_num([lo, hi]), fmt="o", color="C0", ecolor="C0", capsize=3)
        ax.scatter(v[~np.array(resolved)], y[~np.array(resolved)], color="C3", zorder=3, label="not resolved")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, [n for n, _ in recs], fontsize=8)
        ax.set(title=f"{col.upper()}: model − {best} (pooled, 95% CI)", xlabel=f"{col.upper()} difference")
        if not all(resolved):
            ax.legend(fontsize=8)
    return _save(fig, path)


def retrieval_figure(rt: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars: share of the kept top-K in the target's true interest, by interest kind × history tercile,
    one bar per two-stage model (TWIN and TWIN-V2 in their Table 3 colours)."""
    rows = rt.get("rows") or []
    if not rows:
        return None
    plt = _plt()
    cells = [(i, h) for i in ("current", "dormant") for h in ("all", "short", "medium", "long")]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.12 * len(rows) * len(cells) + 2), 4.2),
                           layout="constrained")
    x = np.arange(len(cells))
    width = 0.8 / len(rows)
    others = itertools.cycle(("C0", "C2", "C4", "C5", "C6", "C7", "C8", "C9"))  # C1, C3: TWIN, TWIN-V2
    for j, r in enumerate(rows):
        v = [num((r["groups"].get(f"{i}/{h}") or {}).get("share")) for i, h in cells]
        color = "C3" if r["model"] == "twin_v2" else "C1" if r["model"] == "twin" else next(others)
        ax.bar(x - 0.4 + width * (j + 0.5), np.nan_to_num(v), width, label=r["name"], color=color,
               edgecolor="black", lw=0.5)
    ax.axvline(3.5, color="gray", lw=0.8, ls=":")
    ax.set_xticks(x, [f"{i}\n{h}" for i, h in cells], fontsize=8)
    ax.set(title=f"Share of the kept top-{rows[0].get('k') or 'K'} in the target's true interest",
           ylabel="mean share of the kept top-K", xlabel="interest kind of the target / history-length tercile")
    ax.legend(fontsize=7, ncol=2 if len(rows) > 4 else 1)
    return _save(fig, path)


def curve_figure(lc: dict[str, Any], path: Path) -> Path | None:
    """AUC and GAUC per test day against the training samples seen by then, one line per model."""
    rows = [r for r in lc["rows"] if r["points"]]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    others = itertools.cycle(["C0", "C2", "C4", "C5", "C6", "C7", "C8", "C9"])  # C1, C3: TWIN, TWIN-V2 as in Table 3
    colors = {r["model"]: "C3" if r["model"] == "twin_v2" else "C1" if r["model"] == "twin" else next(others)
              for r in rows}
    for ax, col in zip(axes, ("auc", "gauc")):
        for r in rows:
            x = [p["seen"] for p in r["points"]]
            y = [num(p[col]) for p in r["points"]]
            headline = r["model"] in ("twin", "twin_v2")
            color = colors[r["model"]]
            ax.plot(x, y, marker="o", lw=2.2 if headline else 1.0, alpha=1.0 if headline else 0.6, color=color,
                    label=r["name"])
        ax.set(title=f"{col.upper()} on each test day vs training samples seen", xlabel="training samples seen",
               ylabel=col.upper())
    axes[1].legend(fontsize=7, ncol=2)
    return _save(fig, path)
