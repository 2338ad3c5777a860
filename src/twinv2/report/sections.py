"""The report's text for the zero-shot reference (reference.py), the retrieval diagnostics (retrieval.py) and
the measured premise (premise.py); sentences are generated from the numbers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from twinv2.report import compare_blocks as cb
from twinv2.report import premise as pr
from twinv2.report.load import display_name
from twinv2.report.reference import WHAT, summary_sentence
from twinv2.report.render import Doc, Figure, H, P, Table
from twinv2.report.retrieval import HISTORIES
from twinv2.report.tables import num, signed

DASH = "–"
MECHANISM = "TWIN vs TWIN-V2 on dormant-interest targets is the paper's mechanism made visible"


def _f(x: Any, d: int = 4) -> str:
    return DASH if x is None or not math.isfinite(num(x)) else f"{num(x):.{d}f}"


def _pct(x: Any, d: int = 2) -> str:
    return DASH if x is None or not math.isfinite(num(x)) else f"{num(x):.{d}%}"


# ---- learned vs zero-shot reference -------------------------------------------------------------------------
def reference_blocks(doc: Doc, ref: dict[str, Any] | None, t3: dict[str, Any]) -> None:
    doc.add(H(2, "Learned vs zero-shot reference"))
    if not ref or not ref["rows"]:
        doc.add(P("Zero-shot reference: not measured (no run's prediction files have a `zero_shot` column: the "
                  "runs had no pre-trained item vectors, or the trainer predates the reference)."))
        return
    doc.add(P(WHAT))
    daily = {r["model"]: r for r in t3.get("rows", [])}
    rows = []
    for r in ref["rows"]:
        d, vs = daily.get(r["model"], {}), r["vs_reference"]
        names = (r["name"], "reference")
        cells = [r["name"]]
        for m in ("auc", "gauc"):
            cells += [cb.ci((r["model_pooled"] or {}).get(m)), cb.ci(r["reference_pooled"].get(m)),
                      *cb.diff_cells(vs, m)[:2], cb.verdict(vs, m, names)]
        cells.append(f"{_f(d.get('zero_shot_auc_mean'))} / {_f(d.get('zero_shot_gauc_mean'))}")
        rows.append(cells)
    n = next((r["vs_reference"]["auc"] for r in ref["rows"] if "missing" not in r["vs_reference"]), None)
    size = f" ({n['n_users']:,} users, {n['n_samples']:,} test samples)" if n else ""
    doc.add(Table(["Model", "AUC [95% CI]", "reference AUC", "AUC − reference [95% CI]", "MRD", "verdict",
                   "GAUC [95% CI]", "reference GAUC", "GAUC − reference [95% CI]", "MRD", "verdict",
                   "reference mean over days (AUC / GAUC)"], rows,
                  f"Each model and its zero-shot reference on the same test samples{size}, pooled over the test "
                  f"days (GAUC per user and day); the difference is paired (one bootstrap over users for both "
                  f"score columns of the same prediction files), MRD = 1.96 × its SE, \"not resolved\" when the CI "
                  f"contains 0; the last column is metrics.json's per-day `zero_shot_auc`/`_gauc`, mean over days:"))
    s = summary_sentence(ref)
    if ref["without"]:
        s = (s + " " if s else "") + ("No reference for " + ", ".join(display_name(m) for m in ref["without"]) +
                                      " (no `zero_shot` column in their prediction files).")
    if s:
        doc.add(P(s))


# ---- retrieval diagnostics ------------------------------------------------------------------------------------
def _sh(g: dict[str, Any] | None) -> str:
    if not g or g.get("share") is None:
        return DASH
    return f"{_f(g['share'], 3)} / {_f(g.get('hit'), 3)}"


def retrieval_blocks(doc: Doc, rt: dict[str, Any] | None, figs: dict[str, Path]) -> None:
    doc.add(H(2, "Retrieval diagnostics: does the GSU keep the target's interest?"))
    if not rt or "rows" not in rt:
        doc.add(P(f"Retrieval diagnostics: not measured ({(rt or {}).get('missing', 'no data')}; they need a "
                  f"generated world's ground truth, which imported data lacks)."))
        return
    r0 = rt["rows"][0]
    t = r0.get("length_terciles") or [None, None]
    terc = (f"short ≤ {num(t[0]):,.0f} < medium ≤ {num(t[1]):,.0f} < long behaviours" if None not in t else
            "history-length terciles")
    doc.add(P(f"{MECHANISM}: a dormant interest's behaviours lie in the far past, which TWIN's latest 10,000 "
              f"may not reach and TWIN-V2's life-cycle clusters do. Over the test samples whose candidate came "
              f"from a current or a dormant interest of the user (from the world's ground truth), per model: share "
              f"= the mean share of the kept top-{r0.get('k') or 'K'} whose hidden topic is the target's, hit = the "
              f"share of samples with at least one; history by tercile ({terc})."))
    rows = []
    for r in rt["rows"]:
        g = r["groups"]
        rows.append([r["name"], str(r.get("k") or DASH), _sh(g.get("current/all")), _sh(g.get("dormant/all")),
                     *[_sh(g.get(f"dormant/{h}")) for h in ("short", "medium", "long")],
                     f"{int(num(g.get('current/all', {}).get('n') or 0)):,} / "
                     f"{int(num(g.get('dormant/all', {}).get('n') or 0)):,}"])
    doc.add(Table(["Model", "K", "current: share / hit", "dormant: share / hit", "dormant, short history",
                   "dormant, medium history", "dormant, long history", "samples (current / dormant)"], rows,
                  "Share of the kept top-K in the target's true interest / share of samples with any (pooled over "
                  "the test days, metrics.json `retrieval`):"))
    gp = rt.get("twin_v2_vs_twin")
    if gp:
        parts = []
        for h in HISTORIES:
            x = (gp.get(f"dormant/{h}") or {}).get("share")
            if x:
                parts.append(f"{'all' if h == 'all' else h + ' histories'} {signed(x['value'], 3)} "
                             f"[{signed(x['ci_low'], 3)}, {signed(x['ci_high'], 3)}]: "
                             f"{cb.verdict_text(x['verdict'], 'TWIN-V2', 'TWIN')}")
        c = (gp.get("current/all") or {}).get("share")
        cur = (f"; on current-interest targets {signed(c['value'], 3)}: "
               f"{cb.verdict_text(c['verdict'], 'TWIN-V2', 'TWIN')}" if c else "")
        if parts:
            doc.add(P(f"TWIN-V2 − TWIN in the share kept on dormant-interest targets: {'; '.join(parts)}{cur}. "
                      f"Intervals are conservative (the trainer writes group means only, so the bound "
                      f"SE ≤ sqrt(m(1 − m)/n) per model, samples taken as independent; retrieval.py)."))
    if "retrieval" in figs:
        doc.add(Figure(figs["retrieval"], "Share of the kept top-K in the target's true interest by interest kind "
                                          "and history tercile, per two-stage model"))


# ---- premise ------------------------------------------------------------------------------------------------
def _measured(m: dict[str, Any] | None, metric: str) -> str:
    if not m:
        return "n/a (needs TWIN and TWIN-V2)"
    if "missing" in m:
        return "n/a (no prediction files)" if "predictions" in m["missing"] else f"n/a ({m['missing']})"
    iv = m[metric]
    return f"{cb.dci(iv)} (MRD {cb.mrd(iv)}): {cb.verdict_text(iv.get('verdict'), 'TWIN-V2', 'TWIN')}"


def reach_sentence(r: dict[str, Any] | None) -> str | None:
    """What a log without ground truth says about the premise: how many test samples reach past TWIN's window."""
    if not r or r.get("share_beyond_window") is None:
        return None
    w, share = int(r["window"]), num(r["share_beyond_window"])
    head = (f"{_pct(share)} of the {int(r['n_test_samples']):,} test samples have more than {w:,} behaviours "
            f"before them (median history at a test sample {num(r['median_length']):,.0f}, p90 "
            f"{num(r['p90_length']):,.0f}, max {int(r['max_length']):,})")
    if share == 0:
        return (f"{head}: TWIN's latest {w:,} already cover every test sample's whole history, so TWIN-V2 reads "
                f"no behaviour TWIN cannot, and any TWIN-V2 − TWIN difference here comes from clustering, not "
                f"from the far past.")
    return (f"{head}: only on those can TWIN-V2's life-cycle clusters read behaviours TWIN's latest {w:,} miss, "
            f"so a life-cycle gain, if any, comes from them.")


