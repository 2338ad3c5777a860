"""The report's text: blocks (render.py) built from the computed tables; sentences are generated from numbers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from twinv2.report import compare_blocks as cb
from twinv2.report import paper
from twinv2.report import sections as sx
from twinv2.report.groups import group_summary_sentence
from twinv2.report.load import DISPLAY, MODELS, Experiment
from twinv2.report.premise import verdict_sentence as premise_verdict
from twinv2.report.reference import summary_sentence as reference_sentence
from twinv2.report.render import Bullets, Code, Doc, Figure, H, P, Table
from twinv2.report.tables import num, signed
from twinv2.train.metrics import MIN_TEST_SAMPLES

NOT_RUN = "Not run in this experiment"
DASH = "–"


# ---- formatting -----------------------------------------------------------------------------------------
def f(x: Any, d: int = 4) -> str:
    return DASH if x is None or not math.isfinite(num(x)) else f"{num(x):.{d}f}"


def pm(m: Any, s: Any, d: int = 4) -> str:
    return DASH if not math.isfinite(num(m)) else f"{num(m):.{d}f} ± {f(s, d)}"


def sg(x: Any, d: int = 4) -> str:
    """Signed, with a rounded zero printed as +0.0000 (not -0.0000)."""
    return DASH if x is None or not math.isfinite(num(x)) else signed(x, d)


def spm(m: Any, s: Any, d: int = 4) -> str:
    """Signed mean ± std (differences)."""
    return DASH if not math.isfinite(num(m)) else f"{sg(m, d)} ± {f(s, d)}"


def pval(g: dict[str, Any]) -> str:
    return "n/a" if not math.isfinite(num(g.get("p"))) else f"{num(g['p']):.3g}"


def tval(g: dict[str, Any]) -> str:
    return "n/a" if not math.isfinite(num(g.get("t"))) else f"{num(g['t']):.2f}"


def bold(s: str, on: bool) -> str:
    return f"**{s}**" if on and s != DASH else s


def secs(x: Any) -> str:
    if x is None or not math.isfinite(num(x)):
        return DASH
    x = num(x)
    if x < 120:
        return f"{x:.1f} s"
    return f"{int(x // 60)} min {x % 60:.0f} s" if x < 7200 else f"{x / 3600:.2f} h"


def nbytes(x: Any) -> str:
    if x is None or not math.isfinite(num(x)):
        return DASH
    x = num(x)
    for unit in ("B", "KB", "MB", "GB"):
        if x < 1024 or unit == "GB":
            return f"{x:,.0f} {unit}" if unit == "B" else f"{x:,.1f} {unit}"
        x /= 1024
    return DASH


def rate(x: Any) -> str:
    return DASH if x is None or not math.isfinite(num(x)) else f"{num(x):,.0f}"


def _fig(figs: dict[str, Path], key: str, caption: str) -> Figure | None:
    return Figure(figs[key], caption) if key in figs else None


# ---- sections -------------------------------------------------------------------------------------------
def build_document(exp: Experiment, t: dict[str, Any], figs: dict[str, Path]) -> Doc:
    doc = Doc("TWIN-V2 experiment report")
    doc.add(P(f"Experiment folder `{exp.root}`. Every number below is computed from the files in that folder "
              f"(metrics.json, predictions, manifests, benchmarks; `tables.json` beside this report holds them "
              f"all); the only typed-in numbers are the paper's, labelled **paper**, from {paper.SOURCE}. Results "
              f"first; what was run, the data statistics and where the configuration lives are in the appendix."))
    summary(doc, t)
    main = t.get("main")
    doc.add(H(1, f"Main section: {main['label']}" if main else "Main section"))
    if not main:
        doc.add(P(f"{NOT_RUN}."))
    else:
        table3_blocks(doc, main["table3"], figs, "table3", "Table 3 analog")
        sx.reference_blocks(doc, main.get("reference"), main["table3"])
        sx.curve_blocks(doc, main.get("learning_curve"), figs)
        ablation_blocks(doc, main["ablation"], figs)
        groups_blocks(doc, main["history_groups"], figs)
        sx.retrieval_blocks(doc, main.get("retrieval"), figs)
        diversity_blocks(doc, main["diversity"], figs)
        table4_blocks(doc, main["table4"])
        cost_blocks(doc, main["cost"], exp)
    sx.premise_blocks(doc, t.get("premise"))
    sweep_blocks(doc, t.get("sweep"), figs, t.get("premise"))
    kuairand_blocks(doc, t.get("kuairand"), figs)
    caveats(doc, t)
    if t["problems"]:
        doc.add(H(1, "Problems found while reading the experiment"), Bullets(list(t["problems"])))
    run_header(doc, exp, t)
    return doc


def summary(doc: Doc, t: dict[str, Any]) -> None:
    items = []
    main = t.get("main")
    if main and main["table3"]["rows"]:
        t3 = main["table3"]
        names = {r["model"]: r["name"] for r in t3["rows"]}
        items.append(f"Best mean AUC: {', '.join(names[m] for m in t3['best']['auc']) or DASH}; best mean GAUC: "
                     f"{', '.join(names[m] for m in t3['best']['gauc']) or DASH} ({len(t3['rows'])} models).")
        if t3["paired"]:
            g, a = t3["paired"]["gauc"], t3["paired"]["auc"]
            boot = (t3.get("power") or {}).get("twin_v2_vs_twin")
            items.append(f"TWIN-V2 − TWIN, pooled over the test days with a paired bootstrap over users: GAUC "
                         f"{cb.boot_summary(boot, 'gauc')}; AUC {cb.boot_summary(boot, 'auc')}. Mean of the daily "
                         f"differences: GAUC {sg(g['mean_diff'])} (paired t-test p = {pval(g)}, {g['n']} days), "
                         f"AUC {sg(a['mean_diff'])} (p = {pval(a)}); paper: GAUC "
                         f"{paper.TABLE3['twin_v2'][1] - paper.TABLE3['twin'][1]:+.4f}, AUC "
                         f"{paper.TABLE3['twin_v2'][0] - paper.TABLE3['twin'][0]:+.4f}.")
        o = t3.get("oracle")
        v2 = next((r for r in t3["rows"] if r["model"] == "twin_v2"), None)
        if o and v2:
            items.append(f"Oracle GAUC from p_true {f(o['gauc_mean'])}; TWIN-V2 reaches {f(v2.get('gauc_mean'))} "
                         f"(gap {f(num(o['gauc_mean']) - num(v2.get('gauc_mean')))}).")
        items += cb.summary_items(t3)
        ref = reference_sentence(main.get("reference"))
        if ref:
            items.append(ref)
        hg = main["history_groups"]
        if hg and "rows" in hg:
            items.append(group_summary_sentence(hg))
    items += sx.premise_summary(t.get("premise"))
    if t.get("sweep"):
        items.append(t["sweep"]["verdict"]["gauc"])
    if t.get("kuairand"):
        items.append(f"KuaiRand: {t['kuairand']['note']['text']}")
    doc.add(H(1, "Summary"), Bullets(items) if items else P("Nothing was run."))


def run_header(doc: Doc, exp: Experiment, t: dict[str, Any]) -> None:
    """The appendix: what was run, time per stage, where the configuration is, the data statistics."""
    h = t["header"]
    doc.add(H(1, "Appendix: what was run"))
    if not h["present"]:
        doc.add(P("experiment.json is missing: seed, machine, timings and config are unknown."))
    secs_run = [n for n, s in (("main", t.get("main")), ("sweep", t.get("sweep")), ("kuairand", t.get("kuairand")))
                if s]
    mach = h.get("machine") or {}
    items = [f"Sections present: {', '.join(secs_run) or 'none'}.",
             f"Seed: {h['seed'] if h['seed'] is not None else DASH}.",
             "Machine: " + (", ".join(f"{k} {v}" for k, v in mach.items()) if mach else DASH) + ".",
             (f"Started {h.get('started') or DASH}, finished {h['finished']} (elapsed "
              f"{secs(h.get('elapsed_seconds'))})." if h.get("finished") else
              f"Started {h.get('started') or DASH}; not finished when this report was built (the report is the "
              f"last stage), so the time below is the sum of the stages recorded so far.")]
    if t.get("main"):
        present = [r["model"] for r in t["main"]["table3"]["rows"]]
        absent = [DISPLAY[m] for m in MODELS if m not in present]
        items.append(f"Models in the main section: {len(present)} of {len(MODELS)}" +
                     (f" (not run: {', '.join(absent)})." if absent else "."))
        inits = t["main"].get("item_init") or {}
        if inits:
            items.append("Item tables initialised from (metrics.json `item_init`): " +
                         ", ".join(f"{k} ({len(v)} run(s))" for k, v in inits.items()) + ".")
        ab = t["main"]["ablation"]
        done = [r["name"] for r in (ab or {}).get("rows", []) if not r.get("missing") and r["variant"] != "full"]
        items.append(f"Ablations (Figure 4): {', '.join(done) if done else 'none'}.")
    if t.get("sweep"):
        items.append("far_past_signal sweep values: " + ", ".join(f"{r['value']:g}" for r in t["sweep"]["rows"]) + ".")
    doc.add(Bullets(items))
    if h["timings"]:
        total = num(h["timings_total"])
        rows = [[k, secs(v), f"{v / total:.1%}" if total else DASH] for k, v in h["timings"].items()]
        rows.append(["**total (sum of stages)**", f"**{secs(total)}**", "100%"])
        doc.add(Table(["Stage", "Time", "Share"], rows, "Time per stage, in run order (experiment.json `timings`):"))
    if h.get("config") is not None:
        n_lines = len(json.dumps(h["config"], indent=2).splitlines())
        doc.add(P(f"The resolved configuration (experiment.json `config`, {n_lines} lines) is in `config.json` "
                  f"beside this report, and in `tables.json` under `header.config`."))
    stats = (t.get("main") or {}).get("stats")
    doc.add(H(2, "Data statistics (main)"))
    doc.add(_stats_block(stats))
    if t.get("kuairand"):
        doc.add(H(2, "Data statistics (KuaiRand)"), _stats_block(t["kuairand"].get("stats")))


def _stats_block(stats: dict[str, Any] | None):
    if not stats:
        return P(f"stats.json: {NOT_RUN}.")
    from twinv2.data.stats import format_stats

    try:
        return Code(format_stats(stats))
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # a stats.json of another version
        return P(f"stats.json could not be formatted ({e}).")


def table3_blocks(doc: Doc, t3: dict[str, Any], figs: dict[str, Path], fig_key: str, title: str) -> None:
    doc.add(H(2, title))
    rows = t3["rows"]
    if not rows:
        doc.add(P(f"Model runs: {NOT_RUN}."))
        return
    pw = t3.get("power") or {}
    ex = cb.has_expected(t3)
    out = []
    for r in rows:
        out.append([r["name"], bold(pm(r.get("auc_mean"), r.get("auc_std")), r["best_auc"]),
                    bold(pm(r.get("gauc_mean"), r.get("gauc_std")), r["best_gauc"]),
                    *cb.pooled_cells((pw.get("runs") or {}).get(r["model"]), ex), str(r.get("auc_n", 0)),
                    f(r["paper_auc"]), f(r["paper_gauc"])])
    o = t3.get("oracle")
    if o:
        po = pw.get("oracle")
        cells = cb.pooled_cells(po, ex)
        if ex and po:  # the oracle's expected AUC: p_true scored against labels drawn from p_true
            cells[2:4] = [f(po.get("expected_auc")), f(po.get("expected_gauc"))]
        out.append(["Oracle (p_true)", pm(o["auc_mean"], o["auc_std"]), pm(o["gauc_mean"], o["gauc_std"]), *cells,
                    str(o["auc_n"]), DASH, DASH])
    head = ["Model", "AUC (ours)", "GAUC (ours)", "pooled AUC [95% CI]", "pooled GAUC [95% CI]"] + \
        (["E[AUC] under p_true", "E[GAUC] under p_true"] if ex else []) + ["days", "AUC (paper)", "GAUC (paper)"]
    doc.add(Table(head, out,
                  "AUC/GAUC (ours): mean ± std over the evaluation days' test hours; **bold** = best mean among the "
                  "models. Pooled: all test hours together (GAUC per user and day), 95% CI from a bootstrap over "
                  "users" + ("; E[·] under p_true: the AUC expected when labels are drawn from the true click "
                             "probability, free of label noise (the oracle's is the ceiling)" if ex else "") +
                  f"; {paper.TABLE3_NOTE}."))
    doc.add(test_hour_note(rows))
    if o and num(o.get("max_disagreement")) > 1e-12:
        doc.add(P(f"Note: the runs' oracle values differ by up to {num(o['max_disagreement']):.2e}, so their "
                  f"test sets are not identical."))
    if t3.get("paired"):
        cb.twin_pair_blocks(doc, t3, tval, pval, spm)
    else:
        doc.add(P(f"TWIN-V2 − TWIN paired test: needs both runs; {NOT_RUN}."))
    cb.vs_best_blocks(doc, t3)
    if "seeds" in t3:
        cb.seed_blocks(doc, t3)
    doc.add(_fig(figs, fig_key, f"{title}: mean ± std over days per model"))
    if fig_key == "table3":
        doc.add(_fig(figs, "vs_best", "Each model minus the best model, pooled over the test days, with its 95% "
                                      "paired-bootstrap CI (red: not resolved)"))


def test_hour_note(rows: list[dict[str, Any]]) -> P | None:
    """The test hours' sizes (every run of a section scores the same ones) and how many days are usable."""
    r = max(rows, key=lambda r: len(r.get("n_test_days") or []), default=None)
    sizes = (r or {}).get("n_test_days") or []
    if not sizes or None in sizes:
        return None
    n = len(sizes)
    ok = int(r.get("usable_days", n))
    text = f"Test hours: {', '.join(f'{x:,}' for x in sizes)} samples (day 1 to {n})."
    if ok < n:
        which = (f"none of the {n} days is" if ok == 0 else f"only {ok} of the {n} days {'is' if ok == 1 else 'are'}")
        text += (f" A usable test hour has at least {MIN_TEST_SAMPLES} samples and both labels: {which} usable, so "
                 f"the day means ± std above {'are not reliable' if ok == 0 else 'mix in unreliable days'} (an "
                 f"unusable day's AUC is noise or missing); read the pooled columns and their CIs.")
    return P(text)


