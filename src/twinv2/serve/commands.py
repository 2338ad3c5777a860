"""`twinv2 serve` and `twinv2 nearline`: argument parsing into configs, then the library.

`register(sub)` adds the two subcommands to the `twinv2` parser (`twinv2 bench serve` lives in bench/serve.py:
bench imports serve, never the reverse). Each command returns an exit code and raises ValueError with a
message for a bad argument (cli.main prints it and exits with 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def prefer_passive_omp() -> None:
    """Let idle OpenMP threads sleep instead of spin (OMP_WAIT_POLICY=PASSIVE) unless the user chose otherwise.

    Why: between the many small parallel ops of a request, spinning workers hold the cores that the request's
    own thread needs; on a busy 2-core box this made a (200, 64) x (64, 10000) matmul 16 ms instead of 2.5 ms
    and a request 20x slower. OpenMP reads the variable when torch loads, so this only acts before that.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cmd_serve(a: argparse.Namespace) -> int:
    prefer_passive_omp()
    import torch

    from twinv2.serve.app import Limits, create_app
    from twinv2.serve.projections import ProjectionCache
    from twinv2.serve.scorer import Scorer
    from twinv2.serve.server import serve_forever
    from twinv2.serve.store import ClusterStore

    if a.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {a.threads}")
    if a.poll_s <= 0:
        raise ValueError(f"--poll-s must be > 0, got {a.poll_s}")
    if not 0 <= a.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {a.port}")
    limits = Limits(max_candidates=a.max_candidates, max_body_bytes=a.max_body_bytes, concurrency=a.concurrency,
                    read_timeout_s=a.read_timeout_s)
    store = ClusterStore(a.store)
    if a.snapshot:
        version = store.load_snapshot(a.snapshot, progress=not a.quiet)
        print(f"cluster store {store.path}: serving snapshot version {version}")
    if a.load_only:
        return 0
    if store.version is None:
        raise ValueError(f"cluster store {a.store} holds no snapshot; pass --snapshot SNAPSHOT_DIR to load one")
    torch.set_num_threads(a.threads)
    cache = ProjectionCache(a.checkpoint)
    cache.start(a.poll_s)
    print(f"model {cache.current.version} from {cache.current.path}; watching {a.checkpoint} every {a.poll_s} s")
    app = create_app(Scorer(cache, store), limits)
    try:
        serve_forever(app, a.host, a.port, port_file=a.port_file, log_level=a.log_level,
                      read_timeout_s=limits.read_timeout_s)
    finally:
        cache.stop()
    return 0


def cmd_nearline(a: argparse.Namespace) -> int:
    prefer_passive_omp()
    from twinv2.config import from_dict, parse_overrides
    from twinv2.serve.nearline import NearlineConfig, run_nearline

    overrides = parse_overrides(a.set)
    if a.window_minutes is not None:
        overrides["window_minutes"] = a.window_minutes
    cfg = from_dict(NearlineConfig, overrides, where="nearline --set")
    state = run_nearline(a.dataset, a.checkpoint, a.inbox, a.out, cfg, snapshot=a.snapshot, store=a.store,
                         once=a.once, progress=not a.quiet)
    if state["processed_until"] is None:
        print(f"no samples in {a.inbox}/samples yet; nothing published to {Path(a.out)}")
    else:
        print(f"trained {state['samples_trained']} samples up to {state['processed_until']} (event time); "
              f"published {state['seq']} checkpoint(s) to {Path(a.out) / 'checkpoints'}, newest in "
              f"{Path(a.out) / 'LATEST'}; {state['late_samples']} late, {state['quarantined']} quarantined")
    return 0


def register(sub: Any) -> None:
    """Add `serve` and `nearline` to the `twinv2` subcommand parsers."""
    s = sub.add_parser("serve", help="serve TWIN-V2 over HTTP: POST /v1/score, GET /healthz, GET /metrics")
    s.add_argument("--checkpoint", required=True,
                   help="a checkpoint file, a `twinv2 train` run folder or a `twinv2 nearline` output folder; "
                        "watched, and a newer checkpoint is swapped in atomically")
    s.add_argument("--store", required=True, help="cluster store folder (LMDB; created if missing)")
    s.add_argument("--snapshot", help="load this cluster snapshot into the store and serve it")
    s.add_argument("--load-only", action="store_true", help="load --snapshot into the store and exit")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="0 = any free port (see --port-file)")
    s.add_argument("--port-file", help="write {host, port, pid} here as JSON once listening")
    s.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    s.add_argument("--concurrency", type=int, default=1, help="requests scored at once (default: 1)")
    s.add_argument("--poll-s", type=float, default=2.0, help="seconds between checks for a newer checkpoint")
    s.add_argument("--max-candidates", type=int, default=2000)
    s.add_argument("--max-body-bytes", type=int, default=1_000_000)
    s.add_argument("--read-timeout-s", type=float, default=30.0,
                   help="seconds a client may take to send a request's head, and again its body (408); default 30")
    s.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_serve)

    n = sub.add_parser("nearline", help="train incrementally on new sample/behaviour files in event-time "
                                        "windows and publish checkpoints for `twinv2 serve`")
    n.add_argument("dataset", help="the dataset the model was trained on (new behaviours are merged into it)")
    n.add_argument("--checkpoint", required=True, help="checkpoint to start from (file or run folder)")
    n.add_argument("--inbox", required=True,
                   help="folder with samples/ and behaviours/ subfolders of new Parquet or CSV files")
    n.add_argument("--out", required=True, help="publish folder: checkpoints/, LATEST, nearline_state.json")
    n.add_argument("--snapshot", help="cluster snapshot to start from (default: the latest complete one under "
                                      "DATASET/clusters taken before the first window)")
    n.add_argument("--store", help="cluster store to load each refreshed snapshot into (what the server reads)")
    n.add_argument("--window-minutes", type=float, help="event-time window (default: 8)")
    n.add_argument("--once", action="store_true", help="process what the inbox holds, then exit")
    n.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a NearlineConfig field")
    n.add_argument("--quiet", action="store_true")
    n.set_defaults(func=cmd_nearline)
