"""`check_report(EXP)`: re-derive the report's tables.json from the metrics.json files and list disagreements.

Every record in tables.json that came from a metrics.json names it (`source`, or `source_a`/`source_b` for a
paired test); this recomputes each such record with the same functions and compares every number. It also
checks that each section's Table 3 lists exactly the runs on disk, that the bold marks sit on the best means,
that each metrics.json's top-level summary agrees with its per-day rows, and that the history-length groups
partition the users. Bootstrap records (`boot_run`, `boot_diff`: report/power.py) name their prediction files
(`sources`, `sources_a`/`sources_b`) and are recomputed from them with the same resample count and seed; seed
folders (`runs/<model>-seed<k>`) must all be in the seed table. Retrieval rows (`retrieval`) are re-read from
their metrics.json and premise rows (`premise`) from their premise.json (present or absent as the report says);
the TWIN-V2 − TWIN retrieval gaps, each world's measured gain and the gain-vs-ceiling verdict are recomputed
from those. An empty list means consistent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from twinv2.report import curve, premise, reference, retrieval
from twinv2.report.load import SEED_RUN
from twinv2.report.power import Power
from twinv2.report.tables import (
    clean,
    day_values,
    mean_std,
    num,
    paired_values,
    same,
    summarise_metrics,
    summary_mismatches,
)

TOL = 1e-9


def _load(path: Path, cache: dict[Path, Any], problems: list[str]) -> Any:
    if path not in cache:
        try:
            cache[path] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            problems.append(f"{path}: cannot read ({e})")
            cache[path] = None
    return cache[path]


def _numeric(x: Any) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _differs(h: Any, w: Any) -> bool:
    if isinstance(h, dict) or isinstance(w, dict):
        return not (isinstance(h, dict) and isinstance(w, dict)) or \
            any(k not in h or _differs(h[k], v) for k, v in w.items())
    if isinstance(h, list) or isinstance(w, list):
        return not (isinstance(h, list) and isinstance(w, list) and len(h) == len(w)) or \
            any(_differs(a, b) for a, b in zip(h, w))
    if _numeric(h) and _numeric(w):
        return not same(h, w, TOL)
    return h != w


def _compare(where: str, have: dict[str, Any], want: dict[str, Any], out: list[str]) -> None:
    """Every key of `want` (recomputed from the source) that `have` (tables.json) also holds must agree."""
    for k, w in clean(want).items():
        if k in have and _differs(have[k], w):
            out.append(f"{where}: {k} = {have[k]} but the source gives {w}")


def _walk(node: Any, path: str):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def check_report(exp_dir: str | Path, out_dir: str | Path | None = None) -> list[str]:
    """Inconsistencies between `<out_dir or EXP/report>/tables.json` and the experiment's files ([] = none)."""
    root = Path(exp_dir)
    tpath = (Path(out_dir) if out_dir is not None else root / "report") / "tables.json"
    out: list[str] = []
    if not tpath.is_file():
        return [f"{tpath}: not found (run build_report first)"]
    try:
        tables = json.loads(tpath.read_text())
    except ValueError as e:
        return [f"{tpath}: unreadable ({e})"]
    cache: dict[Path, Any] = {}
    powers: dict[tuple, Power] = {}
    checked: set[str] = set()
    for where, node in _walk(tables, ""):
        kind = node.get("kind")
        if kind in ("run", "oracle") and "source" in node:
            m = _load(root / node["source"], cache, out)
            if m is None:
                out.append(f"{where}: source {node['source']} is missing or unreadable")
                continue
            if kind == "run":
                _compare(where, node, summarise_metrics(m), out)
                if node["source"] not in checked:
                    checked.add(node["source"])
                    out += summary_mismatches(m, node["source"], TOL)
            else:
                for key in ("auc", "gauc"):
                    mean, std, n = mean_std(day_values(m, f"oracle_{key}").values())
                    _compare(where, node, {f"{key}_mean": mean, f"{key}_std": std, f"{key}_n": n}, out)
        elif kind == "paired":
            a = _load(root / node["source_a"], cache, out)
            b = _load(root / node["source_b"], cache, out)
            if a is None or b is None:
                out.append(f"{where}: a source of the paired test is missing or unreadable")
                continue
            want = paired_values(day_values(a, node["metric"]), day_values(b, node["metric"]))
            want.pop("note")
            _compare(where, node, want, out)
        elif kind == "retrieval" and "source" in node:
            m = _load(root / node["source"], cache, out)
            _compare(where, node, retrieval.from_file(m, node), out)
        elif kind == "premise" and "source" in node:
            body = premise.read(root / node["source"])
            if ("missing" in node) != (body is None):
                out.append(f"{where}: {node['source']} is {'present' if body else 'absent'} but the report says "
                           f"{node.get('missing') or 'it was measured'}")
            elif body is not None:
                _compare(where, node, premise.from_file(body, node), out)
        elif kind == "reach":
            gone = [f for f in node.get("sources", []) if not (root / f).is_file()]
            if gone:
                out.append(f"{where}: prediction file(s) {gone} are missing")
            else:
                _compare(where, node, premise.reach_from(root, node), out)
        elif kind in ("boot_run", "boot_diff") and "missing" not in node:
            out += _check_boot(root, where, node, powers)
        elif kind == "bench" and "source" in node:
            b = _load(root / node["source"], cache, out)
            rows = (b or {}).get("rows") or []
            if len(rows) != len(node.get("rows") or []):
                out.append(f"{where}: {len(node.get('rows') or [])} rows but {node['source']} has {len(rows)}")
            for i, (h, w) in enumerate(zip(node.get("rows") or [], rows)):
                _compare(f"{where}.rows[{i}]", h, {k: v for k, v in w.items() if k in h}, out)
    for key in ("main", "kuairand"):
        out += _check_table3(root, key, tables.get(key))
    out += _check_sweep(root, tables.get("sweep"))
    out += _check_retrieval(root, (tables.get("main") or {}).get("retrieval"))
    out += _check_curve(root, (tables.get("main") or {}).get("learning_curve"))
    out += _check_reference(root, tables)
    out += _check_premise(tables)
    hg = (tables.get("main") or {}).get("history_groups") or {}
    if "rows" in hg:
        out += _check_groups(hg)
    return out