def ablation_blocks(doc: Doc, ab: dict[str, Any] | None, figs: dict[str, Path]) -> None:
    doc.add(H(2, "Figure 4 analog: ln n removed from the GSU, the ESU, both"))
    if not ab:
        doc.add(P(f"Ablation runs: {NOT_RUN}."))
        return
    rows, lower, resolved = [], 0, 0
    done = [r for r in ab["rows"] if not r.get("missing") and r["variant"] != "full"]
    for r in ab["rows"]:
        if r.get("missing"):
            rows.append([r["name"], DASH, DASH, DASH, DASH, DASH, f"{NOT_RUN}"])
            continue
        vs, boot = r.get("vs_full"), r.get("boot_vs_full")
        cells = [r["name"], pm(r.get("auc_mean"), r.get("auc_std")), pm(r.get("gauc_mean"), r.get("gauc_std"))]
        if vs:
            cells += [cb.diff_cell(boot, "auc", ("variant", "full")), cb.diff_cell(boot, "gauc", ("variant", "full")),
                      f"{sg(vs['gauc']['mean_diff'])} (p {pval(vs['gauc'])})", str(vs["gauc"]["n"])]
            lower += num(vs["gauc"]["mean_diff"]) < 0
            resolved += bool(boot and "missing" not in boot and boot["gauc"]["verdict"] == "B better")
        else:
            cells += [DASH, DASH, DASH, str(r.get("auc_n", 0))]
        rows.append(cells)
    doc.add(Table(["Variant", "AUC", "GAUC", "ΔAUC vs full [95% CI] (MRD): verdict",
                   "ΔGAUC vs full [95% CI] (MRD): verdict", "daily ΔGAUC (t-test p)", "days"], rows,
                  "Mean ± std over days; Δ = variant − full TWIN-V2 (main/runs/twin_v2), pooled over the test days "
                  "with a paired bootstrap over users (95% CI); daily: paired t-test across days:"))
    if ab["full_present"] and done:
        doc.add(P(f"Removing ln n lowered the mean GAUC in {lower} of {len(done)} variant(s) run here; the pooled "
                  f"bootstrap resolves a GAUC loss in {resolved} of them. Paper: {paper.FIGURE4_CLAIM}."))
    elif not ab["full_present"]:
        doc.add(P("The full TWIN-V2 run (main/runs/twin_v2) is missing, so no variant is compared with it."))
    doc.add(_fig(figs, "ablation", "Figure 4 analog: GAUC and AUC of TWIN-V2 with and without ln n (mean ± std)"))


