"""`check_report(EXP)`: re-derive the report's tables.json from the metrics.json files and list disagreements.

Every record in tables.json that came from a metrics.json names it (`source`, or `source_a`/`source_b` for a
paired test); this recomputes each such record with the same functions and compares every number. It also
checks that each section's Table 3 lists exactly the runs on disk, that the bold marks sit on the best means,
that each metrics.json's top-level summary agrees with its per-day rows, and that the history-length groups
partition the users. An empty list means consistent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from twinv2.report.tables import (
    clean,
    day_values,
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
                    v = [x for x in day_values(m, f"oracle_{key}").values() if math.isfinite(x)]
                    mean = sum(v) / len(v) if v else float("nan")
                    std = math.sqrt(sum((x - mean) ** 2 for x in v) / len(v)) if v else float("nan")
                    _compare(where, node, {f"{key}_mean": mean, f"{key}_std": std, f"{key}_n": len(v)}, out)
        elif kind == "paired":
            a = _load(root / node["source_a"], cache, out)
            b = _load(root / node["source_b"], cache, out)
            if a is None or b is None:
                out.append(f"{where}: a source of the paired test is missing or unreadable")
                continue
            want = paired_values(day_values(a, node["metric"]), day_values(b, node["metric"]))
            want.pop("note")
            _compare(where, node, want, out)
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
    hg = (tables.get("main") or {}).get("history_groups") or {}
    if "rows" in hg:
        out += _check_groups(hg)
    return out


def _check_table3(root: Path, key: str, sec: dict[str, Any] | None) -> list[str]:
    out = []
    on_disk = {p.parent.name for p in (root / key / "runs").glob("*/metrics.json") if _has_days(p)}
    t3 = (sec or {}).get("table3") or {}
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
