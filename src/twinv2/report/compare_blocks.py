"""The report's text for intervals and verdicts: Table 3's comparison tables and the seed table (compare.py)."""

from __future__ import annotations

import math
from typing import Any

from twinv2.report import paper
from twinv2.report.load import display_name
from twinv2.report.power import verdict_text
from twinv2.report.render import Doc, P, Table
from twinv2.report.tables import num, signed

DASH = "–"


def _ok(x: Any) -> bool:
    return x is not None and math.isfinite(num(x))


def ci(iv: dict[str, Any] | None, d: int = 4) -> str:
    """'0.7123 [0.7050, 0.7190]' (a value with its 95% CI)."""
    if not iv or not _ok(iv.get("value")):
        return DASH
    if not _ok(iv.get("ci_low")):
        return f"{num(iv['value']):.{d}f}"
    return f"{num(iv['value']):.{d}f} [{num(iv['ci_low']):.{d}f}, {num(iv['ci_high']):.{d}f}]"


def dci(iv: dict[str, Any] | None, d: int = 4) -> str:
    """'+0.0123 [-0.0010, +0.0250]' (a difference with its 95% CI)."""
    if not iv or not _ok(iv.get("value")):
        return DASH
    if not _ok(iv.get("ci_low")):
        return signed(iv["value"], d)
    return f"{signed(iv['value'], d)} [{signed(iv['ci_low'], d)}, {signed(iv['ci_high'], d)}]"


def mrd(iv: dict[str, Any] | None, d: int = 4) -> str:
    return DASH if not iv or not _ok(iv.get("mrd")) else f"{num(iv['mrd']):.{d}f}"


def verdict(rec: dict[str, Any] | None, metric: str, names: tuple[str, str] | None = None) -> str:
    """The verdict with the two models' names (or `names`), or n/a (with the reason) without an interval."""
    if not rec or "missing" in rec:
        why = (rec or {}).get("missing") or ""
        return "n/a (no prediction files)" if "predictions" in why else f"n/a ({why})" if why else "n/a"
    a, b = names or (display_name(rec["a"]), display_name(rec["b"]))
    return verdict_text(rec[metric].get("verdict"), a, b)


def diff_cells(rec: dict[str, Any] | None, metric: str) -> list[str]:
    """[Δ with CI, MRD, verdict] of one metric of a boot_diff record."""
    if not rec or "missing" in rec:
        return [DASH, DASH, verdict(rec, metric)]
    return [dci(rec[metric]), mrd(rec[metric]), verdict(rec, metric)]


def diff_cell(rec: dict[str, Any] | None, metric: str, names: tuple[str, str] | None = None) -> str:
    """One cell: 'Δ [95% CI] (MRD m): verdict'."""
    if not rec or "missing" in rec:
        return verdict(rec, metric)
    iv = rec[metric]
    return f"{dci(iv)} (MRD {mrd(iv)}): {verdict(rec, metric, names)}"


def boot_summary(rec: dict[str, Any] | None, metric: str) -> str:
    """'+0.0123 [95% CI -0.0010, +0.0250], MRD 0.0120: not resolved' for sentences."""
    if not rec or "missing" in rec:
        return "n/a (no prediction files)"
    iv = rec[metric]
    return f"{dci(iv).replace(' [', ' [95% CI ')}, MRD {mrd(iv)}: {verdict(rec, metric)}"


# ---- Table 3 ------------------------------------------------------------------------------------------------
def pooled_cells(pw: dict[str, Any] | None, has_expected: bool) -> list[str]:
    if not pw or "missing" in pw:
        cells = [DASH, DASH]
    else:
        cells = [ci(pw.get("auc")), ci(pw.get("gauc"))]
    if has_expected:
        cells += [DASH, DASH] if not pw or "missing" in pw else \
            [DASH if pw.get("expected_auc") is None else f"{num(pw['expected_auc']):.4f}",
             DASH if pw.get("expected_gauc") is None else f"{num(pw['expected_gauc']):.4f}"]
    return cells