def groups_blocks(doc: Doc, hg: dict[str, Any] | None, figs: dict[str, Path]) -> None:
    doc.add(H(2, "Figure 5 analog: TWIN-V2's GAUC gain over TWIN by history length"))
    if not hg or "rows" not in hg:
        doc.add(P(f"{NOT_RUN} ({(hg or {}).get('missing', 'no data')})."))
        return
    doc.add(P(f"{hg['users']:,} users appear in the test hours. A user's history length is their number of "
              f"behaviours before the first evaluation day (ts < {hg['before_ts']}); terciles of those lengths "
              f"(numpy 'lower' quantiles) give t1 = {hg['t1']:,.0f} and t2 = {hg['t2']:,.0f}: low ≤ t1 < medium ≤ "
              f"t2 < high (ties go to the lower group). Per group, GAUC is computed per day on the group's test "
              f"samples, then averaged over the days; the gain is the paired per-day difference."))
    a, b = hg["a"], hg["b"]
    rows = []
    for r in hg["rows"]:
        g = r["gain"]
        rows.append([r["group"], (f"{r['length_min'] if r['length_min'] is not None else DASH}–"
                                 f"{r['length_max'] if r['length_max'] is not None else DASH}"),
                     f"{r['users']:,}", f"{r['share_users']:.1%}", f"{num(r['share_samples']):.1%}",
                     pm(r[f"{b}_gauc_mean"], r[f"{b}_gauc_std"]), pm(r[f"{a}_gauc_mean"], r[f"{a}_gauc_std"]),
                     *cb.diff_cells(r.get("boot"), "gauc"), spm(g["mean_diff"], g["std_diff"]), pval(g),
                     str(g["n"])])
    doc.add(Table(["Group", "length range", "users", "share of users", "share of test samples",
                   f"{hg['name_b']} GAUC", f"{hg['name_a']} GAUC", "gain pooled [95% CI]", "MRD", "verdict",
                   "daily gain", "p", "days"], rows,
                  "Gain pooled: the group's test samples of all days, paired bootstrap over the group's users "
                  "(95% CI; MRD = 1.96 × its SE); daily: mean ± std of the per-day gains, paired t-test:"))
    boots = [r["boot"] for r in hg["rows"] if r.get("boot") and "missing" not in r["boot"]]
    res = (f" The pooled bootstrap resolves the gain (CI excludes 0) in "
           f"{sum(x['gauc']['verdict'] != 'not resolved' for x in boots)} of {len(boots)} groups." if boots else "")
    doc.add(P(f"{group_summary_sentence(hg)}{res} Paper: {paper.FIGURE5_CLAIM}."))
    doc.add(_fig(figs, "groups", "Figure 5 analog: GAUC gain of TWIN-V2 over TWIN per history-length group"))


