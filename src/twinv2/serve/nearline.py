"""`twinv2 nearline`: keep the served model fresh (paper §3.4: a nearline trainer updates the model, the
offline job refreshes the clusters).

Input is an inbox folder of new files (ingest.py): `samples/` and `behaviours/`. Time is event time: samples
are grouped into windows [k·W, (k+1)·W) of their own `ts` (W = 8 minutes by default), and a window is trained
once the watermark (the latest event time in any file read) has passed its end by `lateness_minutes`. Windows
are trained in order, one pass over their samples in time order, continuing the model and optimizer (as the
streaming protocol does between days); every `publish_every` trained windows a checkpoint is published:
`checkpoints/ckpt-<seq>.pt`, then the `LATEST` pointer, each written atomically, so a server watching the
folder (`twinv2 serve --checkpoint OUT`) never reads half a file and swaps to it (projections.py).

Clusters: a window's samples read the snapshot taken at or before the window's start (the leak rule of
train/batching.py). Every `refresh_minutes` of event time, the new behaviours before the next window's start
are appended to the dataset and the offline job refreshes the snapshot from the previous one
(`run_cluster_job(base_snapshot=...)`): only users with new behaviours since that snapshot are clustered again,
the others are copied. The new snapshot is loaded into the cluster store when one is given; the server's next
request reads it (store.py switches versions atomically).

A sample that arrives after its window was trained is late: it is counted in the state (`late_samples`) and
reported, not trained on. Restarting resumes from `nearline_state.json` and the newest published checkpoint
(the optimizer's moments start afresh). Only cluster models (twin_v2) are supported: they are what `serve`
serves, and their sequence comes from snapshots rather than from raw behaviours. The model side (the
training step on each window, publishing) is train/nearline.py's `NearlineTrainer`.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from twinv2.data.sealed import read_sealed_if_present, write_sealed
from twinv2.data.storage import Dataset, EvalDay
from twinv2.schema import DataError
from twinv2.serve import ingest
from twinv2.train.checkpoint import LATEST, resolve_checkpoint

MINUTE_MS = 60_000
STATE = "nearline_state.json"


@dataclass(frozen=True)
class NearlineConfig:
    """Settings of `twinv2 nearline` (event-time minutes; 0 where noted turns a feature off).

    window_minutes: width of a training window (paper's deployment: minutes).
    lateness_minutes: how far the watermark must pass a window's end before it is trained.
    refresh_minutes: event time between cluster refreshes (0 = never refresh).
    publish_every: trained windows per published checkpoint.
    poll_s: seconds between inbox scans (wall clock).
    lr: learning rate; 0 = the checkpoint's TrainConfig.lr.
    batch_size: samples per step; 0 = the checkpoint's TrainConfig.batch_size.
    threads: torch intra-op threads.
    keep_checkpoints: published checkpoints kept (older ones are deleted).
    cluster_workers: processes of the refresh job (1 = in this process).
    """

    window_minutes: float = 8.0
    lateness_minutes: float = 0.0
    refresh_minutes: float = 1440.0
    publish_every: int = 1
    poll_s: float = 5.0
    lr: float = 0.0
    batch_size: int = 0
    threads: int = 2
    keep_checkpoints: int = 5
    cluster_workers: int = 1

    def __post_init__(self) -> None:
        if not self.window_minutes > 0:
            raise ValueError(f"window_minutes must be > 0, got {self.window_minutes}")
        for name in ("lateness_minutes", "refresh_minutes", "lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {self.poll_s}")
        for name in ("publish_every", "threads", "keep_checkpoints", "cluster_workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 0:
            raise ValueError(f"batch_size must be an integer >= 0 (0 = the checkpoint's), got {self.batch_size!r}")

    @property
    def window_ms(self) -> int:
        return round(self.window_minutes * MINUTE_MS)


class Nearline:
    """One nearline trainer over an inbox; `poll()` does one scan and trains every closed window."""

    def __init__(self, dataset: str | Path, checkpoint: str | Path, inbox: str | Path, out: str | Path,
                 cfg: NearlineConfig = NearlineConfig(), snapshot: str | Path | None = None,
                 store: str | Path | None = None, progress: bool = True) -> None:
        import torch

        from twinv2.offline.store import ClusterSnapshot
        from twinv2.train.nearline import NearlineTrainer

        if not isinstance(cfg, NearlineConfig):
            raise TypeError(f"cfg must be a NearlineConfig, got {type(cfg).__name__}")
        self.cfg, self.progress = cfg, progress
        self.ds = Dataset(dataset)
        self.inbox = Path(inbox)
        if not self.inbox.is_dir():
            raise ValueError(f"inbox folder not found: {self.inbox}")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = self._load_state()
        torch.set_num_threads(cfg.threads)
        source = self.out if (self.out / LATEST).is_file() else Path(checkpoint)  # resume from our own output
        self.trainer = NearlineTrainer(self.ds, resolve_checkpoint(source), cfg.lr, cfg.batch_size)
        snap = self.state.get("snapshot") or snapshot
        self.snapshot = ClusterSnapshot(snap) if snap else None
        if self.state.get("refreshed_until") is None and self.snapshot is not None:
            self.state["refreshed_until"] = self.snapshot.snapshot_ts
        self.store = None
        if store is not None:
            from twinv2.serve.store import ClusterStore

            self.store = ClusterStore(store)
        self.samples = pd.DataFrame()
        self.behaviours = pd.DataFrame()
        self._read: set[str] = set()
        self._trained_since_publish = 0

    # ---- state -------------------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        p = self.out / STATE
        base = {"processed_until": None, "refreshed_until": None, "snapshot": None, "seq": 0, "windows": 0,
                "samples_trained": 0, "late_samples": 0, "quarantined": 0, "files": {}, "refreshes": [],
                "config": asdict(self.cfg)}
        base.update(read_sealed_if_present(p, fix="move it away to start afresh from the latest checkpoint") or {})
        base["config"] = asdict(self.cfg)
        return base

    def _save_state(self) -> None:
        write_sealed(self.out / STATE, self.state)

    def _log(self, msg: str) -> None:
        if self.progress:
            print(f"[nearline] {msg}", file=sys.stderr, flush=True)

    @property
    def watermark(self) -> int | None:
        ts = [f["max_ts"] for f in self.state["files"].values() if f.get("max_ts") is not None]
        return max(ts) if ts else None

    # ---- reading -----------------------------------------------------------------------------------------
    def scan(self) -> int:
        """Read inbox files not read yet by this process; returns how many."""
        n = 0
        for table in ("samples", "behaviours"):
            for path in ingest.inbox_files(self.inbox, table):
                key = f"{table}/{path.name}"
                if key in self._read:
                    continue
                st = path.stat()
                sig = [st.st_size, st.st_mtime_ns]
                known = self.state["files"].get(key)
                if known is not None and known["sig"] != sig:
                    self._log(f"{key} changed after it was read; inbox files must not change (ignored)")
                    self._read.add(key)
                    continue
                until = self.state["processed_until"]
                if known is not None and table == "samples" and (known.get("max_ts") is None or
                                                                 (until is not None and known["max_ts"] < until)):
                    self._read.add(key)  # every sample in it was trained before a restart
                    continue
                self._read_file(key, path, table, sig, first_time=known is None)
                n += 1
        return n

    def _read_file(self, key: str, path: Path, table: str, sig: list[int], first_time: bool) -> None:
        self._read.add(key)
        try:
            rows, bad = ingest.read_table(path, table, self.ds.cross_features)
        except (DataError, ValueError, OSError) as e:
            self.state["files"][key] = {"sig": sig, "error": str(e), "max_ts": None}
            self._log(f"{key} rejected: {e}")
            self._save_state()
            return
        if first_time and len(bad):
            q = self.out / "quarantine.csv"
            bad.to_csv(q, mode="a", header=not q.exists(), index=False)
            self.state["quarantined"] += len(bad)
            self._log(f"{key}: {len(bad)} row(s) quarantined in {q}")
        max_ts = int(rows["ts"].max()) if len(rows) else None
        self.state["files"][key] = {"sig": sig, "rows": len(rows), "quarantined": len(bad), "max_ts": max_ts}
        if table == "samples":
            until = self.state["processed_until"]
            if until is not None:
                late = rows["ts"].to_numpy() < until
                if first_time and late.any():
                    self.state["late_samples"] += int(late.sum())
                    self._log(f"{key}: {int(late.sum())} late sample(s) before {until} not trained")
                rows = rows[~late]
            self.samples = pd.concat([self.samples, rows], ignore_index=True)
        else:  # appending is idempotent (duplicates are skipped), so a re-read after a restart is safe
            self.behaviours = pd.concat([self.behaviours, rows], ignore_index=True)
        self._save_state()

    # ---- windows -----------------------------------------------------------------------------------------
    def poll(self, flush: bool = False) -> int:
        """Scan the inbox and train every closed window (with `flush`, also the last open one); returns the
        number of windows processed."""
        self.scan()
        wm = self.watermark
        W = self.cfg.window_ms
        if self.state["processed_until"] is None:
            if len(self.samples) == 0:
                return 0
            self.state["processed_until"] = int(self.samples["ts"].min()) // W * W
        done = 0
        while wm is not None:
            a = self.state["processed_until"]
            b = a + W
            closed = b + int(self.cfg.lateness_minutes * MINUTE_MS) <= wm
            if not (closed or (flush and a <= wm)):
                break
            refreshed = self._refresh_if_due(a)
            trained = self._train_window(a, b)
            self.state["processed_until"] = b
            self.state["windows"] += 1
            if trained or refreshed:
                self._save_state()
            done += 1
        if flush and self._trained_since_publish:
            self._publish(self.state["processed_until"] - W, self.state["processed_until"], 0)
        self._save_state()
        return done

    def _train_window(self, a: int, b: int) -> bool:
        """Train on the samples of [a, b); True when there were any."""
        if len(self.samples) == 0:
            return False
        ts = self.samples["ts"].to_numpy()
        sel = (ts >= a) & (ts < b)
        df = self.samples[sel].sort_values(["ts", "user_id", "item_id"], kind="stable")
        self.samples = self.samples[~sel].reset_index(drop=True)
        if len(df) == 0:
            return False
        if self.snapshot is None:
            self.snapshot = self._initial_snapshot(a)
        loss = self.trainer.train_window(df, self.snapshot, a)
        self.state["samples_trained"] += len(df)
        self.state["last_loss"] = loss
        self._trained_since_publish += 1
        if self._trained_since_publish >= self.cfg.publish_every:
            self._publish(a, b, len(df))
        return True

    def _publish(self, a: int, b: int, n: int) -> None:
        self.state["seq"] += 1
        info = {"seq": self.state["seq"], "window_start": a, "window_end": b, "samples": n,
                "snapshot": str(self.snapshot.path) if self.snapshot else None, "published_at": time.time()}
        path = self.trainer.publish(self.out, self.state["seq"], info, self.cfg.keep_checkpoints)
        self._trained_since_publish = 0
        self._log(f"window [{a}, {b}): {n} samples, loss {self.state.get('last_loss', float('nan')):.4f}; "
                  f"published {path}")

    def _initial_snapshot(self, a: int):
        from twinv2.train.run import find_snapshots
        from twinv2.train.trainer import snapshot_for

        snap = snapshot_for(EvalDay(index=0, label="first window", start_ms=a), find_snapshots(self.ds))
        if snap is None:
            raise ValueError(f"no complete cluster snapshot under {self.ds.root / 'clusters'} taken at or before "
                             f"{a} (the first window); pass --snapshot or run `twinv2 cluster --snapshot-before {a}`")
        self.state["snapshot"] = str(snap.path)
        self.state["refreshed_until"] = snap.snapshot_ts
        return snap

    def _refresh_if_due(self, a: int) -> bool:
        """Append the behaviours before `a` and refresh the snapshot at `a` when `refresh_minutes` have passed."""
        from twinv2.offline.job import ClusterJobConfig, run_cluster_job
        from twinv2.offline.store import ClusterSnapshot

        refresh_ms = int(self.cfg.refresh_minutes * MINUTE_MS)
        if refresh_ms <= 0 or self.snapshot is None or len(self.behaviours) == 0:
            return False
        if a - int(self.state["refreshed_until"]) < refresh_ms:
            return False
        ts = self.behaviours["ts"].to_numpy()
        new = self.behaviours[ts < a]
        if len(new) == 0:
            return False
        t0 = time.perf_counter()
        added = ingest.append_behaviours(self.ds.root, new)
        self.behaviours = self.behaviours[ts >= a].reset_index(drop=True)
        embeddings = self.snapshot.manifest["embeddings"]["path"]
        path = run_cluster_job(self.ds.root, a, embeddings, ClusterJobConfig(workers=self.cfg.cluster_workers),
                               out=f"nearline-{a}", base_snapshot=self.snapshot.path, progress=False)
        self.snapshot = ClusterSnapshot(path)
        run = self.snapshot.manifest.get("last_run", {})
        entry = {"at": a, "snapshot": str(path), "appended": added["appended"], "duplicates": added["duplicates"],
                 "clustered_users": run.get("clustered_users"), "reused_users": run.get("reused_users"),
                 "seconds": round(time.perf_counter() - t0, 2)}
        if self.store is not None:
            entry["store_version"] = self.store.load_snapshot(self.snapshot)
        self.state["refreshes"].append(entry)
        self.state["snapshot"] = str(path)
        self.state["refreshed_until"] = a
        self._save_state()
        self._log(f"refreshed clusters at {a}: {entry['clustered_users']} user(s) re-clustered, "
                  f"{entry['reused_users']} reused -> {path}")
        return True

    # ---- loop --------------------------------------------------------------------------------------------
    def run(self, once: bool = False, stop: threading.Event | None = None) -> dict[str, Any]:
        stop = stop or threading.Event()
        while True:
            self.poll(flush=once)
            if once or stop.wait(self.cfg.poll_s):
                return self.state


def run_nearline(dataset: str | Path, checkpoint: str | Path, inbox: str | Path, out: str | Path,
                 cfg: NearlineConfig = NearlineConfig(), snapshot: str | Path | None = None,
                 store: str | Path | None = None, once: bool = False, stop: threading.Event | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Run the nearline trainer (see the module docstring) until `stop` is set, or once with `once`; returns
    its state (processed_until, seq, windows, samples_trained, late_samples, refreshes, ...)."""
    return Nearline(dataset, checkpoint, inbox, out, cfg, snapshot=snapshot, store=store,
                    progress=progress).run(once=once, stop=stop)
