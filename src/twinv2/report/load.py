"""Read an experiment folder (written by `twinv2 experiment`) into typed records; missing parts become None.

Nothing here computes a number for the report: it only finds and parses files. A file that exists but cannot
be read is recorded in `problems` (shown in the report) instead of raising, so one bad file never hides the
rest of the report.

Damage is different: a run's metrics.json carries the checksum of each prediction file (`outputs`) and of its
own body (`metrics_sha256`, train/metrics.py), and a mismatch raises DataError naming the file (`twinv2 report`
exits 2) rather than building a report from changed numbers. Runs written before those fields existed carry
neither and are read as they are. The experiment's small records (experiment.json, stats.json,
cluster_bench.json, bench_train.json) are sealed records (data/sealed.py) and the cluster snapshots' manifests
carry their own checksum: each is checked, and a damaged one raises DataError naming it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinv2.data.checksum import MARKER, VerifiedMarker, verify_files
from twinv2.data.sealed import check_seal, read_json_file, read_sealed_if_present
from twinv2.data.storage import manifest_sha256
from twinv2.models.names import DISPLAY, MODELS  # torch-free: the one list of models
from twinv2.schema import DataError
from twinv2.train.metrics import METRICS_SHA256, OUTPUTS

ABLATIONS = ("no_ln_gsu", "no_ln_esu", "no_ln_both")
ABLATION_DISPLAY = {"full": "TWIN-V2 (full)", "no_ln_gsu": "no ln n in GSU", "no_ln_esu": "no ln n in ESU",
                    "no_ln_both": "no ln n in GSU and ESU"}
_PRED = re.compile(r"predictions-day(\d+)\.parquet$")
# Extra training seeds of a model: runs/<model>-seed<k>/ beside runs/<model>/ (the base run, its config's seed).
SEED_RUN = re.compile(r"(?P<model>.+)-seed(?P<seed>\d+)")


def display_name(model: str) -> str:
    return DISPLAY.get(model, ABLATION_DISPLAY.get(model, model))


def model_order(names) -> list[str]:
    """The registry's order (the paper's Table 3 order), unknown names after it, sorted."""
    known = [m for m in MODELS if m in names]
    return known + sorted(n for n in names if n not in MODELS)


def read_snapshot_manifest(path: Path) -> dict[str, Any]:
    """A cluster snapshot's manifest.json, its own checksum checked as offline/store.read_manifest checks it
    (the report may not import offline: it reads outputs only); DataError naming it when damaged."""
    fix = "delete the snapshot folder and run the same `twinv2 cluster` command again"
    m = read_json_file(path, fix)
    check_seal(path, m, fix, field="manifest_sha256", required=not isinstance(m, dict) or m.get("version") != 1)
    return m


RESUME = "delete it and resume the experiment (`twinv2 experiment` with the same config and --out rebuilds it)"
RERUN = "rerun the training of this run (`twinv2 train ... --out RUN --overwrite`, or delete the run folder and " \
        "resume the experiment)"


def read_metrics(path: Path, problems: list[str]) -> Any:
    """A run's metrics.json (None when missing, an unreadable one noted in `problems`); one that carries
    checksums (or once did: their field names are in its bytes) must match them: a damaged one raises
    DataError naming it."""
    if not path.is_file():
        return None
    try:
        raw = path.read_bytes()
    except OSError as e:
        problems.append(f"{path}: unreadable ({e})")
        return None
    sealed = any(f'"{k}"'.encode() in raw for k in (METRICS_SHA256, OUTPUTS))  # two fields far apart in the file
    try:
        m = json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        if sealed:
            raise DataError(f"{path}: unreadable ({str(e)[:120]}): the file is damaged; {RERUN}") from None
        problems.append(f"{path}: unreadable ({e})")
        return None
    if isinstance(m, dict) and (sealed or METRICS_SHA256 in m or OUTPUTS in m):
        if m.get(METRICS_SHA256) != manifest_sha256(m, METRICS_SHA256):
            raise DataError(f"{path}: checksum mismatch ({METRICS_SHA256}): the file is damaged or was edited after "
                            f"it was written; {RERUN}")
        out = m.get(OUTPUTS)
        if not isinstance(out, dict) or not all(isinstance(e, dict) for e in out.values()):
            raise DataError(f"{path}: '{OUTPUTS}' is not a map of file name to {{bytes, sha256}}; {RERUN}")
    return m


def day_values(metrics: dict[str, Any], key: str) -> dict[int, float]:
    """{day index: value} of one per-day metric of a metrics.json body (NaN where missing or null)."""
    out = {}
    for i, d in enumerate(metrics.get("days") or []):
        v = d.get(key)
        out[int(d.get("day", i))] = float("nan") if v is None else float(v)
    return out


@dataclass
class Run:
    """One training run: metrics.json and the per-day prediction files beside it."""

    name: str
    dir: Path
    metrics: dict[str, Any]
    _verified: bool = field(default=False, repr=False, compare=False)

    @property
    def days(self) -> list[dict[str, Any]]:
        return list(self.metrics.get("days") or [])

    def day_values(self, key: str) -> dict[int, float]:
        return day_values(self.metrics, key)

    def prediction_files(self) -> list[Path]:
        """The run's prediction files, in day order. A run whose metrics.json lists them (`outputs`) gives only
        those, each checked against its checksum first (once per change of the file: the `.verified.json`
        marker); a damaged or missing one raises DataError naming it."""
        listed = self.metrics.get(OUTPUTS)
        if isinstance(listed, dict):
            expected = {n: e for n, e in listed.items() if _PRED.search(n)}
            if not self._verified:
                verify_files({n: self.dir / n for n in expected}, expected, VerifiedMarker(self.dir / MARKER),
                             self.dir / "metrics.json", RERUN)
                self._verified = True
            files = [self.dir / n for n in expected]
        else:  # written before runs recorded their outputs: whatever is there
            files = [p for p in self.dir.glob("predictions-day*.parquet") if _PRED.search(p.name)]
        return sorted(files, key=lambda p: int(_PRED.search(p.name).group(1)))

    def predictions(self) -> pd.DataFrame | None:
        """All days' predictions (user_id, item_id, ts, label, score, day), or None if there are none."""
        files = self.prediction_files()
        if not files:
            return None
        parts = []
        for p in files:
            df = pd.read_parquet(p)
            if "day" not in df.columns:
                df["day"] = int(_PRED.search(p.name).group(1))
            parts.append(df)
        return pd.concat(parts, ignore_index=True)


