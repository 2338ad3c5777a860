"""Retrieval diagnostics from the ground truth (issue 11 part 5): what a two-stage model's GSU keeps.

A two-stage model's metrics.json carries `retrieval` (written by the trainer on generated worlds): over the
test samples whose candidate came from a current or a dormant interest of the user, per (interest kind,
history tercile) group, `share` = the mean share of the kept top-K whose hidden topic is the target's and
`hit` = the share of samples with at least one such behaviour; `n` = the group's samples; `length_terciles`
= the history-length cut points of the short / medium / long terciles. Imported data has no truth, so no
`retrieval` and no section.

TWIN vs TWIN-V2 on dormant-interest targets is the paper's mechanism made visible: a dormant interest's
behaviours lie in the far past, beyond TWIN's latest 10,000, where only the life-cycle clusters reach.

The trainer writes group means, not per-sample values, so a difference of two models here has no paired CI;
`gap` gives a conservative one: each model's share (a mean of values in [0, 1]) has variance at most
m(1 − m) per sample, so SE ≤ sqrt(m(1 − m)/n); the two models' SEs add as if independent (they score the same
samples, so the paired SE is smaller when they agree). It treats samples as independent, which a user's
samples are not; "not resolved" when its 95% interval contains 0.
"""

from __future__ import annotations

import math
from typing import Any

from twinv2.report.load import Experiment, Section, display_name
from twinv2.report.tables import num
from twinv2.train import significance as sig

INTERESTS = ("all", "current", "dormant")
HISTORIES = ("all", "short", "medium", "long")


def groups_of(block: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"interest/history": {n, share, hit}} of a metrics.json `retrieval` block."""
    out = {}
    for g in block.get("groups") or []:
        if isinstance(g, dict) and g.get("interest") in INTERESTS and g.get("history") in HISTORIES:
            out[f"{g['interest']}/{g['history']}"] = {"n": g.get("n"), "share": g.get("share"), "hit": g.get("hit")}
    return out


def record(metrics: dict[str, Any], source: str, model: str) -> dict[str, Any]:
    """One row of the table: the block's groups keyed by interest/history, from metrics.json `source`."""
    b = metrics.get("retrieval") or {}
    t = b.get("length_terciles") or [None, None]
    return {"kind": "retrieval", "source": source, "model": model, "name": display_name(model), "k": b.get("k"),
            "n_samples": b.get("n_samples"), "n_interest_samples": b.get("n_interest_samples"),
            "length_terciles": list(t), "groups": groups_of(b)}


def from_file(metrics: dict[str, Any] | None, node: dict[str, Any]) -> dict[str, Any]:
    """What a tables.json retrieval record should hold, recomputed from its metrics.json (check.py)."""
    return record(metrics or {}, node["source"], node["model"])


def gap(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    """a − b in `key` (share or hit) of one group with the conservative interval of the module doc."""
    if not a or not b or not all(math.isfinite(num(x.get(key))) and num(x.get("n")) > 0 for x in (a, b)):
        return None
    ma, mb, na, nb = num(a[key]), num(b[key]), num(a["n"]), num(b["n"])
    se = math.sqrt(ma * (1 - ma) / na + mb * (1 - mb) / nb)
    d = ma - mb
    lo, hi = d - sig.Z95 * se, d + sig.Z95 * se
    return {"value": d, "se": se, "ci_low": lo, "ci_high": hi, "mrd": sig.Z95 * se, "verdict": sig.verdict(lo, hi)}


def retrieval_table(sec: Section, exp: Experiment) -> dict[str, Any]:
    """{rows: one per run with `retrieval`, twin_v2_vs_twin: dormant gaps} or {missing: why}."""
    rows = [record(r.metrics, exp.rel(r.dir / "metrics.json"), m) for m, r in sec.runs.items()
            if isinstance(r.metrics.get("retrieval"), dict)]
    if not rows:
        return {"missing": "no run's metrics.json has `retrieval`"}
    by = {r["model"]: r for r in rows}
    out: dict[str, Any] = {"rows": rows, "twin_v2_vs_twin": None}
    if "twin" in by and "twin_v2" in by:
        out["twin_v2_vs_twin"] = {
            f"{i}/{h}": {k: gap(by["twin_v2"]["groups"].get(f"{i}/{h}"), by["twin"]["groups"].get(f"{i}/{h}"), k)
                         for k in ("share", "hit")}
            for i in ("current", "dormant") for h in HISTORIES}
    return out