def _check_boot(root: Path, where: str, node: dict[str, Any], powers: dict[tuple, Power]) -> list[str]:
    """Recompute a bootstrap record from its prediction files (same n_boot, seed and functions)."""
    files = [*node.get("sources", []), *node.get("sources_a", []), *node.get("sources_b", [])]
    gone = [f for f in files if not (root / f).is_file()]
    if gone:
        return [f"{where}: prediction file(s) {gone} are missing"]
    ds = node.get("p_true_dataset")
    key = (node["n_boot"], node["seed"], ds)
    if key not in powers:
        powers[key] = Power(root, node["n_boot"], node["seed"], dataset=(root / ds) if ds else None)
    pw = powers[key]
    want = pw.run(node["run"], node["sources"], node.get("score", "score")) if node["kind"] == "boot_run" else \
        pw.diff(node["a"], node["b"], node["sources_a"], node["sources_b"], node.get("users"),
                node.get("score_a", "score"), node.get("score_b", "score"))
    out: list[str] = []
    _compare(where, node, want, out)
    return out


def _check_table3(root: Path, key: str, sec: dict[str, Any] | None) -> list[str]:
    out = []
    on_disk = {p.parent.name for p in (root / key / "runs").glob("*/metrics.json") if _has_days(p)}
    seed_dirs = {n for n in on_disk if SEED_RUN.fullmatch(n) and SEED_RUN.fullmatch(n)["model"] in on_disk}
    on_disk -= seed_dirs
    t3 = (sec or {}).get("table3") or {}
    seeds = t3.get("seeds") or {}
    listed_seeds = {r.get("source", "").split("/")[-2] for row in seeds.get("rows", []) for r in row.get("runs", [])}
    if seed_dirs - listed_seeds:
        out.append(f"{key}: the seed table lacks the run(s) {sorted(seed_dirs - listed_seeds)} found under {key}/runs")
    rows = t3.get("rows") or []
    listed = {r.get("model") for r in rows}
    if on_disk - listed:
        out.append(f"{key}: Table 3 lacks the run(s) {sorted(on_disk - listed)} found under {key}/runs")
    if listed - on_disk:
        out.append(f"{key}: Table 3 lists run(s) {sorted(listed - on_disk)} with no metrics.json")
    for r in rows:
        if r.get("kind") != "run" or "source" not in r:
            out.append(f"{key}: Table 3 row {r.get('model')} does not name its metrics.json")
    for col in ("auc", "gauc"):
        means = [num(r.get(f"{col}_mean")) for r in rows]
        top = max((m for m in means if math.isfinite(m)), default=float("nan"))
        for r, m in zip(rows, means):
            if bool(r.get(f"best_{col}")) != (math.isfinite(m) and m == top):
                out.append(f"{key}: Table 3 bold mark on {col} of {r.get('model')} is wrong (mean {m}, best {top})")
    return out