def premise_blocks(doc: Doc, pt: dict[str, Any] | None) -> None:
    if pt and pt["rows"] and all("missing" in r["premise"] for r in pt["rows"]) and \
            any(r.get("reach") for r in pt["rows"]):  # an imported log only: no truth, but its reach
        doc.add(H(1, "The premise on this log: does it reach beyond TWIN's window?"))
        doc.add(P("Without a generated world's ground truth the share of test samples whose evidence lies only in "
                  "the far past cannot be measured; what can be measured is which test samples have a far past "
                  "at all (history length strictly before the sample, from the dataset)."))
        doc.add(P(" ".join(s for s in (reach_sentence(r.get("reach")) for r in pt["rows"]) if s)))
        return
    doc.add(H(1, "The premise, measured: does this world need the far past?"))
    if not pt or not pt["rows"]:
        doc.add(P("Premise: not measured (no generated world in this experiment)."))
        return
    doc.add(P("TWIN-V2's claim needs a world where evidence lies beyond the latest 10,000 behaviours TWIN reads "
              "(paper §1). Per world, from its ground truth (DATASET/premise.json, twinv2.data.premise): the share "
              "of test samples whose target interest has evidence only beyond the latest 10,000 behaviours, and "
              "the oracle's ceiling for a life-cycle model's gain (AUC of the oracle that may use every interest "
              "seen in the history minus one limited to the latest 10,000; sampled labels, and label-noise-free "
              "E[AUC]), beside the measured TWIN-V2 − TWIN (pooled, paired bootstrap over users)."))
    rows = []
    for r in pt["rows"]:
        p = r["premise"]
        world = "main" if r["far_past_signal"] is None else f"sweep, far_past_signal {r['far_past_signal']:g}"
        if "missing" in p:
            rows.append([world, "not measured", DASH, DASH, DASH, DASH, _measured(r["measured"], "auc"),
                         _measured(r["measured"], "gauc")])
            continue
        rows.append([world, _pct(p.get("share_beyond_window")),
                     DASH if p.get("ceiling_auc") is None else signed(p["ceiling_auc"]),
                     DASH if p.get("ceiling_expected_auc") is None else signed(p["ceiling_expected_auc"]),
                     f"{int(num(p.get('n_test_samples') or 0)):,}", _f(p.get("window_days_median_heavy"), 0),
                     _measured(r["measured"], "auc"),
                     _measured(r["measured"], "gauc")])
    doc.add(Table(["World", "share beyond the latest 10,000", "ceiling ΔAUC (oracle)", "ceiling ΔE[AUC]",
                   "test samples", "days a heavy user's latest 10,000 span",
                   "measured TWIN-V2 − TWIN AUC [95% CI] (MRD)", "measured ΔGAUC [95% CI] (MRD)"],
                  rows, "Premise per world and the measured gain (the ceiling bounds the AUC gain from reading "
                        "beyond the window; GAUC has no ceiling here; heavy = the longest 2% of histories, the "
                        "median span before the first evaluation day):"))
    s = pr.verdict_sentence(pt)
    if s:
        doc.add(P(s))


