"""Confidence intervals for the report, from the runs' prediction files (train/significance.py does the maths).

- Test set of a run = its predictions-day*.parquet, pooled over the evaluation days. Pooled AUC = the AUC of
  all those samples; pooled GAUC = per (user, day) group (one test hour, as the protocol's GAUC), weighted by
  the group's sample count.
- 95% CI: bootstrap over users (N_BOOT resamples, seed SEED); a user brings every day of theirs. A difference
  A − B uses the samples both runs scored (matched on day, user_id, item_id, ts), one resample for both.
- MRD (minimum resolvable difference) = 1.96 × the SE of the paired difference; "not resolved" when the CI
  contains 0 (see significance.py's module doc for why 1.96 and not 2.8).
- Two score columns of the same files (a model's `score` and its zero-shot reference's `zero_shot`) are a
  paired comparison too: `diff(..., score_a="score", score_b="zero_shot")`.
- Expected AUC/GAUC: under p_true (generated data), from the prediction files' `p_true` column or, for runs
  written before the trainer kept it, from the dataset's samples matched on (user_id, item_id, ts).

Every record names its files (`sources`, relative to the experiment folder) so that check.py recomputes it with
the same functions; results are deterministic for given files, N_BOOT and SEED.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinv2.train import significance as sig
from twinv2.train.metrics import auc, gauc

N_BOOT = 1000
SEED = 0
KEYS = ["day", "user_id", "item_id", "ts"]
SAMPLE_KEYS = ["user_id", "item_id", "ts"]


def read_predictions(files: list[Path]) -> pd.DataFrame:
    parts = []
    for p in files:
        df = pd.read_parquet(p)
        if "day" not in df.columns:
            df["day"] = int(Path(p).name.removeprefix("predictions-day").removesuffix(".parquet"))
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    # A repeated key (the same impression twice) pairs with its own repeat in the other run, in file order.
    df["occ"] = df.groupby(KEYS, sort=False).cumcount()
    return df


def _groups(df: pd.DataFrame) -> np.ndarray:
    """(user, day) group codes: GAUC's unit, one user's samples in one test hour."""
    return pd.MultiIndex.from_arrays([df["user_id"].to_numpy(), df["day"].to_numpy()]).factorize()[0]


class Power:
    """Loads prediction files once and shares one user resample per test set (cached by the users drawn)."""

    def __init__(self, root: Path, n_boot: int = N_BOOT, seed: int = SEED, dataset: Path | None = None) -> None:
        self.root, self.n_boot, self.seed, self.dataset = Path(root), n_boot, seed, dataset
        self._pred: dict[tuple[str, ...], pd.DataFrame] = {}
        self._draws: dict[bytes, sig.UserDraws] = {}
        self._reps: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._samples: pd.DataFrame | None = None

    # ---- inputs ---------------------------------------------------------------------------------------------
    def predictions(self, sources: list[str]) -> pd.DataFrame:
        key = tuple(sources)
        if key not in self._pred:
            self._pred[key] = read_predictions([self.root / s for s in sources])
        return self._pred[key]

    def draws(self, users: np.ndarray) -> sig.UserDraws:
        u = np.unique(users)
        k = u.tobytes()
        if k not in self._draws:
            self._draws[k] = sig.draw_users(u, self.n_boot, self.seed)
        return self._draws[k]

    def _replicates(self, sources: tuple[str, ...], score: str, df: pd.DataFrame, draws: sig.UserDraws):
        key = (sources, score, draws.users.tobytes(), len(df))
        if key not in self._reps:
            u, y, s = df["user_id"].to_numpy(), df["label"].to_numpy(), df[score].to_numpy(np.float64)
            self._reps[key] = (sig.boot_auc(draws, u, y, s), sig.boot_gauc(draws, u, y, s, _groups(df)))
        return self._reps[key]

    def p_true(self, df: pd.DataFrame) -> tuple[np.ndarray | None, str | None]:
        """p_true per prediction row: its own column, else the dataset's samples; (None, None) without it."""
        if "p_true" in df.columns and df["p_true"].notna().all():
            return df["p_true"].to_numpy(np.float64), "predictions"
        if self.dataset is None:
            return None, None
        if self._samples is None:
            self._samples = _dataset_p_true(self.dataset)
        if self._samples is None:
            return None, None
        m = df[SAMPLE_KEYS].merge(self._samples, on=SAMPLE_KEYS, how="left")["p_true"].to_numpy(np.float64)
        return (m, "dataset") if np.isfinite(m).all() else (None, None)

    # ---- records --------------------------------------------------------------------------------------------
    def run(self, name: str, sources: list[str], score: str = "score") -> dict[str, Any]:
        """One run's pooled AUC/GAUC with 95% CIs, and its expected AUC/GAUC under p_true."""
        df = self.predictions(sources)
        rec: dict[str, Any] = {"kind": "boot_run", "run": name, "score": score, "sources": list(sources),
                               "n_boot": self.n_boot, "seed": self.seed}
        if score == "p_true":
            p, _ = self.p_true(df)
            if p is None:
                return {**rec, "missing": "no p_true for these predictions"}
            df = df.assign(p_true=p)
        elif score not in df.columns:
            return {**rec, "missing": f"the prediction files have no {score!r} column"}
        elif df[score].isna().any():  # rows the score's producer could not score (a reference without vectors)
            rec["n_no_score"] = int(df[score].isna().sum())
            df = df[df[score].notna()]
        if len(df) == 0:
            return {**rec, "missing": "the prediction files are empty"}
        d = self.draws(df["user_id"].to_numpy())
        ra, rg = self._replicates(tuple(sources), score, df, d)
        y, s, g = df["label"].to_numpy(), df[score].to_numpy(np.float64), _groups(df)
        nu, ns = len(d.users), len(df)
        rec["auc"] = sig.interval(auc(y, s), ra, nu, ns).as_dict()
        rec["gauc"] = sig.interval(gauc(g, y, s)[0], rg, nu, ns).as_dict()
        p, frm = self.p_true(df)
        rec["p_true_from"] = frm
        if frm == "dataset":  # check.py needs the dataset to recompute the expected AUC
            rec["p_true_dataset"] = _rel(self.dataset, self.root)
        rec["expected_auc"] = sig.expected_auc(p, s) if p is not None else None
        rec["expected_gauc"] = sig.expected_gauc(g, p, s)[0] if p is not None else None
        return rec

    def diff(self, a: str, b: str, sources_a: list[str], sources_b: list[str],
             users: list[int] | None = None, score_a: str = "score", score_b: str = "score") -> dict[str, Any]:
        """A − B in pooled AUC and GAUC on the samples both scored (of `users` only, when given): paired
        bootstrap over users, and DeLong. `score_a` / `score_b` name the score columns (two columns of the same
        files compare a model with its zero-shot reference); rows where either score is missing are left out."""
        rec: dict[str, Any] = {"kind": "boot_diff", "a": a, "b": b, "sources_a": list(sources_a),
                               "sources_b": list(sources_b), "n_boot": self.n_boot, "seed": self.seed}
        if (score_a, score_b) != ("score", "score"):
            rec["score_a"], rec["score_b"] = score_a, score_b
        pa, pb = self.predictions(sources_a), self.predictions(sources_b)
        for col, df, side in ((score_a, pa, "A"), (score_b, pb, "B")):
            if col not in df.columns:
                return {**rec, "missing": f"{side}'s prediction files have no {col!r} column"}
        if users is not None:
            rec["users"] = [int(x) for x in users]
            keep = np.asarray(rec["users"], np.int64)
            pa, pb = pa[pa["user_id"].isin(keep)], pb[pb["user_id"].isin(keep)]
        na, nb = len(pa), len(pb)
        pa, pb = pa[pa[score_a].notna()], pb[pb[score_b].notna()]
        if na - len(pa) or nb - len(pb):
            rec["n_no_score_a"], rec["n_no_score_b"] = na - len(pa), nb - len(pb)
        j = pa[KEYS + ["occ", "label", score_a]].rename(columns={score_a: "score"}).merge(
            pb[KEYS + ["occ", "label", score_b]].rename(columns={score_b: "score"}), on=KEYS + ["occ"],
            suffixes=("_a", "_b"))
        bad = j["label_a"] != j["label_b"]
        if bad.any():
            return {**rec, "missing": f"{int(bad.sum())} matched samples have different labels in the two runs"}
        if len(j) == 0:
            return {**rec, "missing": "the two runs share no test sample"}
        rec["n_only_a"], rec["n_only_b"] = len(pa) - len(j), len(pb) - len(j)
        y, u, g = j["label_a"].to_numpy(), j["user_id"].to_numpy(), _groups(j)
        sa, sb = j["score_a"].to_numpy(np.float64), j["score_b"].to_numpy(np.float64)
        d = self.draws(u)
        whole = users is None and len(j) == len(pa) == len(pb) == na == nb  # the same test set: reuse each
        if whole:                                                             # run's replicates
            ra_a, rg_a = self._replicates(tuple(sources_a), score_a, pa, d)
            ra_b, rg_b = self._replicates(tuple(sources_b), score_b, pb, d)
        else:
            ra_a, rg_a = sig.boot_auc(d, u, y, sa), sig.boot_gauc(d, u, y, sa, g)
            ra_b, rg_b = sig.boot_auc(d, u, y, sb), sig.boot_gauc(d, u, y, sb, g)
        nu, ns = len(d.users), len(j)
        for m, point, reps in (("auc", auc(y, sa) - auc(y, sb), ra_a - ra_b),
                               ("gauc", gauc(g, y, sa)[0] - gauc(g, y, sb)[0], rg_a - rg_b)):
            iv = sig.interval(point, reps, nu, ns)
            rec[m] = {**iv.as_dict(), "verdict": sig.verdict(iv.ci_low, iv.ci_high), "p": sig.normal_p(point, iv.se)}
        rec["delong"] = sig.delong_paired(y, sa, sb)
        return rec


def _dataset_p_true(dataset: Path) -> pd.DataFrame | None:
    import pyarrow.parquet as pq

    from twinv2.data.storage import Dataset

    ds = Dataset(dataset)
    first = ds.shard_path("samples", 0)
    if not first.exists() or "p_true" not in pq.read_schema(first).names:
        return None
    return ds.samples()[SAMPLE_KEYS + ["p_true"]].drop_duplicates(SAMPLE_KEYS)


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def verdict_text(v: str | None, a: str, b: str) -> str:
    """significance.verdict's words with the models' names."""
    return {"A better": f"{a} better", "B better": f"{b} better"}.get(v or "", "not resolved")