def has_expected(t3: dict[str, Any]) -> bool:
    pw = t3.get("power") or {}
    return any(r and r.get("expected_auc") is not None for r in (pw.get("runs") or {}).values())


def twin_pair_blocks(doc: Doc, t3: dict[str, Any], tval, pval, spm) -> None:
    """TWIN-V2 − TWIN: the pooled paired-bootstrap difference first, the daily t-test beside it."""
    pr = t3.get("paired")
    boot = (t3.get("power") or {}).get("twin_v2_vs_twin")
    rows = []
    for m, i in (("auc", 0), ("gauc", 1)):
        g = pr[m]
        dl = (boot or {}).get("delong") or {}
        delong = f"{num(dl['p']):.3g}" if m == "auc" and _ok(dl.get("p")) else DASH
        rows.append([m.upper(), *diff_cells(boot, m), delong, spm(g["mean_diff"], g["std_diff"]), tval(g), pval(g),
                     str(g["n"]), f"{paper.TABLE3['twin_v2'][i] - paper.TABLE3['twin'][i]:+.4f}", g["note"] or ""])
    n = f" ({boot['auc']['n_users']:,} users, {boot['auc']['n_samples']:,} test samples)" \
        if boot and "missing" not in boot else ""
    doc.add(Table(["Metric", "TWIN-V2 − TWIN, pooled [95% CI]", "MRD", "verdict", "DeLong p", "daily Δ mean ± std",
                   "t", "p (t-test)", "days", "TWIN-V2 − TWIN (paper)", "note"], rows,
                  f"TWIN-V2 − TWIN. Pooled over the test days{n}: paired bootstrap over users (95% CI), MRD = "
                  f"the smallest difference this test set resolves (1.96 × the bootstrap SE), \"not resolved\" when "
                  f"the CI contains 0; DeLong's p treats samples as independent (it ignores that a user's samples "
                  f"are correlated). Daily: paired t-test across days (scipy.stats.ttest_rel):"))


def vs_best_blocks(doc: Doc, t3: dict[str, Any]) -> None:
    vb = (t3.get("power") or {}).get("vs_best") or {}
    recs = [x for m in vb.values() for x in m.get("rows", {}).values()]
    if not recs:
        return
    if all("missing" in x for x in recs):
        doc.add(P("Each model against the best: n/a, the runs here have no prediction files "
                  "(predictions-day*.parquet), so no confidence interval can be computed."))
        return
    best = {m: vb.get(m, {}).get("best") for m in ("auc", "gauc")}
    rows = []
    for r in t3["rows"]:
        cells = [r["name"]]
        for m in ("auc", "gauc"):
            if r["model"] == best[m]:
                cells += ["(best)", DASH, DASH]
            else:
                cells += diff_cells(vb.get(m, {}).get("rows", {}).get(r["model"]), m)
        rows.append(cells)
    ok = [x for x in recs if "missing" not in x]
    med = {m: sorted(num(x[m]["mrd"]) for x in ok if _ok(x[m].get("mrd"))) for m in ("auc", "gauc")}
    if med["auc"] and med["gauc"]:
        n = ok[0]["auc"]
        doc.add(P(f"What this test set can resolve ({n['n_users']:,} users, {n['n_samples']:,} test samples): the "
                  f"minimum resolvable difference of a paired comparison here is {med['auc'][0]:.4f}–"
                  f"{med['auc'][-1]:.4f} AUC and {med['gauc'][0]:.4f}–{med['gauc'][-1]:.4f} GAUC (median "
                  f"{med['auc'][len(med['auc']) // 2]:.4f} and {med['gauc'][len(med['gauc']) // 2]:.4f}); a smaller "
                  f"difference is \"not resolved\". The paper counts 0.001 AUC as significant on 46.2B samples."))
    doc.add(Table(["Model", "AUC − best AUC [95% CI]", "MRD", "verdict", "GAUC − best GAUC [95% CI]", "MRD",
                   "verdict"], rows,
                  f"Each model against the best (bold) model, pooled over the test days, paired bootstrap over "
                  f"users: best AUC {display_name(best['auc']) if best['auc'] else DASH}, best GAUC "
                  f"{display_name(best['gauc']) if best['gauc'] else DASH}; \"not resolved\" = this test set cannot "
                  f"tell the model from the best:"))