def premise_summary(pt: dict[str, Any] | None) -> list[str]:
    """Summary bullets: the main world's premise, and the sweep's gain-vs-ceiling verdict."""
    out = []
    main = next((r for r in (pt or {}).get("rows", []) if r["far_past_signal"] is None), None)
    if main and "missing" in main["premise"] and reach_sentence(main.get("reach")):
        out.append(f"Reach (main data): {reach_sentence(main['reach'])}")
    if main and "missing" not in main["premise"]:
        p = main["premise"]
        out.append(f"Premise (main world): {_pct(p.get('share_beyond_window'))} of test samples have their evidence "
                   f"only beyond the latest 10,000 behaviours; the oracle's ceiling for a life-cycle gain is "
                   f"{DASH if p.get('ceiling_auc') is None else signed(p['ceiling_auc'])} AUC; measured TWIN-V2 − "
                   f"TWIN AUC {_measured(main['measured'], 'auc')}.")
    s = pr.verdict_sentence(pt)
    if s:
        out.append(s)
    return out


# ---- learning curve -----------------------------------------------------------------------------------------
def curve_blocks(doc: Doc, lc: dict[str, Any] | None, figs: dict[str, Path]) -> None:
    rows = (lc or {}).get("rows") or []
    if not rows:
        return
    doc.add(H(2, "Learning curve: AUC against training samples seen"))
    n_days = max(len(r["points"]) for r in rows)
    doc.add(P("Training samples each model saw (train-only warm-up days, then each evaluation day's training "
              "hours, in time order) and its AUC on each test hour, the samples seen by then in brackets "
              "(metrics.json `warmup_days` and `days`). Each point is a different test day, so the day's own difficulty "
              "moves all curves together; compare models at the same point:"))
    body = []
    for r in rows:
        cells = [f"{_f(p['auc'])} ({p['seen']:,})" for p in r["points"]] + [DASH] * (n_days - len(r["points"]))
        body.append([r["name"], f"{r['warmup_samples']:,}", f"{r['samples_total']:,}", *cells])
    doc.add(Table(["Model", "warm-up samples", "samples in all", *[f"test day {i + 1}" for i in range(n_days)]],
                  body))
    if "curve" in figs:
        doc.add(Figure(figs["curve"], "AUC and GAUC on each test day against the training samples seen by then"))
