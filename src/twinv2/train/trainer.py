"""The streaming five-day protocol (paper §4.1, DESIGN.md "Evaluation protocol").

Per evaluation day: train on the samples of hours 0–22 in time order, then test on hour 23 (a day's own
`EvalDay.test_hours` window: more hours for an imported sparse log); the model and
optimizer carry over to the next day, as a nearline trainer's would. AUC and GAUC are reported per day and as
mean ± std over the days; on generated data the oracle AUC/GAUC from `p_true` bound what any model can reach.
Loss (BCE), optimizer (Adam), threads, seeding and checkpoints live here, never on the model. Inside a
torch.distributed group (train/distributed.py) each rank trains and scores its share and rank 0 alone writes.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from twinv2.config import to_dict
from twinv2.data.checksum import file_entry
from twinv2.data.storage import Dataset, EvalDay, WarmupDay, json_default, manifest_sha256, write_json_atomic
from twinv2.models.embeddings import ItemVocab
from twinv2.models.frame import ItemTables, ModelConfig
from twinv2.models.registry import build_model, model_class
from twinv2.offline.store import ClusterSnapshot
from twinv2.train.batching import Batcher
from twinv2.train.checkpoint import resolved_config, save_checkpoint
from twinv2.train.distributed import (Ranks, SyncedOptimizer, backend as dist_backend, broadcast_state,
                                     evaluate_sharded, train_rows_sharded)
from twinv2.train.features import N_DUR, Features, duration_bucket
from twinv2.train.metrics import METRICS_SHA256, MIN_TEST_SAMPLES, OUTPUTS, auc, day_problem, gauc, summarise
from twinv2.train.optim import SplitAdam
from twinv2.train.retrieval import has_truth, kept_item_ids, retrieval_diagnostics
from twinv2.train.step import batches, train_rows
from twinv2.train.zero_shot import reference_model, zero_shot_scores


@dataclass(frozen=True)
class TrainConfig:
    model: str = "twin_v2"  # a name from models.registry.MODELS
    batch_size: int = 256  # the benchmark's batch; the paper's 8192 suits billions of samples, not ours
    lr: float = 3e-3  # Adam, every model. The paper's 5e-6 assumes 46B samples; a world of days gives a few
    #  hundred steps. From the neutral start (CTRModel.start_neutral) the step-0 model already ranks like its
    #  zero-shot reference, and 1e-2 spent the first day undoing it (demo, all samples, TWIN-V2 AUC 0.760 at
    #  1e-2 vs 0.775 at 3e-3; 0.746 at 1e-3 on 2,000 a day). Before that start, from random maps, 1e-2 beat 1e-3.
    threads: int = 2  # torch intra-op threads (this machine has 2 cores)
    device: str = "auto"  # "cpu", "cuda", "cuda:N", or "auto": cuda when torch sees a GPU (results then match
    #  the CPU's to float rounding; tests/train/test_device.py), else cpu
    seed: int = 0
    max_train_per_day: int = 0  # 0 = every training sample; N = a deterministic subsample of N per day
    eval_batch_size: int = 512
    passes_per_day: int = 1  # passes over each day's training hours before its test hour (1 = the paper's one
    #  streaming pass; more only helps worlds too small to learn in one, e.g. the tests' `tiny`; no leak either way)
    item_init: str = "auto"  # "embeddings": start the item tables from the `twinv2 embed` table (pre-trained on
    #  the log before the first evaluation day, so nothing leaks); "random"; "auto": embeddings when the table
    #  exists. Why pre-train: a five-day stream gives ~1 sample per item, too few to learn 200k id vectors from
    #  clicks alone; the paper's model has seen billions. Same setting for every model (metrics record it).
    model_cfg: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        model_class(self.model)  # unknown names fail here, naming the known ones
        if self.item_init not in ("auto", "embeddings", "random"):
            raise ValueError(f"item_init must be 'auto', 'embeddings' or 'random', got {self.item_init!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.batch_size < 1 or self.eval_batch_size < 1 or self.lr <= 0 or self.threads < 1 \
                or self.passes_per_day < 1:
            raise ValueError(f"bad TrainConfig: batch_size={self.batch_size}, eval_batch_size="
                             f"{self.eval_batch_size}, lr={self.lr}, threads={self.threads}, "
                             f"passes_per_day={self.passes_per_day}")


def resolve_device(name: str) -> torch.device:
    """TrainConfig.device as a torch device: "auto" is cuda when torch sees a GPU; asking for cuda without one
    is an error naming what torch sees."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: torch sees no CUDA GPU here (torch {torch.__version__}, "
                         f"CUDA build {torch.version.cuda}); use device=cpu or auto")
    return dev


