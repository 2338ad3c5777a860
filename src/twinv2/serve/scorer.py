"""The online scorer: one user and N candidates → N click probabilities, equal to the offline TWIN-V2 forward
on the same inputs (paper §3.3.3 and §3.4; checked to 1e-5 by tests/serve/test_scorer.py).

Per request: the model version from the projection cache (projections.py), the user's clusters from one store
version (store.py), turned into the inputs train/batching.py builds for a sample (`cluster_inputs`: item rows,
cross buckets at the request time, ln n, the same latest-`seq_len` rule); the scores are the model's own
(`model.score`, models/serving.py), which runs the GSU, ESU and CTR head of the offline forward.

An unknown user has no clusters: the long-term interest is zero, which is what the offline model gives an
all-padding sequence. An unknown item maps to row 0, whose inherent embedding is the fixed zero vector (every
table's padding row): its score is the model's score for "an item we know nothing about", as offline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from twinv2.models.batch import Seq
from twinv2.models.embeddings import ItemVocab
from twinv2.serve.projections import ProjectionCache
from twinv2.serve.store import ClusterStore, UserClusters
from twinv2.train.batching import latest_by_time, recent_seq
from twinv2.train.features import Features


@dataclass(frozen=True)
class ClusterInputs:
    """A user's clusters in model units at one request time."""

    rows: np.ndarray  # (C,) int64 item rows
    cross: np.ndarray  # (C, J) int64 buckets: play, ratio, age
    log_n: np.ndarray  # (C,) float32 ln n

    @property
    def size(self) -> int:
        return len(self.rows)


def cluster_inputs(uc: UserClusters, ts: int, vocab: ItemVocab, seq_len: int) -> ClusterInputs:
    """The batcher's inputs for one user (train/batching.py): rows, one bucket column per cross feature spec
    (train/features.py, in the model's column order) and ln n.

    A spec's buckets are the store's when it keeps them (play, ratio: bucketed with the same specs at load,
    store.FEATURES), else computed here from the store's column named by the spec's source (ts, n, item_id);
    a spec with `since_sample` buckets the request time minus that column."""
    from twinv2.serve.store import FEATURES
    from twinv2.train.features import Features

    keep = latest_by_time(uc.ts, seq_len) if uc.size > seq_len else slice(None)  # Batcher._positions' rule
    specs = Features.of("clusters").cross
    cross = np.empty((len(uc.item_id[keep]), len(specs)), np.int64)
    for j, spec in enumerate(specs):
        stored = FEATURES.get(f"{spec.name}_buckets")
        if stored is not None and not spec.since_sample:
            if stored != spec.buckets:
                raise ValueError(f"the cluster store keeps {stored} {spec.name} buckets, the feature has "
                                 f"{spec.buckets}; reload the snapshot")
            cross[:, j] = getattr(uc, spec.name)[keep]
            continue
        if spec.source not in ("ts", "n", "item_id"):
            raise ValueError(f"cross feature {spec.name!r} reads {spec.source!r}, which the cluster store does "
                             f"not keep (it keeps ts, n, item_id and the buckets of {sorted(FEATURES)})")
        col = np.asarray(getattr(uc, spec.source)[keep], np.float64)
        cross[:, j] = spec.bucket(np.float64(ts) - col) if spec.since_sample else spec.bucket(col)
    return ClusterInputs(rows=vocab.rows(uc.item_id[keep]), cross=cross,
                         log_n=np.log(uc.n[keep].astype(np.float32)))


def cluster_seq(inp: ClusterInputs) -> Seq:
    """The inputs as the model's sequence of batch size 1 (every element valid)."""
    C = inp.size
    cross = torch.from_numpy(inp.cross).view(1, C, inp.cross.shape[1])  # (1, C, J)
    return Seq(rows=torch.from_numpy(inp.rows).view(1, C), cross=cross, mask=torch.ones(1, C, dtype=torch.bool),
               log_n=torch.from_numpy(inp.log_n).view(1, C))


@dataclass(frozen=True)
class ScoreResult:
    scores: np.ndarray  # (N,) float32 click probabilities
    logits: np.ndarray  # (N,) float32
    model_version: str
    snapshot_version: str
    clusters: int  # clusters the user has in the snapshot (0: unknown user, scored with an empty life cycle)
    unknown_items: int  # candidates not in the model's vocabulary (scored with the fallback embedding)
    ts: int


class Scorer:
    """Scores requests against the served model version and cluster store version.

    Thread-safe: a request reads `cache.current` once and the store in one transaction, so a model or snapshot
    swapped meanwhile affects only later requests.
    """

    def __init__(self, cache: ProjectionCache, store: ClusterStore) -> None:
        self.cache = cache
        self.store = store
        self._snapshot_ts: dict[str, int] = {}

    def snapshot_ts(self, version: str) -> int:
        if version not in self._snapshot_ts:
            self._snapshot_ts[version] = int(self.store.info(version)["snapshot_ts"])
        return self._snapshot_ts[version]

    def score(self, user_id: int, items: Sequence[int] | np.ndarray, ts: int | None = None,
              user: Sequence[int] | np.ndarray | None = None,
              recent: dict[str, np.ndarray] | None = None) -> ScoreResult:
        """Click probabilities of `items` (raw ids) for `user_id` at `ts` (epoch ms; default now); `user`: the
        user-feature bucket ids (F,) when the model reads user features; `recent`: the user's latest raw
        behaviours (item_id, ts, play_ms, duration_ms columns, oldest first) for the short-term interest
        (train/batching.recent_seq; None: none known, as offline for a user without behaviours).

        Raises ValueError for a time before the served snapshot (its clusters would hold behaviours from after
        the request: a leak). Any year is accepted otherwise: imported logs start in any year.
        """
        mv = self.cache.current  # the one model version of this request
        uc = self.store.get(user_id)  # the one snapshot version of this request
        ts = int(time.time() * 1000) if ts is None else int(ts)
        snap_ts = self.snapshot_ts(uc.version)
        if ts < snap_ts:  # also what catches seconds given for ms: any year's snapshot is in ms
            hint = "; seconds instead of ms?" if 0 < ts < snap_ts // 100 <= ts * 1000 else ""
            raise ValueError(f"ts {ts} is before the served cluster snapshot ({snap_ts}, version {uc.version}): "
                             f"its clusters may hold behaviours from after the request{hint}")
        ids = np.asarray(items, dtype=np.int64).reshape(-1)
        cand = mv.vocab.rows(ids)
        inp = cluster_inputs(uc, ts, mv.vocab, mv.seq_len)
        with torch.inference_mode():
            u = None if user is None else torch.as_tensor(np.asarray(user, np.int64))
            short = None
            if recent is not None and mv.model.recent_len:
                short = recent_seq(recent, ts, mv.vocab, Features.of("clusters").cross, mv.model.recent_len)
            logits = mv.model.score(mv.cache, torch.from_numpy(cand), cluster_seq(inp), u, recent=short)
            probs = torch.sigmoid(logits)
        return ScoreResult(scores=probs.numpy(), logits=logits.numpy(), model_version=mv.version,
                           snapshot_version=uc.version, clusters=uc.size,
                           unknown_items=int(np.count_nonzero(cand == 0)), ts=ts)