def _has_days(path: Path) -> bool:
    """A readable metrics.json with per-day rows (an unreadable one is listed in the report's problems)."""
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and isinstance(body.get("days"), list)


def _check_sweep(root: Path, sw: dict[str, Any] | None) -> list[str]:
    on_disk = set()
    for d in (root / "sweep").glob("fps-*"):
        try:
            if any(_has_days(p) for p in d.glob("runs/*/metrics.json")):
                on_disk.add(float(d.name[4:]))
        except ValueError:
            continue
    listed = {float(r["value"]) for r in (sw or {}).get("rows", [])}
    return [f"sweep: far_past_signal value(s) {sorted(on_disk - listed)} have runs but are not in the table"] \
        if on_disk - listed else []


def _check_groups(hg: dict[str, Any]) -> list[str]:
    out = []
    users, groups = hg.get("user_ids") or [], hg.get("user_groups") or []
    if len(set(users)) != len(users) or len(users) != len(groups) or len(users) != hg.get("users"):
        out.append("history groups: the user list is not one entry per distinct user")
    counts = [sum(1 for g in groups if g == i) for i in range(len(hg["rows"]))]
    if counts != [r["users"] for r in hg["rows"]]:
        out.append(f"history groups: group sizes {[r['users'] for r in hg['rows']]} but the user list gives {counts}")
    return out


def _base_runs(root: Path, key: str) -> dict[str, Path]:
    """{run name: folder} of a section's runs with per-day rows, seed copies left out (as Table 3)."""
    on_disk = {p.parent.name: p.parent for p in (root / key / "runs").glob("*/metrics.json") if _has_days(p)}
    seed = {n for n in on_disk if SEED_RUN.fullmatch(n) and SEED_RUN.fullmatch(n)["model"] in on_disk}
    return {n: d for n, d in on_disk.items() if n not in seed}


def _check_reference(root: Path, tables: dict[str, Any]) -> list[str]:
    """Every run whose prediction files carry `zero_shot` has a row in its section's reference table."""
    import pyarrow.parquet as pq

    out = []
    for key in ("main", "kuairand"):
        sec = tables.get(key)
        if not sec:
            continue
        ref = sec.get("reference") or {}
        listed = {r["model"] for r in ref.get("rows", [])}
        if ref:
            _compare(f"{key}.reference", ref, reference.tally(ref.get("rows", [])), out)
        have = set()
        for name, d in _base_runs(root, key).items():
            files = sorted(d.glob("predictions-day*.parquet"))
            if files and reference.COLUMN in pq.read_schema(files[0]).names:
                have.add(name)
        if have - listed:
            out.append(f"{key}: the zero-shot reference table lacks the run(s) {sorted(have - listed)}")
    return out


