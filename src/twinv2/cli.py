"""The `twinv2` command line. Each subcommand parses its arguments into a config and calls a library function.

Errors a user can fix (bad files, bad values) are printed as one line and exit with status 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twinv2.schema import DataError, JobFailed

DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "kuairand"


def _config(cls: type, path: str | None, pairs: list[str] | None, **flags: Any) -> Any:
    """`cls` from the YAML file `path` (or the defaults), then `--set` pairs on top, then the command's own
    flags (those not None) on top of that. Unknown keys and bad values are a ValueError naming them."""
    from twinv2.config import from_dict, load_yaml, merge, parse_overrides

    overrides = merge(parse_overrides(pairs), {k: v for k, v in flags.items() if v is not None})
    if path:
        return load_yaml(cls, path, overrides)
    return from_dict(cls, overrides, where=cls.__name__)


def parse_time(value: str, dataset: Path | None = None) -> int:
    """A time given as epoch ms, an ISO date/datetime (UTC), or `eval:N` (the start of evaluation day N)."""
    v = value.strip()
    if v.lstrip("-").isdigit():
        return int(v)
    if v.startswith("eval:"):
        if dataset is None:
            raise ValueError(f"{value!r} needs a dataset")
        from twinv2.data.storage import Dataset

        days = Dataset(dataset).eval_days
        i = int(v[5:])
        if not 0 <= i < len(days):
            raise ValueError(f"{value!r}: the dataset has evaluation days 0..{len(days) - 1}")
        return days[i].start_ms
    import pandas as pd

    try:
        ts = pd.Timestamp(v)
    except ValueError as e:
        raise ValueError(f"cannot read {value!r} as a time (epoch ms, ISO date, or eval:N)") from e
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.value // 1_000_000)


# ---- subcommands ---------------------------------------------------------------------------------------
def cmd_generate(a: argparse.Namespace) -> int:
    from twinv2.config import merge, parse_overrides
    from twinv2.data.generate import WorldConfig, generate_world, preset

    if a.config:
        cfg = _config(WorldConfig, a.config, a.set, seed=a.seed, n_users=a.users)
    else:
        flags = {k: v for k, v in (("seed", a.seed), ("n_users", a.users)) if v is not None}
        cfg = preset(a.preset, **merge(parse_overrides(a.set), flags))
    out = Path(a.out or f"data/{a.preset}")
    root = generate_world(cfg, out, overwrite=a.overwrite, workers=a.workers, progress=not a.quiet)
    print(f"wrote dataset to {root}")
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    from twinv2.data.importers import import_kuairand, import_mapped
    from twinv2.data.importers.core import import_summary
    from twinv2.train.metrics import MIN_TEST_SAMPLES

    if a.source == "kuairand":
        share = 0.5 if a.max_quarantine_share is None else a.max_quarantine_share
        root = import_kuairand(a.src or DEFAULT_SHARED, a.out, layout=a.layout, n_shards=a.shards,
                               overwrite=a.overwrite, max_quarantine_share=share)
    else:
        if not a.mapping:
            raise ValueError("`twinv2 import mapped` needs --mapping FILE.yaml")
        root = import_mapped(a.mapping, a.out, n_shards=a.shards, overwrite=a.overwrite,
                             max_quarantine_share=a.max_quarantine_share)
    lines, warnings = import_summary(json.loads((Path(root) / "manifest.json").read_text()), MIN_TEST_SAMPLES)
    print("\n".join(lines))
    for w in warnings:
        print(f"twinv2: warning: {root}: {w}", file=sys.stderr)
    print(f"wrote dataset to {root}")
    return 0


def cmd_stats(a: argparse.Namespace) -> int:
    from twinv2.data.stats import compute_stats, format_stats, plot_stats
    from twinv2.data.storage import Dataset

    ds = Dataset(a.dataset)
    stats = compute_stats(ds)
    print(format_stats(stats))
    if a.json:
        _write_json(a.json, stats)
    if a.plot:
        for p in plot_stats(ds, stats, Path(a.plot)):
            print(f"wrote {p}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    import json as _json

    from twinv2.train.export import export_dataset

    root = export_dataset(a.dataset, a.out, a.format, max_len=a.max_len, overwrite=a.overwrite,
                          progress=not a.quiet)
    counts = _json.loads((root / "manifest.json").read_text())["counts"]
    print(f"exported {counts['train']} train, {counts['valid']} valid, {counts['test']} test samples "
          f"({a.format}, max_len {a.max_len})")
    print(f"wrote {a.format} export to {root}")
    return 0


def cmd_embed(a: argparse.Namespace) -> int:
    from twinv2.offline.embed import EmbedConfig, embed

    cfg = _config(EmbedConfig, a.config, a.set)
    embed(a.dataset, a.out, cfg, embeddings_file=a.embeddings, progress=not a.quiet)  # prints where it wrote
    return 0


def cmd_cluster(a: argparse.Namespace) -> int:
    from twinv2.offline.job import ClusterJobConfig, run_cluster_job

    cfg = _config(ClusterJobConfig, a.config, a.set, engine=a.engine, workers=a.workers, scheduler=a.scheduler,
                  variant=a.variant)
    snapshot = parse_time(a.snapshot_before, Path(a.dataset))
    embeddings = a.embeddings or str(Path(a.dataset) / "embeddings" / "item_embeddings.parquet")
    if not Path(embeddings).exists():
        raise ValueError(f"item embeddings not found at {embeddings}; run `twinv2 embed {a.dataset}` first "
                         f"or pass --embeddings FILE")
    out = run_cluster_job(a.dataset, snapshot, embeddings, cfg, out=a.out, base_snapshot=a.refresh_from,
                          progress=not a.quiet)
    print(f"wrote cluster snapshot to {out}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    if a.list:
        from twinv2.models.names import DISPLAY, MODELS

        for m in MODELS:
            print(f"{m:<18}{DISPLAY.get(m, m)}")
        return 0
    if not a.dataset:
        raise ValueError("`twinv2 train` needs a DATASET folder (or --list to list the models)")
    from twinv2.data.storage import Dataset
    from twinv2.train.metrics import summary_line
    from twinv2.train.run import train_one
    from twinv2.train.trainer import TrainConfig

    cfg = _config(TrainConfig, a.config, a.set, model=a.model, device=a.device)
    ds = Dataset(a.dataset)
    out = Path(a.out or f"runs/{ds.root.name}-{cfg.model}")
    _check_run_folder(out, cfg.model, a.overwrite)
    kw = dict(snapshots=a.snapshot or None, embeddings=a.embeddings, progress=not a.quiet)
    if a.nproc != 1:  # data-parallel: N local processes, one gloo group (train/distributed.py)
        from twinv2.train.distributed import launch

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(f"--nproc {a.nproc} under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}): "
                             f"let torchrun start the processes, or drop torchrun")
        result = launch(a.nproc, train_one, ds, cfg, out, threads=max(1, cfg.threads // max(a.nproc, 1)),
                        timeout_s=a.dist_timeout, **kw)[0]
    else:  # one process, or one rank of a torchrun job (RANK, WORLD_SIZE, ... in the environment)
        from twinv2.train.distributed import group_from_env

        from twinv2.train.trainer import resolve_device

        on_gpu = resolve_device(cfg.device).type == "cuda"
        with group_from_env("nccl" if on_gpu else "gloo", timeout_s=a.dist_timeout) as ranks:
            result = train_one(ds, cfg, out, **kw)
        if not ranks.is_main:
            return 0
    print(summary_line(result))
    print(f"wrote checkpoint and metrics to {out}")
    return 0


RUN_FILES = ("metrics.json", "checkpoint.pt", ".verified.json")  # besides predictions-day*.parquet (the last:
# the report's cache of verified checksums, data/checksum.py MARKER)


def _check_run_folder(out: Path, model: str, overwrite: bool) -> None:
    """Refuse (ValueError naming the folder and what is there) to train into a dataset folder or into another
    model's run, unless `overwrite`; with it, the other model's run files go first, so none of them lingers
    beside the new run. A rerun of the same model, or an empty or new folder, goes ahead."""
    if not out.is_dir():
        return
    manifest = out / "manifest.json"
    if manifest.is_file():
        fmt = _json_str(manifest, "format")
        if fmt and fmt.startswith("twinv2-") and not overwrite:
            raise ValueError(f"--out {out} is a twinv2 {fmt[len('twinv2-'):]} folder (manifest.json format "
                             f"{fmt!r}); a run would write its checkpoint and predictions among the data: choose "
                             f"another --out (or --overwrite to write there anyway)")
        return
    other = _run_model(out)
    if other is None or other == model:
        return
    if not overwrite:
        raise ValueError(f"--out {out} holds a run of model {other!r} (its metrics.json/checkpoint.pt), not "
                         f"{model!r}: choose another --out, or --overwrite to replace that run")
    if os.environ.get("RANK", "0") == "0":  # under torchrun one rank clears the folder, not every one
        for p in [*(out / n for n in RUN_FILES), *out.glob("predictions-day*.parquet")]:
            p.unlink(missing_ok=True)


def _json_str(path: Path, key: str) -> str | None:
    """The string at `key` of the JSON object in `path`; None when the file, the key or a string is missing."""
    try:
        v = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return v if isinstance(v, str) else None


def _run_model(out: Path) -> str | None:
    """The model of the run in `out`, from its metrics.json or else its checkpoint (a run killed before its
    last day has only the checkpoint); None when there is no run there."""
    m = _json_str(out / "metrics.json", "model")
    if m is not None:
        return m
    ck = out / "checkpoint.pt"
    if ck.is_file():
        from twinv2.train.checkpoint import load_checkpoint

        try:
            m = load_checkpoint(ck).get("model")
        except ValueError:  # unreadable, foreign or of another format: say so instead of guessing
            return "unknown (unreadable checkpoint.pt)"
        return m if isinstance(m, str) else "unknown"
    return None


def cmd_bench(a: argparse.Namespace) -> int:
    if a.what == "generate":
        from twinv2.bench.generate import bench_generate

        result = bench_generate(a.preset, out=Path(a.out) if a.out else None, workers=a.workers)
    elif a.what == "cluster":
        from twinv2.offline.table4 import bench_cluster, format_bench

        result = bench_cluster(a.dataset, a.embeddings, n_users=a.users, big_user=not a.no_big_user)
        print(format_bench(result))
    elif a.what == "train" and a.nproc != 1:
        from twinv2.bench.ddp import bench_ddp

        result = bench_ddp(a.nproc, lengths=tuple(a.lengths or (1_000,)), steps=a.steps)
    elif a.what == "train":
        from twinv2.bench.train import bench_train

        lengths = {"lengths": tuple(a.lengths)} if a.lengths else {}
        if a.models:
            lengths["models"] = tuple(a.models.split(","))
        if a.short_len is not None:
            lengths["short_lens"] = tuple(a.short_len)
        result = bench_train(steps=a.steps, device=a.device, **lengths)
    elif a.what == "serve":
        from twinv2.bench.serve import bench_serve

        result = bench_serve(**vars(a))
    else:  # pragma: no cover - argparse restricts choices
        raise ValueError(f"unknown benchmark {a.what!r}")
    if a.what != "cluster":
        print(json.dumps(result, indent=2, default=str))
    if a.json:
        _write_json(a.json, result)
    return 0


def cmd_experiment(a: argparse.Namespace) -> int:
    from twinv2.experiment.config import experiment_preset, load_experiment
    from twinv2.experiment.run import run_experiment

    if a.config and a.preset:
        raise ValueError("give --config FILE or --preset NAME, not both")
    cfg = load_experiment(a.config) if a.config else experiment_preset(a.preset or "demo")
    out = Path(a.out or f"out/{cfg.name}")
    t0 = time.time()
    report = run_experiment(cfg, out, progress=not a.quiet)
    print(f"experiment '{cfg.name}' finished in {time.time() - t0:.0f} s")
    print(f"  report       {report}  (+ report.html, figures/)")
    print(f"  runs         {out}/main/runs/<model>/metrics.json")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from twinv2.report import build_report, check_report

    path = build_report(a.experiment, a.out)
    problems = check_report(a.experiment, a.out)
    for p in problems:
        print(f"inconsistent: {p}", file=sys.stderr)
    print(f"wrote {path}")
    return 1 if problems else 0


def cmd_demo(a: argparse.Namespace) -> int:
    """`make demo`: the `demo` experiment (all eleven models, ablations, sweep, KuaiRand, report)."""
    a.config, a.preset = None, "demo"
    return cmd_experiment(a)


def _int_list(text: str, least: int = 1) -> list[int]:
    """`1000,10000` -> [1000, 10000], each >= `least` (argparse type: a bad item is an error naming it)."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not out or min(out) < least:
        raise argparse.ArgumentTypeError(f"expected integers >= {least}, got {text!r}")
    return out


