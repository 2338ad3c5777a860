"""The nearline append (serve/ingest.py) killed at any instant leaves the old dataset or the new one, both
passing their checksums: shards and manifest change together through a journal (storage.replace_files)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twinv2.data.dirs import FAILPOINT_ENV, JOURNAL, foreign_entries
from twinv2.data.storage import Dataset, shard_of
from twinv2.serve.ingest import append_behaviours

SCRIPT = "import sys, pandas as pd; from twinv2.serve.ingest import append_behaviours; " \
         "append_behaviours(sys.argv[1], pd.read_parquet(sys.argv[2]))"


@pytest.fixture
def world(tiny_world, tmp_path):
    root = tmp_path / "live"
    shutil.copytree(tiny_world, root, ignore=shutil.ignore_patterns("*.csr", "clusters", "embeddings"))
    ds = Dataset(root)
    users = ds.csr(0).user_ids[:2].tolist() + ds.csr(3).user_ids[:1].tolist()  # two shards get rewritten
    assert len(set(shard_of(users, ds.n_shards).tolist())) == 2
    t = int(max(ds.history(u)["ts"].max() for u in users)) + 1000
    rows = pd.DataFrame({"user_id": np.repeat(users, 2), "item_id": 7, "ts": t + np.arange(6) * 10,
                         "play_ms": 500, "duration_ms": 1000}).astype("int64")
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    return root, rows, users


def _state(root: Path, users: list[int]) -> tuple[int, list[int]]:
    ds = Dataset(root)
    return int(ds.manifest["counts"]["behaviours"]), [len(ds.history(u)["ts"]) for u in users]


def _killed_append(root: Path, rows_path: Path, point: str) -> None:
    env = {**os.environ, FAILPOINT_ENV: point}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(root), str(rows_path)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]


@pytest.mark.parametrize("point, done", [("replace", False), ("journal", True), ("renamed", True)])
def test_a_killed_append_leaves_the_old_or_the_new_dataset(world, point, done):
    root, rows, users = world
    old = _state(root, users)
    new = (old[0] + len(rows), [n + 2 for n in old[1]])
    _killed_append(root, root.parent / "rows.parquet", point)
    assert (root / JOURNAL).exists() == done
    assert foreign_entries(root) == []  # temporary shards and the journal are ours
    assert _state(root, users) == (new if done else old)  # the open finishes a committed update
    assert not (root / JOURNAL).exists()
    res = append_behaviours(root, rows)  # again: the rows are there (or now get there), once
    assert res["appended"] == (0 if done else len(rows)) and _state(root, users) == new