def diversity_blocks(doc: Doc, dv: dict[str, Any] | None, figs: dict[str, Path]) -> None:
    doc.add(H(2, "Diversity of recommendations"))
    if not dv or "rows" not in dv:
        doc.add(P(f"{NOT_RUN} ({(dv or {}).get('missing', 'no data')})."))
        return
    k = dv["k"]
    rows = [[r["name"], f"{r['mean']:.3f}", f"{r['user_days']:,}"] for r in dv["rows"]]
    doc.add(Table(["Ranking", f"distinct tags in top {k} (mean over user-days)", "user-days"], rows,
                  f"Per (user, test day): the user's test candidates ranked by the model's score, top {k} (fewer if "
                  f"fewer), distinct tags counted; references use the candidates of {DISPLAY.get(dv['candidates_from'], dv['candidates_from'])}'s "
                  f"prediction files:"))
    binding = dv["share_over_k"]
    doc.add(P(f"A user-day has {dv['candidates_mean']:.1f} test candidates on average and {binding:.1%} of user-days "
              f"have more than {k}" + (f", so the top {k} is mostly the whole candidate set and the models can differ "
                                       f"little here." if binding < 0.5 else ".") +
              f" Paper: {paper.DIVERSITY_CLAIM}."))
    doc.add(_fig(figs, "diversity", f"Distinct tags among each user's top {k} test candidates"))