def _write_json(path: str | Path, obj: dict[str, Any]) -> None:
    """A `--json` output: a sealed record (data/sealed.py), so the report can tell a damaged one."""
    from twinv2.data.sealed import write_sealed

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_sealed(path, json.loads(json.dumps(obj, default=str)))
    print(f"wrote {path}")


# ---- parser ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twinv2", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate a world with known ground truth")
    g.add_argument("--preset", default="small", help="tiny | small | paper (default: small)")
    g.add_argument("--config", help="YAML file of WorldConfig fields (instead of a preset)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a WorldConfig field (on top of "
                   "--config or the preset)")
    g.add_argument("--seed", type=int)
    g.add_argument("--users", type=int, help="number of users (overrides the preset)")
    g.add_argument("--out", help="dataset directory (default: data/<preset>)")
    g.add_argument("--workers", type=int, help="processes (default: min(2, cores))")
    g.add_argument("--overwrite", action="store_true")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("import", help="import KuaiRand logs or any CSV/Parquet via a YAML column mapping")
    i.add_argument("source", choices=["kuairand", "mapped"])
    i.add_argument("--layout", default="27k", choices=["27k", "1k"], help="KuaiRand layout (default: 27k)")
    i.add_argument("--src", help=f"KuaiRand folder (default: {DEFAULT_SHARED})")
    i.add_argument("--mapping", help="YAML column mapping (for `mapped`)")
    i.add_argument("--out", required=True, help="dataset directory")
    i.add_argument("--shards", type=int, default=4)
    i.add_argument("--overwrite", action="store_true")
    i.add_argument("--max-quarantine-share", type=float, help="stop when a file has more than this share of its "
                   "rows quarantined (default 0.5, or the mapping's max_quarantine_share)")
    i.set_defaults(func=cmd_import)

    s = sub.add_parser("stats", help="describe a dataset")
    s.add_argument("dataset")
    s.add_argument("--plot", metavar="DIR", help="write PNG plots here")
    s.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    s.set_defaults(func=cmd_stats)

    xp = sub.add_parser("export", help="write a dataset's samples and histories for other frameworks (FuxiCTR "
                        "LongCTR, or plain per-sample sequences)")
    xp.add_argument("dataset")
    xp.add_argument("--format", required=True, metavar="FORMAT", help="longctr (FuxiCTR LongCTR's user_info / "
                    "item_info / train / valid / test layout) | sequences (one row per sample, history inline)")
    xp.add_argument("--out", required=True, help="export folder (written beside it, then renamed into place)")
    xp.add_argument("--max-len", type=int, default=1000, help="history cap per sample, latest behaviours kept "
                    "(sequences: the lists; longctr: stores whole sequences and writes this into its config; "
                    "default 1000)")
    xp.add_argument("--overwrite", action="store_true", help="replace an earlier export there (only one holding "
                    "nothing but its own files)")
    xp.add_argument("--quiet", action="store_true", help="no progress bar (the lines naming the output stay)")
    xp.set_defaults(func=cmd_export)

    e = sub.add_parser("embed", help="train item embeddings K_s on the logs before the evaluation days")
    e.add_argument("dataset")
    e.add_argument("--out", help="output table (default: DATASET/embeddings/item_embeddings.parquet)")
    e.add_argument("--embeddings", help="use this externally supplied table instead of training")
    e.add_argument("--config", help="YAML of EmbedConfig fields")
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an EmbedConfig field "
                   "(on top of --config)")
    e.add_argument("--quiet", action="store_true", help="no progress bars (the line naming the output stays)")
    e.set_defaults(func=cmd_embed)

    c = sub.add_parser("cluster", help="compress each user's life cycle into virtual items (Algorithm 1)")
    c.add_argument("dataset")
    c.add_argument("--snapshot-before", required=True,
                   help="only behaviours before this time: epoch ms, ISO date (UTC) or eval:N")
    c.add_argument("--embeddings", help="item embeddings (default: DATASET/embeddings/item_embeddings.parquet)")
    c.add_argument("--engine", choices=["local", "dask"])
    c.add_argument("--scheduler", help="Dask scheduler address (default: a LocalCluster)")
    c.add_argument("--workers", type=int)
    c.add_argument("--variant", choices=["adaptive", "binary", "balanced_binary"])
    c.add_argument("--refresh-from", metavar="SNAPSHOT", help="re-cluster only users changed since this snapshot")
    c.add_argument("--out", help="snapshot folder (default: DATASET/clusters/before-<ts>)")
    c.add_argument("--config", help="YAML of ClusterJobConfig fields")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a ClusterJobConfig field "
                   "(on top of --config)")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_cluster)

    b = sub.add_parser("bench", help="benchmarks (each prints JSON; --json PATH writes it)")
    b.add_argument("--json", metavar="PATH", help="also write the result as JSON (also accepted after the name)")
    bs = b.add_subparsers(dest="what", required=True, metavar="{generate,cluster,train,serve}")

    def bench_parser(name: str, summary: str) -> argparse.ArgumentParser:
        q = bs.add_parser(name, help=summary)
        q.add_argument("--json", metavar="PATH", default=argparse.SUPPRESS, help="also write the result as JSON")
        q.set_defaults(func=cmd_bench)
        return q

    bg = bench_parser("generate", "world generation rate")
    bg.add_argument("--preset", default="small", help="world preset (default: small)")
    bg.add_argument("--out", help="where to write the world (default: a temporary folder)")
    bg.add_argument("--workers", type=int)
    bc = bench_parser("cluster", "the paper's Table 4: clustering variants on one set of users")
    bc.add_argument("--dataset", help="use this dataset's users (default: synthetic users)")
    bc.add_argument("--embeddings", help="item embeddings for --dataset")
    bc.add_argument("--users", type=int, default=50, help="users per variant")
    bc.add_argument("--no-big-user", action="store_true", help="skip the 10^6-behaviour user")
    bt = bench_parser("train", "training/inference samples/s of TWIN and TWIN-V2 (--nproc N: data-parallel "
                      "scaling)")
    bt.add_argument("--steps", type=int, default=8, help="timed steps per configuration")
    bt.add_argument("--nproc", type=int, default=1, help="N > 1: samples/s with 1 vs N processes and the scaling "
                    "efficiency (bench/ddp.py)")
    bt.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    bt.add_argument("--lengths", type=_int_list, help="GSU lengths, comma-separated (default: 1000,10000; "
                    "with --nproc: 1000)")
    bt.add_argument("--models", help="comma-separated (default: twin,twin_v2)")
    bt.add_argument("--short-len", type=lambda t: _int_list(t, 0), help="ModelConfig.short_len values, "
                    "comma-separated, run side by side (e.g. 0,50: the short term's cost; default: the config's 50)")
    bsv = bench_parser("serve", "online scoring latency and an HTTP load test")

    t = sub.add_parser("train", help="train and evaluate one model with the streaming five-day protocol")
    t.add_argument("dataset", nargs="?", help="dataset folder (twinv2 generate / import)")
    t.add_argument("--list", action="store_true", help="list the registered models and exit")
    t.add_argument("--model", help="a registered model name (default: twin_v2, or the --config file's; see "
                                   "--list)")
    t.add_argument("--snapshot", action="append", default=[], help="cluster snapshot folder(s); default: all "
                   "complete snapshots under DATASET/clusters")
    t.add_argument("--embeddings", help="item embeddings for SIM Cluster(+) (default: DATASET/embeddings/...)")
    t.add_argument("--out", help="run folder (default: runs/<dataset>-<model>); a dataset folder or another "
                                 "model's run there is refused")
    t.add_argument("--overwrite", action="store_true", help="train into --out even if it holds another model's "
                   "run (its files are removed first) or is a dataset folder")
    t.add_argument("--config", help="YAML of TrainConfig fields (model_cfg: {...} holds every model "
                                    "hyper-parameter)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a TrainConfig field, on top of --config; dotted keys reach nested ones, "
                        "e.g. model_cfg.eta.n_bits=32")
    t.add_argument("--device", help="cpu, cuda, cuda:N or auto (the default: cuda when torch sees a GPU)")
    t.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (default 1; "
                   "TrainConfig.threads are split across them); or launch with `torchrun --nproc_per_node N -m "
                   "twinv2.cli train ...`")
    t.add_argument("--dist-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="with --nproc/torchrun: the longest a rank waits for the others before the job fails")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    x = sub.add_parser("experiment", help="the main job: data to report (Table 3/4, Figures 4/5, sweep, KuaiRand)")
    x.add_argument("--preset", choices=["demo", "small", "paper"], help="a built-in experiment (default: demo)")
    x.add_argument("--config", help="YAML of ExperimentConfig fields (see twinv2.experiment.config)")
    x.add_argument("--out", help="experiment folder (default: out/<name>); an unfinished one is resumed")
    x.add_argument("--quiet", action="store_true")
    x.set_defaults(func=cmd_experiment)

    r = sub.add_parser("report", help="(re)build EXP/report from an experiment folder")
    r.add_argument("experiment")
    r.add_argument("--out", help="report folder (default: EXP/report)")
    r.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="the `demo` experiment (what `make demo` runs)")
    d.add_argument("--out", default="out/demo")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    from twinv2.bench.serve import add_bench_args
    from twinv2.serve.commands import register

    register(sub)  # `twinv2 serve`, `twinv2 nearline`
    add_bench_args(bsv)  # `twinv2 bench serve` flags
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        rc = func(args)
        sys.stdout.flush()  # here, not at exit, so that a reader gone away is caught below
        return rc
    except BrokenPipeError:
        # `twinv2 stats D | head`: the reader left; end quietly, like any Unix tool. Not by restoring SIGPIPE's
        # default action (it was): that killed the process at a write to any dead pipe, a pool's queue to its
        # killed workers included, with no message (issue 14). Python's docs, signal, "Note on SIGPIPE".
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what the shell reported before
    except (DataError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"twinv2: error: {e}", file=sys.stderr)
        return 2
    except JobFailed as e:  # the machine's fault, not the input's: one line, the message says how to resume
        print(f"twinv2: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("twinv2: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
