"""Is the paper's premise true of this world? Measured from a generated world's ground truth (truth/).

TWIN-V2's claim is that the far past of a life cycle, beyond the latest 10,000 behaviours that TWIN reads,
predicts today's clicks (paper §1: 10,000 behaviours are only the last 3-4 months of a heavy user). Whether a
world lets that hold is a property of the world, so it is measured here, before any model runs:

- **share beyond the window**: the share of test samples whose target belongs to one of the user's interests
  (the target's topic is an interest topic) that has behaviours in the history before the sample, none of them
  among the latest `window` behaviours. Only a model reading further back can see that evidence.
- **the ceiling of a life-cycle gain**: the oracle's AUC when it may use only interests with evidence somewhere
  in the history (`life`) minus its AUC when it may use only those with evidence in the latest `window`
  behaviours (`window`). Both oracles know the true click model of the interests they may use; `window` drops
  an interest's terms (affinity and favourite author, current or dormant) when its topic is absent from the
  window. AUC(life) - AUC(window) bounds what any model gains from reading beyond the window; beside it the
  label-noise-free (expected) AUCs, whose difference is not blurred by the test set's sampled labels.

The pure functions (`evidence`, `window_terms`, `expected_auc`) take plain arrays, so a hand-built case has a
known answer; `measure_premise` applies them to a dataset and `write_premise` stores DATASET/premise.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from twinv2.config import from_dict
from twinv2.data.sealed import read_sealed_if_present, write_sealed
from twinv2.data.storage import DAY_MS, Dataset

WINDOW = 10_000  # TWIN's GSU reads the latest 10,000 behaviours (paper §4.1)
PREMISE_FILE = "premise.json"
REMEASURE = "delete it: `twinv2 experiment` measures the premise again when it resumes"
HEAVY_SHARE = 0.02  # "heavy users": the longest 2% of histories (paper §1: 2% of users bring 60% of watch time)
NOT_INTEREST, IN_WINDOW, BEYOND_WINDOW, UNSEEN = range(4)  # evidence codes of a sample's target
CODE_NAMES = ("not_interest", "in_window", "beyond_window", "unseen")


def evidence(b_key: np.ndarray, pos: np.ndarray, keys: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each interest's evidence lies, for each sample of one user.

    b_key (L,): per behaviour in time order, what it is evidence of (the interest that drew it, or its topic);
    pos (S,): behaviours strictly before each sample; keys (K,): the interests (or topics) asked about.
    Returns (ever, recent), each (S, K) bool: key k has a behaviour among b_key[:pos] / among the latest
    `window` of them, b_key[max(pos - window, 0):pos].
    """
    pos = np.asarray(pos, dtype=np.int64)
    ever = np.zeros((len(pos), len(keys)), dtype=bool)
    recent = np.zeros_like(ever)
    for k, t in enumerate(np.asarray(keys).tolist()):
        idx = np.flatnonzero(b_key == t)
        if len(idx) == 0:
            continue
        j = np.searchsorted(idx, pos, side="left") - 1  # the topic's last behaviour before the sample
        ever[:, k] = j >= 0
        recent[:, k] = ever[:, k] & (idx[np.maximum(j, 0)] >= pos - window)
    return ever, recent