def table4_blocks(doc: Doc, t4: dict[str, Any] | None) -> None:
    doc.add(H(2, "Table 4 analog: hierarchical clustering variants"))
    if not t4:
        doc.add(P(f"cluster_bench.json: {NOT_RUN}."))
        return
    rows = []
    for r in t4["rows"]:
        rows.append([r["variant"], str(r["delta"]), f(r["accuracy"]), f(r["sec_per_user_median"]),
                     f(r["sec_per_user_p90"]), f(r["clusters_per_user"], 1), f(r["compression"]),
                     f"{nbytes(r['bytes_before'])} → {nbytes(r['bytes_after'])}",
                     r["paper_label"] or DASH, f(r["paper_accuracy"], 3), f(r["paper_sec"], 3)])
    s = t4.get("setup") or {}
    lengths = (f" (T = {int(num(s['T_min'])):,} to {int(num(s['T_max'])):,} behaviours, median "
               f"{num(s['T_median']):,.0f})" if all(s.get(k) is not None for k in ("T_min", "T_max", "T_median"))
               else "")
    doc.add(Table(["Variant", "δ", "accuracy", "s/user (median)", "s/user (p90)", "clusters/user", "T̂/T",
                   "bytes/user before → after", "paper variant", "accuracy (paper)", "s/user (paper)"], rows,
                  f"Users: {s.get('users', DASH)}{lengths}; γ = {s.get('gamma', DASH)}, {s.get('threads', DASH)} "
                  f"thread; accuracy = mean cosine of items to their centroid; paper's times are on Kuaishou's "
                  f"hardware:"))
    if t4.get("big_user_seconds") is not None:
        doc.add(P(f"One user with {t4['big_user_T']:,} behaviours (adaptive): {t4['big_user_seconds']:.2f} s."))
    tg = [x for x in t4.get("targets") or [] if isinstance(x, dict)]
    if tg:
        doc.add(Bullets([target_line(x, s.get("T_median")) for x in tg]))


