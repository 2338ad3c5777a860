"""Serving fixtures: a briefly trained twin_v2 checkpoint on the tiny world and a cluster store holding the
tiny snapshot (each made once per session)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

if "torch" not in sys.modules:  # as `twinv2 serve` does (commands.prefer_passive_omp): on a busy box, spinning
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # OpenMP workers slow every small op many times over


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_world, tiny_snapshot, tmp_path_factory) -> Path:
    """twin_v2 trained on 300 samples of the first evaluation day (enough to move every weight)."""
    return train_tiny("twin_v2", tiny_world, tiny_snapshot, tmp_path_factory.mktemp("serve") / "checkpoint.pt")


def train_tiny(model: str, tiny_world: Path, tiny_snapshot: Path, path: Path) -> Path:
    """`model` (a clusters model) trained on 300 samples of the tiny world's first evaluation day, saved at `path`."""
    from twinv2.data.storage import Dataset
    from twinv2.offline.store import ClusterSnapshot
    from twinv2.train.checkpoint import save_checkpoint
    from twinv2.train.trainer import StreamingTrainer, TrainConfig

    ds = Dataset(tiny_world)
    t = StreamingTrainer(ds, TrainConfig(model=model, batch_size=64), [ClusterSnapshot(tiny_snapshot)],
                         progress=False)
    day = ds.eval_days[0]
    t.batcher.use_snapshot(ClusterSnapshot(tiny_snapshot), day)
    s = ds.samples()
    s = s[(s.ts >= day.start_ms) & (s.ts < day.test_start_ms)].iloc[:300]
    t.train_day(s, "fixture")
    save_checkpoint(path, t.model, t.cfg, t.vocab, {"day": 0})
    return path


@pytest.fixture(scope="session")
def tiny_store(tiny_snapshot, tmp_path_factory) -> Path:
    from twinv2.serve.store import ClusterStore

    path = tmp_path_factory.mktemp("serve") / "store"
    ClusterStore(path).load_snapshot(tiny_snapshot)
    return path


@pytest.fixture(scope="session")
def request_ts(tiny_world) -> int:
    """A request time inside the first evaluation day (after the tiny snapshot)."""
    from twinv2.data.storage import Dataset

    return Dataset(tiny_world).eval_days[0].start_ms + 5 * 3_600_000 + 123


@pytest.fixture(scope="session")
def known_items(tiny_world) -> np.ndarray:
    from twinv2.data.storage import Dataset

    return np.sort(Dataset(tiny_world).items()["item_id"].to_numpy())


def _perturbed(src, dst, scale=0.3, seed=1):
    """A copy of checkpoint `src` with every weight moved, as a newer nearline checkpoint's would be."""
    import torch

    from twinv2.train.checkpoint import load_checkpoint, write_checkpoint

    ck = load_checkpoint(src)
    g = torch.Generator().manual_seed(seed)
    ck["state_dict"] = {k: v + scale * torch.randn(v.shape, generator=g) * v.std() if v.is_floating_point()
                        and v.numel() > 1 else v for k, v in ck["state_dict"].items()}
    write_checkpoint(dst, ck)  # with its new content checksum (a plain torch.save would read as damaged)
    return dst


@pytest.fixture(scope="session")
def perturbed():
    return _perturbed
