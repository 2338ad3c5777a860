"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Idle OpenMP threads spin by default; on a busy 2-core box that made torch calls many times slower (seen in
# the serving tests). Must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED_KUAIRAND = REPO.parent / "shared" / "data" / "kuairand"


@pytest.fixture
def kuairand_dir() -> Path:
    """The real KuaiRand files (CC BY-SA 4.0), read in place from ../shared; never copied into the repo."""
    if not (SHARED_KUAIRAND / "kuairand27k_likehate_k15.tsv").exists():
        pytest.skip(f"KuaiRand files not found at {SHARED_KUAIRAND}")
    return SHARED_KUAIRAND


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The `tiny` generated world, made once per test session."""
    from twinv2.data.generate import generate_world, preset

    root = tmp_path_factory.mktemp("worlds") / "tiny"
    generate_world(preset("tiny"), root, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_snapshot(tiny_world, tmp_path_factory) -> Path:
    """Item embeddings and a cluster snapshot before the first evaluation day of the tiny world."""
    from twinv2.data.storage import Dataset
    from twinv2.offline.embed import EmbedConfig, embed
    from twinv2.offline.job import ClusterJobConfig, run_cluster_job

    ds = Dataset(tiny_world)
    emb = embed(tiny_world, None, EmbedConfig(), progress=False) if "progress" in embed.__code__.co_varnames \
        else embed(tiny_world, None, EmbedConfig())
    return Path(run_cluster_job(tiny_world, ds.eval_days[0].start_ms, emb, ClusterJobConfig(workers=1),
                                progress=False))