_AT_T = re.compile(r" at T\s*=\s*(\d{1,3}(?:,\d{3})+|\d+)")


def target_line(x: dict[str, Any], t_median: Any) -> str:
    """One benchmark target. A time target set at a history length T (`... at T=14,500`) is judged at that T
    only: measured on users of another median length, a pass below T or a miss above it says nothing, so it
    reads "not comparable" with both lengths; a pass above T or a miss below it still counts."""
    name, met = str(x.get("name")), x.get("met")
    value = DASH if x.get("value") is None else format(num(x["value"]), ".4g")
    word = "n/a" if met is None else "met" if met else "MISSED"
    m = _AT_T.search(name)
    if m and met is not None and t_median is not None and math.isfinite(num(t_median)):
        t_set, t_here = int(m.group(1).replace(",", "")), num(t_median)
        if t_here != t_set:
            name = _AT_T.sub("", name)
            at = f"measured at these users' median T = {t_here:,.0f}; the target is for T = {t_set:,}"
            if (met and t_here < t_set) or (not met and t_here > t_set):
                return f"not comparable: {name} (value {value}; {at})"
            return f"{word}: {name} (value {value}; {at}, so it holds a fortiori)"
    return f"{word}: {name} (value {value})"


def cost_blocks(doc: Doc, c: dict[str, Any], exp: Experiment) -> None:
    doc.add(H(2, "Cost"))
    if c["models"]:
        rows = [[r["name"], rate(r.get("train_samples_per_s_mean")), rate(r.get("eval_samples_per_s_mean")),
                 secs(r.get("train_seconds_total")), rate(r.get("n_train_total")), rate(r.get("n_test_total"))]
                for r in c["models"]]
        doc.add(Table(["Model", "train samples/s", "inference samples/s", "train time", "train samples",
                       "test samples"], rows, "Training and inference throughput (mean over days, metrics.json):"))
    else:
        doc.add(P(f"Model runs: {NOT_RUN}."))
    if c["snapshots"]:
        rows = [[s["snapshot"], rate(s["users"]), _refresh(s), rate(s["behaviours"]), rate(s["clusters"]),
                 f(s["compression"]), secs(s["wall_seconds"]), secs(s["worker_seconds"]),
                 f"{nbytes(s['bytes_before'])} → {nbytes(s['bytes_after'])}", nbytes(s["parquet_bytes_after"])]
                for s in c["snapshots"]]
        doc.add(Table(["Snapshot", "users", "clustered / reused (refresh)", "behaviours", "clusters", "T̂/T",
                       "wall time", "worker time", "storage before → after", "cluster parquet"], rows,
                      f"Offline compression (cluster manifests). Storage before = behaviours before the snapshot × "
                      f"{c['raw_row_bytes']} bytes (five int64 columns: user_id, item_id, ts, play_ms, duration_ms); "
                      f"after = clusters × {c['cluster_row_bytes']} bytes (a virtual item's columns as the model "
                      f"reads them, store.ROW_BYTES); wall time = the job's last run, worker time = sum over shards:"))
        derived = sorted({d for s in c["snapshots"] for d in s["derived"]})
        if derived:
            doc.add(P("Derived because the manifest lacks it: " + "; ".join(derived) + "."))
    else:
        doc.add(P(f"Cluster snapshots: {NOT_RUN}."))
    if c["behaviour_parquet_bytes"] is not None:
        doc.add(P(f"The whole behaviour log on disk (Parquet, zstd, all behaviours including those after the "
                  f"snapshot): {nbytes(c['behaviour_parquet_bytes'])}."))
    if c["cluster_timings"]:
        doc.add(P("Clustering stages in experiment.json: " +
                  ", ".join(f"{k} {secs(v)}" for k, v in c["cluster_timings"].items()) + "."))
    bt = c.get("bench_train")
    if bt:
        rows = [[DISPLAY.get(r["model"], r["model"]), rate(r["gsu_length"]), rate(r["train_samples_per_s"]),
                 rate(r["infer_samples_per_s"]), f(r["peak_rss_gb"], 2)] for r in bt["rows"]]
        doc.add(Table(["Model", "GSU length", "train samples/s", "inference samples/s", "peak RSS (GB)"], rows,
                      "bench_train.json (synthetic full-length batches, batch 256; end to end, batch building "
                      "included):"))