def item_tables(ds: Dataset) -> tuple[ItemVocab, ItemTables]:
    items = ds.items()
    vocab = ItemVocab.from_items(items)
    dur = np.zeros(vocab.n_items, np.int64)
    dur[vocab.rows(items["item_id"].to_numpy())] = duration_bucket(items["duration_ms"].to_numpy())
    dur[0] = 0
    return vocab, ItemTables(author_of=vocab.author_of, tag_of=vocab.tag_of, dur_of=dur,
                             n_authors=vocab.n_authors, n_tags=vocab.n_tags, n_dur=N_DUR)


def snapshot_for(day: EvalDay, snapshots: list[ClusterSnapshot]) -> ClusterSnapshot | None:
    """The latest snapshot taken at or before the day's start (never one from inside or after the day)."""
    ok = [s for s in snapshots if s.snapshot_ts <= day.start_ms]
    return max(ok, key=lambda s: s.snapshot_ts) if ok else None


class StreamingTrainer:
    def __init__(self, ds: Dataset, cfg: TrainConfig, snapshots: list[ClusterSnapshot] | None = None,
                 item_vectors: np.ndarray | None = None, out_dir: str | Path | None = None,
                 progress: bool = True, init_vectors: np.ndarray | None = None) -> None:
        self.ranks = Ranks.current()  # (0, 1) outside a torch.distributed group
        self.ds, self.cfg, self.progress = ds, cfg, progress and self.ranks.is_main
        self.snapshots = list(snapshots or [])
        self.out = Path(out_dir) if out_dir and self.ranks.is_main else None  # only rank 0 writes
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(self.ranks.threads(cfg.threads))
        self.vocab, tables = item_tables(ds)
        feats = Features.for_dataset(ds, model_class(cfg.model).sequence)  # train/features.py: the one contract
        self.model = build_model(cfg.model, tables, cfg.model_cfg, feats.cross_buckets, feats.user_buckets,
                                 item_vectors=item_vectors)
        if cfg.item_init == "embeddings" and init_vectors is None:
            raise ValueError("item_init='embeddings' needs the item embedding table (run `twinv2 embed` first)")
        self.item_init = "random" if cfg.item_init == "random" or init_vectors is None else "embeddings"
        if self.item_init == "embeddings":
            self.model.load_pretrained(init_vectors)
        self.device = resolve_device(cfg.device)
        self.model.to(self.device)
        broadcast_state(self.model)  # same seed on every rank already; rank 0's state, to be safe
        # The zero-shot reference (train/zero_shot.py): this model at step 0, scored by its own retrieval.
        self.reference = reference_model(self.model) if self.item_init == "embeddings" else None
        self.batcher = Batcher(ds, self.vocab, self.model.sequence, self.model.seq_len, features=feats,
                               recent_len=self.model.recent_len)
        self.cfg = resolved_config(cfg, self.model)  # what metrics.json and the checkpoints record
        self.opt: SplitAdam | SyncedOptimizer = SplitAdam(self.model, cfg.lr)
        if self.ranks.world > 1:
            self.opt = SyncedOptimizer(self.opt, self.model)  # sums the ranks' gradients before each step

    def train_day(self, df: pd.DataFrame, desc: str) -> dict[str, float]:
        with tqdm(total=len(df), desc=desc, unit="sample", disable=not self.progress, leave=False) as bar:
            if self.ranks.world > 1:
                return train_rows_sharded(self.model, self.opt, self.batcher, df, self.cfg.batch_size, self.ranks,
                                          bar.update)
            return train_rows(self.model, self.opt, self.batcher, df, self.cfg.batch_size, bar.update)

    def evaluate(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, float]:
        """One pass over `df`'s batches: the model's click probabilities, its zero-shot reference's scores
        (train/zero_shot.py; None without pre-trained vectors), the raw item ids its GSU kept on a world with
        ground truth (train/retrieval.py; None otherwise), and samples/s of batch building + the model alone.
        In a group each rank scores its part and every rank gets the whole."""
        if self.ranks.world > 1:
            return evaluate_sharded(self._evaluate, df, self.ranks)
        return self._evaluate(df)

    @torch.no_grad()
    def _evaluate(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, float]:
        self.model.eval()
        want_kept = has_truth(self.ds)
        scores, zero, kept, extra = [], [], [], 0.0
        t0 = time.perf_counter()
        for _, batch in batches(self.batcher, df, self.cfg.eval_batch_size, device=self.device):
            scores.append(torch.sigmoid(self.model(batch)).cpu().numpy())
            t1 = time.perf_counter()
            if self.reference is not None:
                zero.append(zero_shot_scores(self.reference, batch).cpu().numpy())
            ids = kept_item_ids(self.model, batch, self.vocab.item_ids) if want_kept else None
            if ids is not None:
                kept.append(ids)
            extra += time.perf_counter() - t1  # diagnostics are not the model's inference cost
        sec = time.perf_counter() - t0 - extra
        empty = np.zeros(0, np.float32)
        return (np.concatenate(scores) if scores else empty,
                None if self.reference is None else (np.concatenate(zero) if zero else empty),
                np.concatenate(kept) if kept else None, len(df) / max(sec, 1e-9))

    def _enter_day(self, day: EvalDay, train: pd.DataFrame, seed: list[int]) -> pd.DataFrame:
        """Switch to the day's snapshot (the latest at or before its start) and return its training samples,
        subsampled to `max_train_per_day` (deterministic under `seed`, kept in time order)."""
        if self.model.sequence == "clusters":
            snap = snapshot_for(day, self.snapshots)
            if snap is None:
                kind = "warm-up day" if isinstance(day, WarmupDay) else "day"
                raise ValueError(f"model {self.cfg.model} needs a cluster snapshot taken at or before the "
                                 f"start of {kind} {day.label} ({day.start_ms}); run `twinv2 cluster "
                                 f"--snapshot-before {day.start_ms}`")
            self.batcher.use_snapshot(snap, day)
        if self.cfg.max_train_per_day and len(train) > self.cfg.max_train_per_day:
            keep = np.random.default_rng(seed).choice(len(train), self.cfg.max_train_per_day, replace=False)
            train = train.iloc[np.sort(keep)]
        return train

    def _warmup_day(self, day: WarmupDay, samples: pd.DataFrame) -> dict[str, Any]:
        """One pass over a train-only warm-up day (every hour trains, none is tested), with the same
        snapshot rule and per-day subsample as an evaluation day's training hours."""
        train = self._enter_day(day, samples[day.train_mask(samples["ts"])],  # every hour: no test hour
                                [self.cfg.seed, day.index, 1])  # 3 words: never an evaluation day's subsample
        stats = self.train_day(train, f"{self.cfg.model} warm-up {day.label}")
        return {"day": day.index, "label": day.label, "n_train": len(train), **stats}

    def run(self) -> dict[str, Any]:
        samples = self.ds.samples()
        days = self.ds.eval_days
        first = (self.ds.warmup_days or days)[0]  # the logit's bias from the first training hours' click rate
        head = samples[first.train_mask(samples["ts"])]
        if len(head):
            self.model.start_base_rate(float(head["label"].mean()))
        warmup = [self._warmup_day(d, samples) for d in self.ds.warmup_days]  # train-only days, in time order
        results, kept, pooled, written = [], [], ([], []), []
        for day in days:
            train = self._enter_day(day, samples[day.train_mask(samples["ts"])], [self.cfg.seed, day.index])
            test = samples[day.test_mask(samples["ts"])]
            tag = f"{self.cfg.model} day {day.index + 1}/{len(days)}"
            for p in range(self.cfg.passes_per_day):
                stats = self.train_day(train, tag + " train" + (f" pass {p + 1}" if p else ""))
            scores, zero_shot, ids, eval_rate = self.evaluate(test)
            if ids is not None:
                kept.append((test[["user_id", "item_id", "ts"]], ids))
            row = {"day": day.index, "label": day.label, "n_train": len(train), "n_test": len(test), **stats,
                   "eval_samples_per_s": eval_rate, **self._metrics(test, scores)}
            if zero_shot is not None:
                y, u = test["label"].to_numpy(), test["user_id"].to_numpy()
                row.update(zero_shot_auc=auc(y, zero_shot), zero_shot_gauc=gauc(u, y, zero_shot)[0])
            results.append(row)
            pooled[0].append(test["label"].to_numpy())
            pooled[1].append(scores)
            problem = day_problem(len(test), int(test["label"].sum()))
            if problem and self.ranks.is_main:  # even when quiet: a mean over such days looks authoritative
                said = "it has no AUC" if not np.isfinite(row["auc"]) else f"its AUC {row['auc']:.4f} is unreliable"
                print(f"twinv2: warning: {self.cfg.model} day {day.label}: test hour unusable ({problem}; "
                      f"usable = >= {MIN_TEST_SAMPLES} samples, both classes): {said}", file=sys.stderr, flush=True)
            if self.progress:
                print(f"{tag}: AUC {row['auc']:.4f} GAUC {row['gauc']:.4f} ({len(test)} test samples)")
            if self.out:
                self.out.mkdir(parents=True, exist_ok=True)
                save_checkpoint(self.out / "checkpoint.pt", self.model, self.cfg, self.vocab, {"day": day.index})
                pred = test.filter(["user_id", "item_id", "ts", "label", "p_true"]).assign(score=scores, day=day.index)
                if zero_shot is not None:
                    pred["zero_shot"] = zero_shot
                pred.to_parquet(self.out / f"predictions-day{day.index}.parquet", index=False)
                written.append(f"predictions-day{day.index}.parquet")
        summary = summarise(results)
        y_all = np.concatenate(pooled[0]) if pooled[0] else np.zeros(0)  # every test hour as one test set
        summary.update(pooled_auc=auc(y_all, np.concatenate(pooled[1]) if pooled[1] else np.zeros(0)),
                       n_test_total=len(y_all))
        summary.update({"model": self.cfg.model, "config": to_dict(self.cfg), "item_init": self.item_init,
                        "device": str(self.device),
                        "days": results, "warmup_days": warmup})
        if self.ranks.world > 1:
            summary["distributed"] = {"world_size": self.ranks.world, "backend": dist_backend(),
                                      "threads_per_rank": self.ranks.threads(self.cfg.threads)}
        if kept:
            summary["retrieval"] = retrieval_diagnostics(self.ds, pd.concat([k for k, _ in kept], ignore_index=True),
                                                         np.concatenate([i for _, i in kept]))
        if self.out:
            write_json_atomic(self.out / "metrics.json", sealed_metrics(self.out, summary, written))
        return summary

    @staticmethod
    def _metrics(test: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
        y, u = test["label"].to_numpy(), test["user_id"].to_numpy()
        g, n_users = gauc(u, y, scores)
        m = {"auc": auc(y, scores), "gauc": g, "gauc_users": n_users}
        if "p_true" in test.columns:
            p = test["p_true"].to_numpy()
            m["oracle_auc"] = auc(y, p)
            m["oracle_gauc"] = gauc(u, y, p)[0]
        return m


def sealed_metrics(out: Path, summary: dict[str, Any], written: list[str]) -> dict[str, Any]:
    """metrics.json's body: `summary`, the {"bytes", "sha256"} of each prediction file this run wrote (OUTPUTS)
    and the body's own checksum (METRICS_SHA256), so the report refuses a damaged file instead of reading changed
    numbers (issue 14: a byte flip in a Parquet page often still decodes)."""
    body = {**summary, OUTPUTS: {name: file_entry(out / name) for name in written}}
    body = json.loads(json.dumps(body, default=json_default))  # plain JSON types: the checksum reads back equal
    body[METRICS_SHA256] = manifest_sha256(body, METRICS_SHA256)
    return body
