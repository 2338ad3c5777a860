"""`twinv2 experiment`: data → embeddings → clusters → eleven models → ablations → sweep → KuaiRand → report.

Folder layout (what twinv2.report reads):

    EXP/experiment.json                 resolved config, seed, machine, per-stage seconds, start/finish
    EXP/main/dataset/                   the world (or a link-free copy of nothing: `dataset:` is used in place)
    EXP/main/stats.json, cluster_bench.json, runs/<model>/, runs/<model>-seed<k>/, ablation/<variant>/
    EXP/sweep/fps-<value>/dataset/, runs/<model>/
    EXP/kuairand/dataset/, stats.json, runs/<model>/
    EXP/report/report.md, report.html, figures/

Every stage is skipped when its output is already complete (a dataset manifest, an embedding table, a
snapshot whose manifest lists every part, a run's metrics.json), so an interrupted experiment resumes where it
stopped; rerunning a finished one only rebuilds the report. A folder made with a different config is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from twinv2.data.sealed import read_sealed, write_sealed
from twinv2.data.storage import Dataset
from twinv2.schema import DataError
from twinv2.experiment.config import ABLATIONS, ExperimentConfig

KUAIRAND_DEFAULT = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "kuairand"


class Experiment:
    def __init__(self, cfg: ExperimentConfig, out: str | Path, progress: bool = True) -> None:
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.resolved = cfg.resolve()
        self.record_path = self.out / "experiment.json"
        self.record = self._open_record()
        self.stages = self._plan()

    # ---- bookkeeping ------------------------------------------------------------------------------------
    def _open_record(self) -> dict[str, Any]:
        if self.record_path.exists():
            old = read_sealed(self.record_path, fix=f"start the experiment in a new --out (or delete {self.out})")
            # The experiment's own settings must match; the resolved stage configs are those of the first run
            # (a stage config gaining a defaulted field in a later version does not block a resume).
            if old.get("config", {}).get("experiment") != json.loads(json.dumps(self.resolved["experiment"])):
                raise ValueError(f"{self.out} holds an experiment with a different config; use another --out "
                                 f"(or delete {self.out}) to run this one")
            return old
        return {"config": self.resolved, "seed": self.cfg.seed, "name": self.cfg.name, "machine": machine(),
                "timings": {}, "started": _now(), "finished": None,
                "sections": {"main": self._main_label(),
                             "kuairand": f"KuaiRand {self.cfg.kuairand_layout.upper()}"},
                "sweep": {"values": list(self.cfg.sweep), "models": list(self.cfg.sweep_models)}}

    def _main_label(self) -> str:
        if self.cfg.dataset:
            return f"dataset {self.cfg.dataset}"
        w = self.cfg.world_config()
        return f"generated world '{self.cfg.name}' ({w.n_users:,} users, {w.n_items:,} items)"

    def _save(self) -> None:
        write_sealed(self.record_path, self.record)

    def _say(self, msg: str) -> None:
        if self.progress:
            print(f"[experiment] {msg}", flush=True)

    # ---- plan ---------------------------------------------------------------------------------------------
    def _plan(self) -> list[tuple[str, Callable[[], Any]]]:
        c, main = self.cfg, self.out / "main"
        main_ds = Path(c.dataset) if c.dataset else main / "dataset"
        st: list[tuple[str, Callable[[], Any]]] = []
        if not c.dataset:
            st.append(("generate main", lambda: self._generate(c.world_config(), main_ds)))
        st += [("stats main", lambda: self._stats(main_ds, main / "stats.json")),
               ("embed main", lambda: self._embed(main_ds)),
               ("cluster main", lambda: self._cluster(main_ds))]
        if c.cluster_bench_users:
            st.append(("cluster bench", lambda: self._cluster_bench(main_ds, main / "cluster_bench.json")))
        for m in c.models:
            st.append((f"train main/{m}", lambda m=m: self._train(main_ds, m, main / "runs" / m)))
        for k in range(1, c.seeds):  # the headline models again with other training seeds (the seed spread)
            for m in (m for m in c.seed_models if m in c.models):
                st.append((f"train main/{m}-seed{k}",
                           lambda m=m, k=k: self._train(main_ds, m, main / "runs" / f"{m}-seed{k}", seed=c.seed + k)))
        if c.ablation and "twin_v2" in c.models:
            for name, att in ABLATIONS.items():
                st.append((f"train ablation/{name}",
                           lambda name=name, att=att: self._train(main_ds, "twin_v2", main / "ablation" / name, att)))
        for v in c.sweep:
            root = self.out / "sweep" / f"fps-{float(v)}"
            ds = root / "dataset"
            st += [(f"generate sweep {v}", lambda v=v, ds=ds: self._generate(c.sweep_config(v), ds)),
                   (f"embed sweep {v}", lambda ds=ds: self._embed(ds)),
                   (f"cluster sweep {v}", lambda ds=ds: self._cluster(ds))]
            for m in c.sweep_models:
                st.append((f"train sweep {v}/{m}", lambda ds=ds, m=m, root=root: self._train(ds, m, root / "runs" / m)))
            for k in range(1, c.seeds):  # the sweep's verdict needs the seed spread too (issue 11: >= 3 seeds)
                for m in (m for m in c.sweep_models if m in c.seed_models):
                    st.append((f"train sweep {v}/{m}-seed{k}", lambda ds=ds, m=m, k=k, root=root: self._train(
                        ds, m, root / "runs" / f"{m}-seed{k}", seed=c.seed + k)))
        if c.kuairand_layout:
            kr = self.out / "kuairand"
            st += [("import kuairand", lambda: self._import(kr / "dataset")),
                   ("stats kuairand", lambda: self._stats(kr / "dataset", kr / "stats.json")),
                   ("embed kuairand", lambda: self._embed(kr / "dataset")),
                   ("cluster kuairand", lambda: self._cluster(kr / "dataset"))]
            for m in c.models:
                st.append((f"train kuairand/{m}", lambda m=m: self._train(kr / "dataset", m, kr / "runs" / m)))
        st.append(("report", self._report))
        return st

    def run(self) -> Path:
        if self.cfg.dataset:  # before anything is written: a wrong path is a one-line error naming the key
            try:
                Dataset(self.cfg.dataset)
            except (DataError, OSError) as e:
                raise ValueError(f"experiment `dataset: {self.cfg.dataset}`: {e}") from None
        self.out.mkdir(parents=True, exist_ok=True)
        self.record["stage_order"] = [name for name, _ in self.stages]  # experiment.json sorts `timings`' keys
        if self.cfg.dataset:  # where the report finds a dataset given as a relative path, from any folder
            self.record["dataset_path"] = str(Path(self.cfg.dataset).resolve())
        self._save()
        t_all = time.perf_counter()
        for i, (name, fn) in enumerate(self.stages, 1):
            self._say(f"stage {i}/{len(self.stages)}: {name}")
            t0 = time.perf_counter()
            skipped = fn() == "skipped"
            if skipped:
                self._say(f"  {name}: already complete, skipped")
            else:
                self.record["timings"][name] = time.perf_counter() - t0
            self._save()  # after every stage: the report (last) reads the timings from experiment.json
        self.record["finished"] = _now()
        self._save()
        report = self.out / "report" / "report.md"
        self._say(f"done in {time.perf_counter() - t_all:.0f} s; report: {report}")
        return report

    # ---- stages -------------------------------------------------------------------------------------------
    def _generate(self, world: Any, root: Path) -> str | None:
        from twinv2.data.generate import generate_world

        if (root / "manifest.json").exists():
            return "skipped"
        generate_world(world, root, overwrite=True, progress=self.progress)
        return None

    def _import(self, root: Path) -> str | None:
        from twinv2.data.importers import import_kuairand

        if (root / "manifest.json").exists():
            return "skipped"
        src = Path(self.cfg.kuairand_src) if self.cfg.kuairand_src else KUAIRAND_DEFAULT
        if not src.is_dir():
            raise ValueError(f"KuaiRand folder not found at {src}; set kuairand_src, or kuairand: none to skip")
        import_kuairand(src, root, layout=self.cfg.kuairand_layout, overwrite=True)
        return None

    def _stats(self, root: Path, path: Path) -> str | None:
        from twinv2.data.stats import compute_stats

        if path.exists():
            return "skipped"
        path.parent.mkdir(parents=True, exist_ok=True)  # EXP/main/ does not exist yet when `dataset:` is used
        write_sealed(path, compute_stats(Dataset(root)))
        _ensure_premise(Dataset(root))
        return None

    def _embed(self, root: Path) -> str | None:
        from twinv2.offline.embed import embed

        if (root / "embeddings" / "item_embeddings.parquet").exists():
            return "skipped"
        embed(root, None, self.cfg.embed_config(), progress=self.progress)
        return None

    def _cluster(self, root: Path) -> str | None:
        from twinv2.offline.job import run_cluster_job, snapshot_name
        from twinv2.train.run import find_snapshots

        ds = Dataset(root)
        # Snapshots at day starts only, so no day sees its future (the trainer takes the latest one at or
        # before each day's start): one before the first warm-up day (those train-only days use it), and one
        # before each evaluation day ("daily") or before the first only ("once"). Each is refreshed from the
        # one before it: users without new behaviours keep their clusters (offline/job.py `base_snapshot`).
        days = ds.eval_days if self.cfg.cluster_cadence == "daily" else ds.eval_days[:1]
        cuts = sorted({ds.first_train_day_ms, *(d.start_ms for d in days)})
        have = {s.snapshot_ts for s in find_snapshots(ds)}
        if have >= set(cuts):
            return "skipped"
        base = None
        for cut in cuts:
            if cut not in have:
                run_cluster_job(root, cut, None, self.cfg.cluster_config(), base_snapshot=base,
                                progress=self.progress)
            base = snapshot_name(cut)
        return None

    def _cluster_bench(self, root: Path, path: Path) -> str | None:
        from twinv2.offline.table4 import bench_cluster

        if path.exists():
            return "skipped"
        result = bench_cluster(root, root / "embeddings" / "item_embeddings.parquet",
                               n_users=self.cfg.cluster_bench_users, big_user=False, seed=self.cfg.seed,
                               progress=self.progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_sealed(path, result)
        return None

    def _train(self, root: Path, model: str, out: Path, attention: dict[str, Any] | None = None,
               seed: int | None = None) -> str | None:
        from twinv2.train.metrics import summary_line
        from twinv2.train.run import train_one

        if (out / "metrics.json").exists():
            return "skipped"
        r = train_one(Dataset(root), self.cfg.train_config(model, attention, seed), out, progress=self.progress)
        self._say(f"  {out.relative_to(self.out)}: {summary_line(r)}")
        return None

    def _report(self) -> None:
        from twinv2.report import build_report, check_report

        build_report(self.out)
        problems = check_report(self.out)
        if problems:
            raise ValueError("the report disagrees with the runs' metrics.json:\n  " + "\n  ".join(problems))


def _ensure_premise(ds: Dataset) -> None:
    """DATASET/premise.json for a generated world that lacks it (generate_world writes it; a world made by an
    older version may not have it). The report reads it; imported data has no truth to measure from."""
    from twinv2.data.premise import premise_path, write_premise

    if ds.manifest.get("source") == "generated" and not premise_path(ds.root).exists():
        write_premise(ds.root)


def run_experiment(cfg: ExperimentConfig, out: str | Path, progress: bool = True) -> Path:
    """Run (or resume) the experiment `cfg` in `out`; returns the report's path."""
    return Experiment(cfg, out, progress).run()


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