def load_run(run_dir: Path, problems: list[str]) -> Run | None:
    m = read_metrics(run_dir / "metrics.json", problems)
    if m is None:
        return None
    if not isinstance(m, dict) or not isinstance(m.get("days"), list):
        problems.append(f"{run_dir / 'metrics.json'}: no per-day results ('days')")
        return None
    run = Run(name=run_dir.name, dir=run_dir, metrics=m)
    run.prediction_files()  # checked now, so damage stops the report whichever parts read them
    return run


def load_runs(parent: Path, problems: list[str], names=None) -> dict[str, Run]:
    """Runs under `parent` (one folder each with a metrics.json), in the registry's order."""
    if not parent.is_dir():
        return {}
    found = {}
    for d in parent.iterdir():
        if d.is_dir() and (names is None or d.name in names):
            r = load_run(d, problems)
            if r is not None:
                found[d.name] = r
    return {k: found[k] for k in model_order(found)} if names is None else \
        {k: found[k] for k in names if k in found}


@dataclass
class Section:
    """One dataset's part of the experiment (main, kuairand or one sweep value)."""

    key: str
    label: str
    root: Path
    dataset: Path | None
    stats: dict[str, Any] | None
    runs: dict[str, Run]
    ablation: dict[str, Run] = field(default_factory=dict)
    seeds: dict[str, dict[int, Run]] = field(default_factory=dict)  # model -> {seed: run}, base run included
    cluster_bench: dict[str, Any] | None = None
    snapshots: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.runs and self.stats is None and self.dataset is None and self.cluster_bench is None


