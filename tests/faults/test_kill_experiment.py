"""`twinv2 experiment` killed in one stage after another resumes each time and finishes with the stage outputs
of an uninterrupted run (issue 14, item 3): the same files, byte-equal where they are deterministic.

The smallest experiment that still runs every early stage (generate, stats, embed, cluster) and one model;
kills come at named points (TWINV2_FAILPOINT=name makes the process SIGKILL itself there, see
twinv2.data.dirs.failpoint).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from twinv2.data.checksum import MARKER
from twinv2.data.dirs import FAILPOINT_ENV
from twinv2.serve.server import cli_command

CONFIG = {"name": "kill", "world_preset": "tiny", "world": {"n_users": 24}, "models": ["avg_pooling"],
          "seeds": 1, "seed_models": [], "ablation": False, "cluster_bench_users": 0, "sweep_values": [],
          "kuairand": "none", "cluster_cadence": "once", "embed": {"max_pairs": 20_000},
          "cluster": {"workers": 1}, "train": {"max_train_per_day": 100, "eval_batch_size": 256}}
# One kill per run, each later in the experiment: generating the world (early, then at its commit), saving
# the embeddings, after the first cluster shard is recorded.
POINTS = ["items", "commit", "embed-save", "cluster-recorded"]
# Files that record paths or timings: they must exist, their bytes may differ.
VOLATILE = {"experiment.json", "stats.json", "item_embeddings.json", "metrics.json", "report.md", "report.html",
            "tables.json"}


def _outputs(exp: Path) -> dict[str, str | None]:
    """Every file of the experiment (the readers' caches aside) with its sha256, None for VOLATILE ones."""
    out: dict[str, str | None] = {}
    for p in sorted(exp.rglob("*")):
        rel = p.relative_to(exp).as_posix()
        if not p.is_file() or p.name == MARKER or ".csr/" in rel:
            continue
        volatile = p.name in VOLATILE or (p.name == "manifest.json" and "/clusters/" in rel)
        out[rel] = None if volatile else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _experiment(config: Path, out: Path, failpoint: str | None = None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
    if failpoint:
        env[FAILPOINT_ENV] = failpoint
    r = subprocess.run([*cli_command(), "experiment", "--config", str(config), "--out", str(out), "--quiet"],
                       env=env, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stderr


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("config") / "kill.yaml"
    p.write_text(yaml.safe_dump(CONFIG))
    return p


@pytest.mark.slow
def test_killed_stage_after_stage_the_experiment_resumes_to_an_uninterrupted_runs_outputs(tmp_path, config):
    rc, err = _experiment(config, tmp_path / "whole")
    assert rc == 0, err[-2000:]
    exp = tmp_path / "killed"
    for point in POINTS:  # each run resumes the one before, then is killed a stage later
        rc, err = _experiment(config, exp, failpoint=point)
        assert rc == -signal.SIGKILL, (point, err[-2000:])
    rc, err = _experiment(config, exp)
    assert rc == 0, err[-2000:]
    assert _outputs(exp) == _outputs(tmp_path / "whole")