def _refresh(s: dict[str, Any]) -> str:
    """Users clustered again / copied from the base snapshot in the job's last run (a refresh reuses the
    clusters of users without new behaviours); a dash where the manifest does not say."""
    c, r = s.get("clustered_users"), s.get("reused_users")
    if c is None or r is None:
        return DASH
    base = f" (from {Path(str(s['base_snapshot'])).name})" if s.get("base_snapshot") else ""
    return f"{rate(c)} / {rate(r)}{base}"


def sweep_blocks(doc: Doc, sw: dict[str, Any] | None, figs: dict[str, Path],
                 pt: dict[str, Any] | None = None) -> None:
    doc.add(H(1, "Far-past-signal sweep"))
    if not sw:
        doc.add(P(f"{NOT_RUN}."))
        return
    rows = []
    for r in sw["rows"]:
        tw, v2, g, boot = r["twin"] or {}, r["twin_v2"] or {}, r["gain"], r.get("boot")
        head = [f"{r['value']:g}", pm(tw.get("gauc_mean"), tw.get("gauc_std")),
                pm(v2.get("gauc_mean"), v2.get("gauc_std"))]
        if g:
            rows.append([*head, cb.diff_cell(boot, "gauc"), cb.diff_cell(boot, "auc"),
                         f"{spm(g['gauc']['mean_diff'], g['gauc']['std_diff'])} (p {pval(g['gauc'])})",
                         f"{spm(g['auc']['mean_diff'], g['auc']['std_diff'])} (p {pval(g['auc'])})",
                         str(g["gauc"]["n"])])
        else:
            rows.append([*head, DASH, DASH, DASH, DASH, "needs both TWIN and TWIN-V2"])
    doc.add(Table(["far_past_signal", "TWIN GAUC", "TWIN-V2 GAUC", "ΔGAUC pooled [95% CI] (MRD): verdict",
                   "ΔAUC pooled [95% CI] (MRD): verdict", "daily ΔGAUC mean ± std (t-test p)",
                   "daily ΔAUC mean ± std (t-test p)", "days"], rows,
                  "Δ = TWIN-V2 − TWIN; pooled over the test days with a paired bootstrap over users (95% CI, MRD = "
                  "1.96 × its SE); daily: mean ± std of the daily differences, paired t-test across days. The "
                  "verdict below reads the bootstrap where the prediction files allow it:"))
    seeded = [(r["value"], r["seeds"]["twin_v2_vs_twin"]) for r in sw["rows"]
              if (r.get("seeds") or {}).get("twin_v2_vs_twin")]
    if seeded:
        doc.add(Table(["far_past_signal", "seeds (TWIN-V2, TWIN)", "ΔGAUC of the seed means [Welch 95% CI]",
                       "ΔAUC of the seed means [Welch 95% CI]"],
                      [[f"{v:g}", f"{g['gauc']['n_a']}, {g['gauc']['n_b']}"] +
                       [f"{cb.dci({'value': g[m]['diff'], 'ci_low': g[m]['ci_low'], 'ci_high': g[m]['ci_high']})}: "
                        f"{cb.verdict_text(g[m]['verdict'], 'TWIN-V2', 'TWIN')}" for m in ("gauc", "auc")]
                       for v, g in seeded],
                      "TWIN-V2 − TWIN over training seeds (runs/<model>-seed<k>), per far_past_signal value:"))
    planned = sw.get("planned") or []
    missing = [v for v in planned if float(v) not in {float(r["value"]) for r in sw["rows"]}]
    if missing:
        doc.add(P(f"Planned but not found: far_past_signal = {', '.join(f'{float(v):g}' for v in missing)}."))
    follows = premise_verdict(pt)
    doc.add(Bullets([sw["verdict"]["gauc"], sw["verdict"]["auc"], *([follows] if follows else [])]))
    doc.add(_fig(figs, "sweep", "TWIN-V2 − TWIN GAUC and AUC by far_past_signal (mean ± std over days)"))


def kuairand_blocks(doc: Doc, k: dict[str, Any] | None, figs: dict[str, Path]) -> None:
    doc.add(H(1, f"KuaiRand section: {k['label']}" if k else "KuaiRand section"))
    if not k:
        doc.add(P(f"{NOT_RUN}."))
        return
    table3_blocks(doc, k["table3"], figs, "kuairand", "Table 3 analog on KuaiRand (no oracle: real data)")
    if (k.get("reference") or {}).get("rows"):
        sx.reference_blocks(doc, k["reference"], k["table3"])
    doc.add(H(2, "History lengths and what to expect"), P(k["note"]["text"]))
    c = k.get("cost") or {}
    if c.get("models"):
        rows = [[r["name"], rate(r.get("train_samples_per_s_mean")), rate(r.get("eval_samples_per_s_mean"))]
                for r in c["models"]]
        doc.add(Table(["Model", "train samples/s", "inference samples/s"], rows, "Throughput on KuaiRand:"))