def load_section(root: Path, key: str, label: str, problems: list[str],
                 external_dataset: str | None = None) -> Section | None:
    """`external_dataset`: the dataset folder when the experiment used an existing one (config `dataset`)
    instead of generating EXP/<section>/dataset."""
    if not root.is_dir():
        return None
    ds = root / "dataset"
    if not (ds / "manifest.json").is_file() and external_dataset:
        ds = Path(external_dataset)
    dataset = ds if (ds / "manifest.json").is_file() else None
    snaps = []
    if dataset is not None:
        for mf in sorted((dataset / "clusters").glob("*/manifest.json")):
            snaps.append((mf.parent, read_snapshot_manifest(mf)))
    runs, seeds = split_seeds(load_runs(root / "runs", problems))
    sec = Section(key=key, label=label, root=root, dataset=dataset,
                  stats=read_sealed_if_present(root / "stats.json", RESUME),
                  runs=runs, seeds=seeds,
                  ablation=load_runs(root / "ablation", problems, names=ABLATIONS),
                  cluster_bench=read_sealed_if_present(root / "cluster_bench.json", RESUME),
                  snapshots=snaps)
    return None if sec.empty else sec


def run_seed(run: Run) -> int | None:
    seed = (run.metrics.get("config") or {}).get("seed")
    return int(seed) if isinstance(seed, (int, float)) else None


def split_seeds(runs: dict[str, Run]) -> tuple[dict[str, Run], dict[str, dict[int, Run]]]:
    """(the runs without their `<model>-seed<k>` copies, {model: {seed: run}} for models with such copies);
    the base run counts under its config's seed. A seed folder whose model has no base run stays a run."""
    base = {k: r for k, r in runs.items() if not SEED_RUN.fullmatch(k) or SEED_RUN.fullmatch(k)["model"] not in runs}
    seeds: dict[str, dict[int, Run]] = {}
    for k, r in runs.items():
        m = SEED_RUN.fullmatch(k)
        if m and m["model"] in base:
            group = seeds.setdefault(m["model"], {})
            b = base[m["model"]]
            group.setdefault(run_seed(b) if run_seed(b) is not None else -1, b)
            group[int(m["seed"])] = r
    return base, {k: dict(sorted(v.items())) for k, v in seeds.items()}


def _sweep_value(name: str) -> float | None:
    m = re.fullmatch(r"fps-(.+)", name)
    if not m:
        return None
    try:
        return float(m.group(1))
    except ValueError:
        return None


@dataclass
class Experiment:
    root: Path
    meta: dict[str, Any]
    main: Section | None
    kuairand: Section | None
    sweep: dict[float, Section]
    bench_train: dict[str, Any] | None
    problems: list[str]

    def rel(self, path: Path) -> str:
        """A path relative to the experiment folder (what tables.json stores, so the folder can move)."""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)


def external_dataset(meta: dict[str, Any]) -> str | None:
    """The dataset folder an experiment used in place (ExperimentConfig `dataset`), or None when it generated
    its own: experiment.json's `dataset_path` (the absolute path the run used), else the configured value at
    config.experiment.dataset (config.dataset in hand-made folders), a relative one read from the working
    folder."""
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    own = cfg.get("experiment") if isinstance(cfg.get("experiment"), dict) else {}
    for value in (meta.get("dataset_path"), own.get("dataset"), cfg.get("dataset")):
        if isinstance(value, str) and value:
            return str(Path(value).resolve())
    return None


def load_experiment(exp_dir: str | Path) -> Experiment:
    root = Path(exp_dir)
    if not root.is_dir():
        raise ValueError(f"experiment folder not found: {root}")
    problems: list[str] = []
    meta = read_sealed_if_present(root / "experiment.json", "run the experiment again in a new folder") or {}
    labels = meta.get("sections") or {}
    main = load_section(root / "main", "main", labels.get("main", "main"), problems, external_dataset(meta) or None)
    kuairand = load_section(root / "kuairand", "kuairand", labels.get("kuairand", "KuaiRand"), problems)
    sweep: dict[float, Section] = {}
    sweep_dir = root / "sweep"
    if sweep_dir.is_dir():
        for d in sweep_dir.iterdir():
            v = _sweep_value(d.name)
            if v is not None and d.is_dir():
                s = load_section(d, f"sweep/{d.name}", f"far_past_signal = {d.name[4:]}", problems)
                if s is not None:
                    sweep[v] = s
    sweep = dict(sorted(sweep.items()))
    bench = read_sealed_if_present(root / "bench_train.json", "run `twinv2 bench train --json` again")
    return Experiment(root=root, meta=meta, main=main, kuairand=kuairand, sweep=sweep, bench_train=bench,
                      problems=problems)


def finite(values) -> np.ndarray:
    a = np.asarray(list(values), dtype=np.float64)
    return a[np.isfinite(a)]
