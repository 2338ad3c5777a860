"""A synthetic experiment folder for the report tests: the tiny world as the dataset, fake but consistent runs.

Predictions score each of a day's samples (the whole day, not only hour 23: the tiny world's test hours are
too small for per-group GAUCs) with p_true plus model-specific noise, so the models' metrics differ and are
real functions of their prediction files; metrics.json is written from those predictions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from twinv2.data.sealed import write_sealed
from twinv2.data.stats import compute_stats
from twinv2.data.storage import Dataset
from twinv2.models.names import MODELS
from twinv2.train.metrics import auc, gauc, summarise  # the trainer's own, torch-free


def write_metrics(run_dir: Path, model: str, days: list[dict], seed: int = 0, extra: dict | None = None) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    body = {**summarise(days), "model": model, "config": {"model": model, "seed": seed, "model_cfg": {"seq_len": 0}},
            "days": days, **(extra or {})}
    (run_dir / "metrics.json").write_text(json.dumps(body, indent=1))
    return body


def write_predicted_run(run_dir: Path, model: str, ds: Dataset, noise: float, seed: int,
                        oracle: bool = True, n_days: int | None = None, keep_p_true: bool = True,
                        train_seed: int = 0, zero_shot_noise: float | None = None,
                        retrieval: dict | None = None) -> dict:
    """Predictions per day from p_true + noise, and the metrics.json that goes with them; `keep_p_true`: the
    prediction files carry p_true, as the trainer writes them (without it the report reads the dataset's).
    `zero_shot_noise`: also a `zero_shot` column (the zero-shot reference's score, p_true + that noise) and
    the per-day zero_shot_auc/gauc; `retrieval`: the metrics.json `retrieval` block of a two-stage model."""
    samples = ds.samples()
    rng = np.random.default_rng(seed)
    days = []
    for day in ds.eval_days[:n_days]:
        part = samples[(samples["ts"] >= day.start_ms) & (samples["ts"] < day.end_ms)]
        # Coarse scores (rounded) so that ties occur and the tie-breaking rule is exercised.
        # An imported log has no p_true: the labels, softened, stand in for it as the signal.
        base = part["p_true"].to_numpy() if "p_true" in part else 0.25 + 0.5 * part["label"].to_numpy()
        score = np.round(base + rng.normal(0, noise * (1 + 0.3 * day.index), len(part)), 2)
        cols = ["user_id", "item_id", "ts", "label"] + (["p_true"] if keep_p_true and "p_true" in part else [])
        pred = part[cols].assign(score=score, day=day.index)
        if zero_shot_noise is not None:
            pred["zero_shot"] = np.round(base + rng.normal(0, zero_shot_noise, len(part)), 2)
        run_dir.mkdir(parents=True, exist_ok=True)
        pred.to_parquet(run_dir / f"predictions-day{day.index}.parquet", index=False)
        y, u = pred["label"].to_numpy(), pred["user_id"].to_numpy()
        g, n_users = gauc(u, y, score)
        row = {"day": day.index, "label": day.label, "n_train": 1000 + day.index, "n_test": len(pred),
               "train_loss": 0.5, "train_seconds": 10.0 + seed % 7 + day.index,
               "train_samples_per_s": 900.0 + 37 * (seed % 11) + 5 * day.index,
               "eval_samples_per_s": 4000.0 + 101 * (seed % 13) - 7 * day.index,
               "auc": auc(y, score), "gauc": g, "gauc_users": n_users}
        if oracle and "p_true" in part:
            p = part["p_true"].to_numpy()
            row["oracle_auc"], row["oracle_gauc"] = auc(y, p), gauc(u, y, p)[0]
        if zero_shot_noise is not None:
            z = pred["zero_shot"].to_numpy()
            row["zero_shot_auc"], row["zero_shot_gauc"] = auc(y, z), gauc(u, y, z)[0]
        days.append(row)
    return write_metrics(run_dir, model, days, train_seed, {"retrieval": retrieval} if retrieval else None)


def retrieval_block(dormant_share: float, current_share: float = 0.5, k: int = 100) -> dict:
    """A metrics.json `retrieval` block (the trainer's schema): dormant targets' share falls with history length
    by less when `dormant_share` is high (a life-cycle model keeps the far past)."""
    groups = []
    for interest, base in (("current", current_share), ("dormant", dormant_share)):
        for j, history in enumerate(("all", "short", "medium", "long")):
            share = base if history == "all" else base * (1.1 - 0.1 * j)
            n = 600 if history == "all" else 200
            groups.append({"interest": interest, "history": history, "n": n, "share": round(share, 4),
                           "hit": round(min(1.0, 2.2 * share), 4)})
    groups += [{"interest": "all", "history": h, "n": 1200 if h == "all" else 400, "share": 0.4, "hit": 0.8}
               for h in ("all", "short", "medium", "long")]
    return {"groups": groups, "length_terciles": [1200.0, 5400.0], "n_samples": 2000, "n_interest_samples": 1200,
            "k": k}


# Two-stage models of the fixture and how much of a dormant interest their top-K keeps.
RETRIEVAL = {"sim_hard": 0.20, "eta": 0.12, "sim_cluster": 0.15, "sdim": 0.10, "sim_cluster_plus": 0.16,
             "sim_soft": 0.14, "twin": 0.18, "twin_v2": 0.30}
# The zero-shot reference's noise per model (None: no pre-trained vectors, no `zero_shot` column); Avg-Pooling's
# reference is better than the model, so one row reads "reference better".
ZERO_SHOT_NOISE = {"avg_pooling": 0.12, "sim_hard": None}


def write_value_run(run_dir: Path, model: str, aucs: list[float], gaucs: list[float], oracle=None) -> dict:
    days = [{"day": i, "label": f"d{i}", "n_train": 100, "n_test": 10, "train_loss": 0.5, "train_seconds": 2.0,
             "train_samples_per_s": 500.0 + i, "eval_samples_per_s": 2000.0 + i, "auc": a, "gauc": g,
             "gauc_users": 5} for i, (a, g) in enumerate(zip(aucs, gaucs))]
    return write_metrics(run_dir, model, days)


def cluster_bench() -> dict:
    rows = []
    for i, (variant, backend) in enumerate([("adaptive", "faiss"), ("binary", "faiss"), ("balanced_binary", "faiss"),
                                            ("adaptive (scikit-learn k-means++)", "sklearn")]):
        rows.append({"variant": variant, "backend": backend, "delta": 2 if "binary" in variant else "floor(n^0.3)",
                     "accuracy": 0.8 - 0.01 * i, "sec_per_user_median": 0.01 * (i + 1),
                     "sec_per_user_p90": 0.02 * (i + 1), "fit_sec_median": 0.005, "cpu_sec_per_user_median": 0.01,
                     "clusters_per_user": 100.0 + i, "mean_cluster_size": 10.0, "compression": 0.1 + 0.001 * i,
                     "bytes_before": 40_000.0, "bytes_after": 5_000.0 + i})
    return {"rows": rows, "big_user_seconds": 3.2, "big_user_cpu_seconds": 3.1, "big_user_T": 1_000_000,
            "setup": {"users": "synthetic: 5 users", "n_users": 5, "gamma": 20, "threads": 1},
            "targets": [{"name": "adaptive median seconds per user <= 0.050", "target": 0.05, "value": 0.01,
                         "met": True, "note": ""}], "all_targets_met": True}


def snapshot_manifest(snap_dir: Path, ds: Dataset, with_counts: bool = True) -> dict:
    """A cluster manifest like the job's; without counts, the report has to derive them."""
    ts = ds.eval_days[0].start_ms
    shards = {}
    for s in range(ds.n_shards):
        csr = ds.csr(s)
        n_before = int((np.asarray(csr.columns["ts"]) < ts).sum())
        e = {"shard": s, "file": f"part-{s:05d}.parquet", "sha256": "0" * 64, "bytes": 1000 + s, "seconds": 0.5 + s,
             "users": csr.n_users, "users_in_shard": csr.n_users}
        if with_counts:
            e.update(rows=n_before // 10, behaviours=n_before)
        shards[str(s)] = e
    m = {"format": "twinv2-clusters", "version": 1, "dataset": str(ds.root), "n_shards": ds.n_shards,
         "snapshot_ts": ts, "config": {"gamma": 20, "variant": "adaptive"}, "complete": True, "shards": shards,
         "last_run": {"seconds": 4.25, "engine": "local"}}
    snap_dir.mkdir(parents=True, exist_ok=True)
    (snap_dir / "manifest.json").write_text(json.dumps(m))
    return m


SWEEP_GAINS = {0.0: [0.002, -0.003, 0.001, -0.001, 0.0005], 0.5: [0.010, 0.012, 0.008, 0.011, 0.009],
               1.0: [0.020, 0.018, 0.022, 0.025, 0.019]}

# Each model's fake quality rises with its Table 3 position; the deployed pair (after TWIN-V2 in MODELS) is
# given TWIN's, so the fixture's best model stays TWIN-V2, as the report tests expect.
NOISE_RANK = {"twin_pair": 8}


def make_experiment(root: Path, world: Path, parts: tuple[str, ...] = ("meta", "main", "ablation", "bench",
                                                                        "sweep", "kuairand")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if "meta" in parts:
        write_sealed(root / "experiment.json", {
            "config": {"preset": "test", "world": {"name": "tiny"}, "models": list(MODELS)}, "seed": 7,
            "machine": {"platform": "Linux-test", "cpus": 2, "torch": "2.x", "python": "3.11"},
            "timings": {"generate": 2.5, "embed": 10.0, "cluster": 30.0, "train": 300.0, "report": 1.0},
            "started": "2024-01-01T00:00:00", "finished": "2024-01-01T00:06:00",
            "sections": {"main": "generated world (tiny)", "kuairand": "KuaiRand (test stand-in)"},
            "sweep": {"values": [0.0, 0.5, 1.0], "models": ["twin", "twin_v2"]}})
    if "main" in parts:
        main = root / "main"
        shutil.copytree(world, main / "dataset", ignore=shutil.ignore_patterns("*.csr"))
        ds = Dataset(main / "dataset")
        write_sealed(main / "stats.json", compute_stats(ds))
        snapshot_manifest(main / "dataset" / "clusters" / f"before-{ds.eval_days[0].start_ms}", ds)
        for i, m in enumerate(MODELS):
            write_predicted_run(main / "runs" / m, m, ds, noise=0.30 - 0.025 * NOISE_RANK.get(m, i),
                                seed=100 + i,
                                zero_shot_noise=ZERO_SHOT_NOISE.get(m, 0.32), retrieval=(
                                    retrieval_block(RETRIEVAL[m]) if m in RETRIEVAL else None))
        for m, i in (("twin", 8), ("twin_v2", 9)):  # two more training seeds of the headline pair
            for k in (1, 2):
                write_predicted_run(main / "runs" / f"{m}-seed{k}", m, ds, noise=0.30 - 0.025 * i,
                                    seed=300 + 10 * i + k, train_seed=k)
        if "ablation" in parts:
            for j, v in enumerate(("no_ln_gsu", "no_ln_esu", "no_ln_both")):
                write_predicted_run(main / "ablation" / v, "twin_v2", ds, noise=0.08 + 0.03 * j, seed=200 + j,
                                    keep_p_true=False)
        if "bench" in parts:
            write_sealed(main / "cluster_bench.json", cluster_bench())
            write_sealed(root / "bench_train.json", {"rows": [
                {"model": "twin_v2", "gsu_length": 10_000, "batch": 256, "threads": 2, "train_samples_per_s": 1200.0,
                 "infer_samples_per_s": 5000.0, "peak_rss_gb": 2.5}], "targets_met": {}})
    if "sweep" in parts:
        for v, gains in SWEEP_GAINS.items():
            base = [0.70 + 0.001 * i for i in range(5)]
            d = root / "sweep" / f"fps-{v}" / "runs"
            write_value_run(d / "twin", "twin", base, [b - 0.05 for b in base])
            write_value_run(d / "twin_v2", "twin_v2", [b + g / 2 for b, g in zip(base, gains)],
                            [b - 0.05 + g for b, g in zip(base, gains)])
            if v > 0:  # fps 0 has no premise.json: its row reads "not measured"
                write_premise(root / "sweep" / f"fps-{v}" / "dataset", share=0.05 * v, ceiling=0.02 * v)
    if "kuairand" in parts:
        k = root / "kuairand"
        k.mkdir(parents=True, exist_ok=True)
        write_sealed(k / "stats.json", compute_stats(Dataset(world)))
        for i, m in enumerate(("din", "sim_soft", "twin", "twin_v2")):
            write_value_run(k / "runs" / m, m, [0.75 + 0.001 * i + 0.0002 * d for d in range(5)],
                            [0.65 + 0.0015 * i - 0.0001 * d for d in range(5)])
    return root


def write_premise(dataset: Path, share: float, ceiling: float) -> dict:
    """A premise.json with twinv2.data.premise's keys (only the dataset folder: the report reads no more)."""
    body = {"window": 10_000, "n_test_samples": 500, "share_beyond_window": share, "ceiling_auc": ceiling,
            "ceiling_expected_auc": ceiling * 0.9, "oracle_auc_life": 0.80, "oracle_auc_window": 0.80 - ceiling,
            "expected_auc_life": 0.82, "expected_auc_window": 0.82 - 0.9 * ceiling, "evidence": "interest",
            "window_days": {"median_all": 700.0, "median_heavy": 90.0, "heavy_min_length": 20_000,
                            "share_users_longer_than_window": 0.1}}
    dataset.mkdir(parents=True, exist_ok=True)
    write_sealed(dataset / "premise.json", body)
    return body


def predictions(run_dir: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(run_dir.glob("predictions-day*.parquet"))],
                     ignore_index=True)


def imported_copy(world: Path, root: Path) -> Path:
    """The generated `world` re-imported as a user's own log (`twinv2 import mapped`): no p_true, no premise, no
    generator truth. One CSV row per impression: the behaviours before the first evaluation day (history only,
    `hist` = 1) and the evaluation days' samples (`hist` = label: a clicked impression is watched, as in
    KuaiRand), split by the mapping's last 5 days."""
    import yaml

    from twinv2.data.importers import import_mapped

    ds = Dataset(world)
    start = ds.eval_days[0].start_ms
    beh = pd.concat([pd.read_parquet(p) for p in sorted((world / "behaviours").glob("part-*.parquet"))])
    beh = beh[beh["ts"] < start].assign(label=1, hist=1)
    s = ds.samples()
    items = ds.items()
    dur = items.set_index("item_id")["duration_ms"]
    s = s.assign(play_ms=0, duration_ms=s["item_id"].map(dur).fillna(0).astype(np.int64), hist=s["label"])
    cols = ["user_id", "item_id", "ts", "label", "play_ms", "duration_ms", "hist"]
    src = root / "log"
    src.mkdir(parents=True, exist_ok=True)
    pd.concat([beh[cols], s[cols]]).sort_values(["user_id", "ts"]).to_csv(src / "log.csv", index=False)
    items.to_csv(src / "items.csv", index=False)
    mapping = {"name": "tiny-imported", "inputs": ["log.csv"],
               "columns": {"user": "user_id", "item": "item_id", "time": "ts", "time_unit": "ms", "label": "label",
                           "play": "play_ms", "duration": "duration_ms", "duration_unit": "ms"},
               "cross_features": [], "sample_features": [],
               "split": {"last_days": len(ds.eval_days), "day_offset_hours": 0, "history": "hist == 1"},
               "items": {"path": "items.csv", "item": "item_id", "author": "author_id", "tag": "tag",
                         "duration": "duration_ms", "duration_unit": "ms"}}
    (src / "map.yaml").write_text(yaml.safe_dump(mapping, sort_keys=False))
    return Path(import_mapped(src / "map.yaml", root / "dataset", n_shards=ds.n_shards))


def make_own_data_experiment(root: Path, dataset: Path) -> Path:
    """An experiment folder as `twinv2 experiment` leaves it with `dataset:` (used in place, so no
    EXP/main/dataset; experiment.json keeps the path at config.experiment.dataset): stats, a snapshot, every
    model's predicted run (no p_true: no oracle), the ablations and a Table 4 on the data's own users."""
    ds = Dataset(dataset)
    root.mkdir(parents=True, exist_ok=True)
    write_sealed(root / "experiment.json", {
        "config": {"experiment": {"name": "own", "dataset": str(dataset)}}, "seed": 0,
        "machine": {"platform": "Linux-test", "cpus": 2}, "timings": {"train": 10.0},
        "started": "2024-01-01T00:00:00", "finished": "2024-01-01T00:01:00",
        "sections": {"main": f"dataset {dataset}", "kuairand": "KuaiRand "}, "sweep": {"values": [], "models": []}})
    main = root / "main"
    main.mkdir()
    write_sealed(main / "stats.json", compute_stats(ds))
    snapshot_manifest(dataset / "clusters" / f"before-{ds.eval_days[0].start_ms}", ds)
    for i, m in enumerate(MODELS):
        write_predicted_run(main / "runs" / m, m, ds, noise=0.30 - 0.025 * NOISE_RANK.get(m, i), seed=100 + i,
                            zero_shot_noise=0.32)
    for j, v in enumerate(("no_ln_gsu", "no_ln_esu", "no_ln_both")):
        write_predicted_run(main / "ablation" / v, "twin_v2", ds, noise=0.1 + 0.03 * j, seed=200 + j)
    bench = cluster_bench()
    bench["setup"].update(users=f"{dataset}: the 5 longest histories", T_min=900, T_max=2_500, T_median=1_200)
    bench["targets"][0]["name"] = "adaptive median seconds per user <= 0.050 at T=14,500, one core"
    write_sealed(main / "cluster_bench.json", bench)
    return root
