"""Training and scoring on a GPU when one is present (TrainConfig.device); the CUDA test skips without one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinv2.data.storage import Dataset
from twinv2.offline.store import ClusterSnapshot
from twinv2.train.run import item_vectors
from twinv2.train.trainer import StreamingTrainer, TrainConfig, resolve_device


def _run(world, snapshot, device: str, model: str):
    ds = Dataset(world)
    vectors = item_vectors(ds)
    cfg = TrainConfig(model=model, device=device, max_train_per_day=200, batch_size=64)
    return StreamingTrainer(ds, cfg, [ClusterSnapshot(snapshot)], out_dir=None, progress=False,
                            init_vectors=vectors).run()


def test_bad_devices_are_refused_by_name():
    with pytest.raises(ValueError, match="'gpu'"):
        TrainConfig(device="gpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("model", ["twin", "twin_v2", "sim_hard"])
def test_cuda_matches_cpu(tiny_world, tiny_snapshot, model):
    cpu = _run(tiny_world, tiny_snapshot, "cpu", model)
    gpu = _run(tiny_world, tiny_snapshot, "cuda", model)
    assert gpu["device"].startswith("cuda") and cpu["device"] == "cpu"
    for a, b in zip(cpu["days"], gpu["days"]):
        assert np.isclose(a["train_loss"], b["train_loss"], rtol=1e-3), (a, b)
        assert abs(a["auc"] - b["auc"]) < 0.01, (a["auc"], b["auc"])