def _check_retrieval(root: Path, rt: dict[str, Any] | None) -> list[str]:
    """Every run with `retrieval` is a row; TWIN-V2 − TWIN gaps recomputed from the (file-checked) rows."""
    have_block = set()
    for name, d in _base_runs(root, "main").items():
        body = json.loads((d / "metrics.json").read_text())
        if isinstance(body.get("retrieval"), dict):
            have_block.add(name)
    rows = (rt or {}).get("rows") or []
    by = {r["model"]: r for r in rows}
    if have_block - set(by):
        return [f"retrieval: the table lacks the run(s) {sorted(have_block - set(by))} whose metrics.json has it"]
    if not rows:
        return []
    have = rt.get("twin_v2_vs_twin")
    if ("twin" in by and "twin_v2" in by) != bool(have):
        return ["retrieval: the TWIN-V2 − TWIN gaps do not match the rows present"]
    out: list[str] = []
    for g, rec in (have or {}).items():
        for k in ("share", "hit"):
            want = retrieval.gap(by["twin_v2"]["groups"].get(g), by["twin"]["groups"].get(g), k)
            if (want is None) != (rec.get(k) is None):
                out.append(f"retrieval.twin_v2_vs_twin.{g}.{k}: present/absent does not match the rows")
            elif want is not None:
                _compare(f"retrieval.twin_v2_vs_twin.{g}.{k}", rec[k], want, out)
    return out


def _check_curve(root: Path, lc: dict[str, Any] | None) -> list[str]:
    """Every main run is a learning-curve row whose samples and per-day values re-derive from its metrics.json."""
    runs = _base_runs(root, "main")
    rows = {r["model"]: r for r in (lc or {}).get("rows") or []}
    out = [f"learning curve: the table lacks the run(s) {sorted(set(runs) - set(rows))}"] if set(runs) - set(rows) else []
    for name, r in rows.items():
        if name not in runs:
            out.append(f"learning curve: row {name} has no metrics.json under main/runs")
            continue
        body = json.loads((runs[name] / "metrics.json").read_text())
        _compare(f"learning_curve.{name}", {"points": r["points"], "samples_total": r["samples_total"]},
                 {"points": curve.points(body), "samples_total": (curve.points(body) or [{"seen": 0}])[-1]["seen"]}, out)
    return out


def _check_premise(tables: dict[str, Any]) -> list[str]:
    """Each row's measured gain is the comparison record the report holds for that world, and the verdict
    on whether the gain follows the ceiling is recomputed from the rows."""
    pt = tables.get("premise")
    if not pt:
        return []
    out: list[str] = []
    boots = {"main": ((tables.get("main") or {}).get("table3") or {}).get("power", {}).get("twin_v2_vs_twin")}
    for r in (tables.get("sweep") or {}).get("rows", []):
        boots[r["section"]] = r.get("boot")
    for i, r in enumerate(pt["rows"]):
        want = premise.measured_of(boots.get(r["section"]))
        if (want is None) != (r.get("measured") is None) or (want and _differs(r["measured"], want)):
            out.append(f"premise.rows[{i}] ({r['section']}): the measured gain is not the report's TWIN-V2 − TWIN "
                       f"record of that world")
    sw = [r for r in pt["rows"] if r["far_past_signal"] is not None]
    points = [{"value": r["far_past_signal"], "ceiling": r["premise"].get("ceiling_auc"),
               "gain": premise.gain_of(r["measured"], "auc")} for r in sw if "missing" not in r["premise"]]
    want_f = premise.follows(points) if sw else None
    if (want_f is None) != (pt.get("follows") is None):
        out.append("premise.follows: present/absent does not match the sweep rows")
    elif want_f is not None:
        _compare("premise.follows", pt["follows"], want_f, out)
    return out