def target_codes(s_topic: np.ndarray, topics: np.ndarray, ever: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """(S,) int8 evidence code of each sample's target: NOT_INTEREST (its topic is none of the user's
    interests), IN_WINDOW, BEYOND_WINDOW (seen, but only before the latest `window` behaviours) or UNSEEN (an
    interest with no behaviour yet)."""
    match = np.asarray(s_topic)[:, None] == np.asarray(topics)[None, :]  # interests have distinct topics
    has = match.any(axis=1)
    k = match.argmax(axis=1)
    rows = np.arange(len(k))
    e, r = ever[rows, k], recent[rows, k]
    return np.where(~has, NOT_INTEREST, np.where(r, IN_WINDOW, np.where(e, BEYOND_WINDOW, UNSEEN))).astype(np.int8)


def window_terms(aff: np.ndarray, act: np.ndarray, dorm: np.ndarray, fav: np.ndarray,
                 known: np.ndarray) -> dict[str, np.ndarray]:
    """The interest terms of the click model (streams.click_logit) using only the interests in `known`.

    All (S, K): aff = weight_k * cos(c_k, v_item), act / dorm = interest active / dormant at the sample,
    fav = the item's author is the interest's favourite, known = the interest may be used. With `known` all
    True these are the stored truth terms a_cur, a_far, fav_cur, fav_far."""
    a, d = act & known, dorm & known
    fav_cur = (fav & a).any(axis=1)
    return {"a_cur": np.where(a, aff, 0.0).max(axis=1, initial=0.0).astype(np.float64),
            "a_far": np.where(d, aff, 0.0).max(axis=1, initial=0.0).astype(np.float64),
            "fav_cur": fav_cur.astype(np.float64), "fav_far": ((fav & d).any(axis=1) & ~fav_cur).astype(np.float64)}


def expected_auc(p: np.ndarray, scores: np.ndarray) -> float:
    """AUC of `scores` expected when each label is Bernoulli(p) (ties count half): the sampled-label AUC
    without its label noise. NaN when p is all 0 or all 1."""
    p, s = np.asarray(p, np.float64), np.asarray(scores, np.float64)
    order = np.argsort(s, kind="stable")
    p, s = p[order], s[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_g = np.add.reduceat(p, starts) if len(p) else np.zeros(0)
    neg_g = np.add.reduceat(1.0 - p, starts) if len(p) else np.zeros(0)
    self_pairs = float(np.sum(p * (1.0 - p)))  # a sample is never paired with itself
    neg_below = np.cumsum(neg_g) - neg_g
    tie = pos_g * neg_g
    tie_self = np.add.reduceat(p * (1.0 - p), starts) if len(p) else np.zeros(0)
    num = float(np.sum(pos_g * neg_below) + 0.5 * np.sum(tie - tie_self))
    den = float(p.sum() * (1.0 - p).sum() - self_pairs)
    return num / den if den > 0 else float("nan")


def sampled_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Plain AUC with average ranks for ties (as scikit-learn); NaN with one class only."""
    from scipy.stats import rankdata

    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(np.asarray(scores, np.float64))
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _test_mask(ds: Dataset, ts: np.ndarray) -> np.ndarray:
    m = np.zeros(len(ts), dtype=bool)
    for d in ds.eval_days:
        m |= d.test_mask(ts)
    return m


def _read(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    return pq.read_table(path, columns=columns).to_pandas()


def measure_premise(root: str | Path, window: int = WINDOW) -> dict[str, Any]:
    """The premise of the generated world at `root` on its test samples (every evaluation day's hour 23).

    Raises ValueError for a dataset without ground truth (imported data has no truth/ to measure from).
    """
    from twinv2.data.generate.config import WorldConfig
    from twinv2.data.generate.items import ItemWorld
    from twinv2.data.generate.streams import click_logit
    from twinv2.data.generate.users import Interests

    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    ds = Dataset(root)
    truth = ds.root / "truth"
    if ds.manifest.get("source") != "generated" or not (truth / "calibration.json").is_file():
        raise ValueError(f"{ds.root}: the premise is measured from a generated world's truth/; this dataset "
                         f"has none (source {ds.manifest.get('source')!r})")
    cfg = from_dict(WorldConfig, ds.manifest["config"], where=f"{ds.root}/manifest.json config")
    bias = float(json.loads((truth / "calibration.json").read_text())["bias"])
    world = ItemWorld.load(ds.root, cfg.zipf_exponent)
    first_eval = ds.eval_days[0].start_ms
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("code", "source", "label", "p_true", "p_life",
                                                          "p_window", "p_no_far", "p_full", "user_id",
                                                          "code_topic")}
    # Evidence by interest needs truth/behaviours row-aligned with behaviours/: worlds made before it existed,
    # or whose behaviours grew since (nearline appends), fall back to topic evidence.
    by_interest = all(
        (truth / "behaviours" / f"part-{s:05d}.parquet").is_file()
        and pq.ParquetFile(truth / "behaviours" / f"part-{s:05d}.parquet").metadata.num_rows
        == pq.ParquetFile(ds.shard_path("behaviours", s)).metadata.num_rows for s in range(ds.n_shards))
    window_days, lengths = [], []
    for shard in range(ds.n_shards):
        smp = _read(ds.shard_path("samples", shard))
        imp = _read(truth / "impressions" / f"part-{shard:05d}.parquet")
        ints = _read(truth / "interests" / f"part-{shard:05d}.parquet")
        beh = _read(ds.shard_path("behaviours", shard), ["user_id", "item_id", "ts"])
        b_uid, b_ts = beh["user_id"].to_numpy(), beh["ts"].to_numpy()
        b_topic = world.topic[beh["item_id"].to_numpy() - 1].astype(np.int64)
        if by_interest:
            b_int = _read(truth / "behaviours" / f"part-{shard:05d}.parquet", ["interest"])["interest"].to_numpy()
        u_start = np.searchsorted(b_uid, np.unique(b_uid), side="left")
        users = np.unique(b_uid)
        bounds = dict(zip(users.tolist(), zip(u_start.tolist(), np.r_[u_start[1:], len(b_uid)].tolist())))
        # History reach before the first evaluation day: how many days the latest `window` behaviours span.
        for u, (a, b) in bounds.items():
            cut = a + int(np.searchsorted(b_ts[a:b], first_eval, side="left"))
            if cut > a:
                lengths.append(cut - a)
                window_days.append((first_eval - b_ts[max(cut - window, a)]) / DAY_MS)
        test = _test_mask(ds, smp["ts"].to_numpy())
        if not test.any():
            continue
        smp, imp = smp[test], imp[test]
        for uid, rows in smp.groupby("user_id", sort=True).indices.items():
            s, t = smp.iloc[rows], imp.iloc[rows]
            mine = ints[ints["user_id"] == uid]
            it = Interests(**{c: mine[c].to_numpy() for c in ("kind", "topic", "strength", "start_ms", "end_ms",
                                                                 "period_ms", "phase_ms", "on_ms", "fav_author",
                                                                 "first_on_ms")})
            a, b = bounds.get(int(uid), (0, 0))
            s_ts, s_item = s["ts"].to_numpy(), s["item_id"].to_numpy() - 1
            pos = np.searchsorted(b_ts[a:b], s_ts, side="left")
            ever_t, recent_t = evidence(b_topic[a:b], pos, it.topic, window)
            if by_interest:
                ever, recent = evidence(b_int[a:b], pos, np.arange(len(it.topic)), window)
            else:
                ever, recent = ever_t, recent_t
            act = it.active(s_ts)
            dorm = it.dormant(s_ts, act)
            cent = world.topic_centroid[it.topic].T * it.weight.astype(np.float32)  # (D, K), as streams does
            aff = (np.asarray(world.latent[s_item]) @ cent).astype(np.float32)
            fav = world.author[s_item][:, None] == it.fav_author[None, :]
            rest = {k: t[k].to_numpy(np.float64) for k in ("pop", "rec")}
            stored = {k: t[k].to_numpy(np.float64) for k in ("a_cur", "a_far", "fav_cur", "fav_far")}
            everything = np.ones_like(ever)
            p = {"p_full": _sigmoid(click_logit({**window_terms(aff, act, dorm, fav, everything), **rest}, cfg, bias)),
                 "p_life": _sigmoid(click_logit({**window_terms(aff, act, dorm, fav, ever), **rest}, cfg, bias)),
                 "p_window": _sigmoid(click_logit({**window_terms(aff, act, dorm, fav, recent), **rest}, cfg, bias)),
                 "p_no_far": _sigmoid(click_logit({**stored, **rest, "a_far": 0 * rest["pop"],
                                                   "fav_far": 0 * rest["pop"]}, cfg, bias))}
            cols["code"].append(target_codes(world.topic[s_item], it.topic, ever, recent))
            cols["code_topic"].append(target_codes(world.topic[s_item], it.topic, ever_t, recent_t))
            cols["source"].append(t["source"].to_numpy())
            cols["label"].append(s["label"].to_numpy())
            cols["p_true"].append(s["p_true"].to_numpy(np.float64))
            cols["user_id"].append(s["user_id"].to_numpy())
            for k, v in p.items():
                cols[k].append(v)
    out = summarise_premise({k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}, window,
                            np.asarray(window_days), np.asarray(lengths))
    out["evidence"] = "interest" if by_interest else "topic"
    return out


def summarise_premise(c: dict[str, np.ndarray], window: int, window_days: np.ndarray,
                      lengths: np.ndarray) -> dict[str, Any]:
    """premise.json's body from per-test-sample columns (code, source, label, p_true, p_life, p_window,
    p_no_far) and per-user history reach (days the latest `window` behaviours span before the first
    evaluation day, and history lengths there)."""
    n = len(c["code"])

    def share(m: np.ndarray) -> float | None:
        return float(m.mean()) if len(m) else None

    def f(x: float) -> float | None:
        return None if x is None or not np.isfinite(x) else float(x)

    out: dict[str, Any] = {"window": window, "n_test_samples": n}
    if "p_full" in c:  # the truth recomputed from truth/ with every interest known must give back p_true
        out["recompute_max_abs_error"] = float(np.max(np.abs(c["p_full"] - c["p_true"]))) if n else 0.0
    for i, name in enumerate(CODE_NAMES):
        out[f"share_{name}"] = share(c["code"] == i)
    if "code_topic" in c:  # looser evidence: any behaviour of the target's topic, exploration included
        out["share_beyond_window_topic"] = share(c["code_topic"] == BEYOND_WINDOW)
    out["share_beyond_window_by_source"] = {
        src: share(c["code"][c["source"] == j] == BEYOND_WINDOW)
        for j, src in enumerate(("current", "dormant", "popular", "random"))}
    for name in ("p_true", "p_life", "p_window", "p_no_far"):
        key = name[2:]
        out[f"oracle_auc_{key}"] = f(sampled_auc(c["label"], c[name])) if n else None
        out[f"expected_auc_{key}"] = f(expected_auc(c["p_true"], c[name])) if n else None

    def diff(a: str, b: str) -> float | None:
        return None if out[a] is None or out[b] is None else out[a] - out[b]

    out["ceiling_auc"] = diff("oracle_auc_life", "oracle_auc_window")
    out["ceiling_expected_auc"] = diff("expected_auc_life", "expected_auc_window")
    out["far_terms_expected_auc"] = diff("expected_auc_true", "expected_auc_no_far")
    if len(window_days):
        heavy = lengths >= np.quantile(lengths, 1 - HEAVY_SHARE)
        out["window_days"] = {"median_all": float(np.median(window_days)),
                              "median_heavy": float(np.median(window_days[heavy])),
                              "heavy_min_length": int(lengths[heavy].min()),
                              "share_users_longer_than_window": float((lengths > window).mean())}
    else:
        out["window_days"] = None
    return out


def premise_path(root: str | Path) -> Path:
    return Path(root) / PREMISE_FILE


def write_premise(root: str | Path, window: int = WINDOW) -> dict[str, Any]:
    """Measure the premise of the generated world at `root` and write it to ROOT/premise.json."""
    body = measure_premise(root, window)
    write_sealed(premise_path(root), body)
    return body


def load_premise(root: str | Path) -> dict[str, Any] | None:
    """ROOT/premise.json, or None when the dataset has none (imported data); DataError naming it when damaged."""
    return read_sealed_if_present(premise_path(root), fix=REMEASURE)