def seed_blocks(doc: Doc, t3: dict[str, Any]) -> None:
    st = t3.get("seeds")
    if not st:
        doc.add(P("Training seeds: one per model (no `runs/<model>-seed<k>` folders), so the intervals above hold "
                  "the test set's sampling noise but not the seed's."))
        return
    rows = []
    for r in st["rows"]:
        cells = [r["name"], ", ".join(str(s) for s in r["seeds"])]
        for m in ("auc", "gauc"):
            per = ", ".join(DASH if not _ok(x.get(f"{m}_mean")) else f"{num(x[f'{m}_mean']):.4f}" for x in r["runs"])
            sd = DASH if not _ok(r[f"{m}_seed_std"]) else f"{num(r[f'{m}_seed_std']):.4f}"
            spread = DASH if not _ok(r[f"{m}_seed_min"]) else \
                f"{num(r[f'{m}_seed_min']):.4f}–{num(r[f'{m}_seed_max']):.4f}"
            cells += [per, DASH if not _ok(r[f"{m}_seed_mean"]) else f"{num(r[f'{m}_seed_mean']):.4f} ± {sd}", spread]
        rows.append(cells)
    doc.add(Table(["Model", "seeds", "AUC per seed", "AUC mean ± std", "AUC min–max", "GAUC per seed",
                   "GAUC mean ± std", "GAUC min–max"], rows,
                  "Training seeds (runs/<model> and runs/<model>-seed<k>): each seed's mean over the days; mean ± std "
                  "over seeds (std with ddof=1):"))
    gap = st.get("twin_v2_vs_twin")
    if gap:
        parts = []
        for m in ("auc", "gauc"):
            g = gap[m]
            iv = {"value": g["diff"], "ci_low": g["ci_low"], "ci_high": g["ci_high"]}
            word = verdict_text(g["verdict"], "TWIN-V2", "TWIN")
            parts.append(f"{m.upper()} {dci(iv)} ({g['n_a']} vs {g['n_b']} seeds, Welch t 95% CI): {word}")
        doc.add(P("TWIN-V2 − TWIN over seeds: " + "; ".join(parts) + "."))


def summary_items(t3: dict[str, Any]) -> list[str]:
    """Summary bullets: the label-noise-free gap to the oracle, and the seed-level TWIN-V2 − TWIN."""
    out = []
    pw = t3.get("power") or {}
    v2, o = (pw.get("runs") or {}).get("twin_v2"), pw.get("oracle")
    if v2 and o and v2.get("expected_auc") is not None and o.get("expected_auc") is not None:
        out.append(f"Label-noise-free (expected AUC under p_true, pooled): TWIN-V2 {num(v2['expected_auc']):.4f}, "
                   f"oracle {num(o['expected_auc']):.4f} (gap {num(o['expected_auc']) - num(v2['expected_auc']):.4f}); "
                   f"expected GAUC {num(v2['expected_gauc']):.4f} vs {num(o['expected_gauc']):.4f}.")
    gap = (t3.get("seeds") or {}).get("twin_v2_vs_twin")
    if gap:
        g = gap["gauc"]
        iv = {"value": g["diff"], "ci_low": g["ci_low"], "ci_high": g["ci_high"]}
        out.append(f"Over training seeds ({g['n_a']} TWIN-V2, {g['n_b']} TWIN): GAUC difference of the seed means "
                   f"{dci(iv)} (Welch t 95% CI): {verdict_text(g['verdict'], 'TWIN-V2', 'TWIN')}.")
    return out
