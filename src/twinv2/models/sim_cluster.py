"""SIM Cluster and SIM Cluster+ (the TWIN-V2 paper's §4.1 baselines, a SIM-style hard search, Pi et al.,
CIKM 2020, keyed by an embedding cluster instead of the category): all items are clustered once into 1,000
(SIM Cluster) or 10,000 (SIM Cluster+) global groups by k-means over their offline embeddings; the GSU keeps
the most recent 100 of the latest 10,000 behaviours that fall in the target's group; the ESU is the frame's
shared target attention without ln n.

Simplified: one global k-means (faiss, fixed seed, one thread so the labels do not depend on the machine's
thread count) run by `prepare` when the model is built, never refreshed during training; with fewer items
than `n_clusters`, every item is its own cluster. The labels are a buffer, so checkpoints carry them.
"""

from __future__ import annotations

import numpy as np
import torch

from twinv2.models.batch import Batch
from twinv2.models.frame import SIMClusterConfig
from twinv2.models.search import topk_exact
from twinv2.models.two_stage import TwoStage


class SIMCluster(TwoStage):
    sequence = "recent"
    default_seq_len = 10_000
    needs_item_vectors = True
    config_key = "sim_cluster"  # which ModelConfig field holds this model's k-means settings

    @property
    def hp(self) -> SIMClusterConfig:
        return getattr(self.cfg, self.config_key)

    def build_long_term(self) -> int:
        # -1 = no cluster (the unknown item, row 0, and every row before `prepare`): it never matches.
        self.register_buffer("cluster_of", torch.full((self.items.n_items,), -1, dtype=torch.long))  # (I,)
        return super().build_long_term()

    def prepare(self, item_vectors: np.ndarray) -> "SIMCluster":
        """k-means over the item vectors (I, D') by item row (row 0 ignored); stores each row's cluster."""
        import faiss

        vecs = np.asarray(item_vectors, dtype=np.float32)
        I = self.items.n_items
        if vecs.ndim != 2 or vecs.shape[0] != I:
            raise ValueError(f"item_vectors must have shape ({I}, D) (one row per item row), got {vecs.shape}")
        if not np.isfinite(vecs).all():
            raise ValueError("item_vectors contain NaN or inf")
        points = np.ascontiguousarray(vecs[1:])  # (I-1, D')
        labels = np.full(I, -1, dtype=np.int64)
        hp = self.hp
        k = min(hp.n_clusters, len(points))
        if k == len(points):
            labels[1:] = np.arange(k)  # one item per cluster: what k-means with k = n points converges to
        elif k > 0:
            prev = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                # faiss trains on at most 256 points per centroid (seeded subsample), then labels every item.
                km = faiss.Kmeans(points.shape[1], k, niter=hp.kmeans_iter, seed=hp.kmeans_seed, verbose=False,
                                  min_points_per_centroid=1)  # few points per cluster is intended: no warning
                km.train(points)
                labels[1:] = km.index.search(points, 1)[1][:, 0]
            finally:
                faiss.omp_set_num_threads(prev)
        self.cluster_of.copy_(torch.from_numpy(labels))
        return self

    @torch.no_grad()
    def gsu(self, batch: Batch, target: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq = batch.seq
        if self.items.n_items > 1 and not bool((self.cluster_of >= 0).any()):
            raise RuntimeError(f"{type(self).__name__}: call prepare(item_vectors) (or load a checkpoint) first")
        cluster = self.cluster_of[batch.target]  # (B,)
        match = seq.mask & (self.cluster_of[seq.rows] == cluster[:, None]) & (cluster[:, None] >= 0)  # (B, L)
        score = torch.zeros(match.shape, device=match.device)  # (B, L); all matches equal → most recent win
        return topk_exact(score, match, self.cfg.attention.top_k)


class SIMClusterPlus(SIMCluster):
    config_key = "sim_cluster_plus"  # 10,000 clusters by default