def caveats(doc: Doc, t: dict[str, Any]) -> None:
    h = t["header"]
    cpus = (h.get("machine") or {}).get("cpus")
    main = t.get("main") or {}
    n_days = max([r.get("auc_n", 0) for r in (main.get("table3") or {}).get("rows", [])] or [0])
    truth = bool(main.get("truth")) or bool(t.get("sweep"))  # a generated world somewhere in the report
    doc.add(H(1, "How to read this, and caveats"))
    doc.add(Bullets([b for b in [
        ("Protocol (paper §4.1): per evaluation day, train on hours 0–22 in time order, test on hour 23 (an imported "
         "log may test more hours of each day: its mapping's split.test_hours), carry the "
        "model over to the next day (streaming). mean ± std is over the days' test hours, population std (ddof=0), "
        "as the trainer's summary."),
        "GAUC = Σ_u w_u AUC_u / Σ_u w_u over users with both labels in the test hour, w_u = their sample count.",
        ("Confidence intervals: every difference is also computed on all test hours pooled (AUC over the pooled "
         "samples, GAUC per user and day), with a paired bootstrap over users (1,000 resamples, seed 0; a user is "
         "the unit because a user's samples share one history and are not independent). MRD, the minimum "
         "resolvable difference = 1.96 × the bootstrap SE of the difference: a difference below it has a CI "
         "containing 0 and is written \"not resolved\"; a true difference of 2.8 × SE (1.43 × MRD) is found "
         "80% of the time. The intervals hold the test set's noise, not the training seed's (see the seed "
         "table where runs/<model>-seed<k> folders exist)."),
        ("E[AUC], E[GAUC] under p_true (generated data): the AUC a score is expected to reach when labels are drawn "
         "from the true click probability, Σ_{i≠j} p_i(1−p_j)·1[s_i > s_j] / Σ_{i≠j} p_i(1−p_j) (ties ½); "
         "free of label noise, so two models' expected AUCs differ only through their scores.") if truth else None,
        (f"A day's test hour counts as usable with at least {MIN_TEST_SAMPLES} samples and both labels "
         f"(train/metrics.py); a smaller one still enters the mean ± std (the trainer's summary), so where the "
         f"Table 3 analog reports unusable days, read the pooled columns, not the day means."),
        (f"The paired t-test has only {n_days} day(s) here: low power, so a small p is strong evidence but a large p "
        f"is weak evidence of no difference."),
        ("Zero-shot reference, retrieval diagnostics and the premise need what the trainer and the world "
         "write: a `zero_shot` column in the prediction files (runs with pre-trained item vectors), a "
         "`retrieval` block in metrics.json and DATASET/premise.json (generated worlds only: imported data has no "
         "ground truth); without them the section says \"not measured\". The retrieval intervals are "
         "conservative bounds from group means (retrieval.py), not a paired bootstrap.") if truth else
        ("The zero-shot reference needs a `zero_shot` column in the prediction files (runs with pre-trained item "
         "vectors); without it the section says \"not measured\"."),
        ("The main section runs on a generated world: its ground truth (p_true) gives the oracle row, and its "
         "far_past_signal knob sets how much the far past predicts clicks; its numbers say what the models do on "
         "that world, not on Kuaishou's logs. The paper's columns are Kuaishou's, shown for shape, not for "
         "equality.") if main.get("truth") else
        (f"The main section runs on {main['label']}, a log without ground truth: every number is measured against "
         f"its own labels (no oracle, no label-noise-free E[AUC], no retrieval diagnostics, no premise beyond the "
         f"history lengths), so a difference is only as good as its CI. The paper's columns are Kuaishou's, shown "
         f"for shape, not for equality.") if main else None,
        (f"Times and throughputs were measured on a {cpus}-core box with other work possibly running; compare them "
         f"within this report, not with the paper's." if cpus else
         "Times and throughputs depend on the machine (unknown: no experiment.json); compare them within this "
         "report only."),
        ("Every figure is also a table above it; `tables.json` holds every printed number, and "
        "`twinv2.report.check_report` re-derives them from the metrics.json and prediction files."),
    ] if b]))
