"""Data-parallel training (train/distributed.py): two gloo ranks on 127.0.0.1 give the single-process run's
gradients, losses, metrics and parameters; the sparse sync sums rows touched by either rank; a failing rank
fails the job with its own error instead of hanging."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from twinv2.data.sealed import read_sealed
from twinv2.train.distributed import Ranks, launch, sync_gradients

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


# ---- rank functions (module level: they are pickled into the spawned ranks) -----------------------------------
class _Toy(nn.Module):
    """A sparse table of 11 rows x 5 dims, a dense map, and a parameter no rank uses."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.emb = nn.Embedding(11, 5, sparse=True)
        self.out = nn.Linear(5, 1)
        self.only_rank0 = nn.Parameter(torch.ones(3))
        self.unused = nn.Parameter(torch.ones(2))


# Rank 0 touches rows 1, 2, 3 (3 twice); rank 1 touches 3, 4, 9: row 3 comes from both.
_ROWS = {0: [1, 3, 2, 3], 1: [9, 3, 4]}


def _sync_case(weights: list[float]) -> dict[str, np.ndarray | None]:
    ranks = Ranks.current()
    model = _Toy()
    rows = torch.tensor(_ROWS[ranks.rank])
    loss = model.out(model.emb(rows)).pow(2).mean() + (model.only_rank0.sum() if ranks.rank == 0 else 0.0)
    loss.backward()
    local = {n: None if p.grad is None else p.grad.to_dense().numpy().copy() for n, p in model.named_parameters()}
    sync_gradients(list(model.parameters()), weights[ranks.rank])
    g = model.emb.weight.grad
    assert g.is_sparse and g.is_coalesced()
    synced = {n: None if p.grad is None else p.grad.to_dense().numpy() for n, p in model.named_parameters()}
    return {"local": local, "synced": synced, "sparse_rows": g.indices().flatten().tolist()}


def _fail_on_rank1() -> int:
    if Ranks.current().rank == 1:
        raise ValueError("bad value on purpose")
    dist.barrier()  # rank 0 waits here for a rank that will never come
    return 0


def _train(root: str, cfg, out: str) -> dict:
    from twinv2.data.storage import Dataset
    from twinv2.train.run import train_one

    return train_one(Dataset(root), cfg, out, progress=False)


# ---- tests ---------------------------------------------------------------------------------------------------
def test_sparse_and_dense_gradients_sum_over_ranks():
    weights = [0.75, 0.25]
    got = launch(2, _sync_case, weights, threads=1)
    for name in ("emb.weight", "out.weight", "out.bias", "only_rank0"):
        parts = [r["local"][name] for r in got]
        want = sum(w * (0 if p is None else p) for w, p in zip(weights, parts))
        for rank in (0, 1):
            np.testing.assert_allclose(got[rank]["synced"][name], want, rtol=1e-6, atol=1e-7, err_msg=name)
    # Row 3 sums both ranks' rows; the rows neither touched stay out of the sparse gradient.
    assert got[0]["sparse_rows"] == got[1]["sparse_rows"] == [1, 2, 3, 4, 9]
    e = [r["local"]["emb.weight"] for r in got]
    assert np.abs(e[0][3]).sum() > 0 and np.abs(e[1][3]).sum() > 0
    np.testing.assert_allclose(got[1]["synced"]["emb.weight"][3], 0.75 * e[0][3] + 0.25 * e[1][3], rtol=1e-6)
    assert got[0]["synced"]["unused"] is None and got[1]["synced"]["unused"] is None  # as in one process
    assert got[1]["local"]["only_rank0"] is None and got[1]["synced"]["only_rank0"] is not None


def test_a_failing_rank_fails_the_job_with_its_error():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="rank 1: bad value on purpose"):
        launch(2, _fail_on_rank1, threads=1, timeout_s=60)
    assert time.perf_counter() - t0 < 50  # not the collective timeout: the launcher stopped rank 0


def test_share_covers_every_row_once():
    for n in (0, 1, 2, 7, 50):
        parts = [Ranks(r, 3, r, 3).share(n) for r in range(3)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert Ranks(0, 2, 0, 2).threads(2) == 1 and Ranks(0, 4, 0, 4).threads(2) == 1 and Ranks().threads(3) == 3
    with pytest.raises(ValueError, match="nproc must be a positive integer, got 0"):
        launch(0, _fail_on_rank1)


@pytest.mark.slow
def test_two_ranks_train_like_one_process(tiny_world, tiny_snapshot, tmp_path):
    import pandas as pd

    from twinv2.data.storage import Dataset
    from twinv2.offline.store import ClusterSnapshot
    from twinv2.train.checkpoint import load_checkpoint
    from twinv2.train.run import item_vectors
    from twinv2.train.trainer import StreamingTrainer, TrainConfig

    # 301 rows a day in batches of 50: six full batches and a last one of 1 row, which rank 0 has no part of.
    cfg = TrainConfig(model="twin_v2", batch_size=50, max_train_per_day=301, threads=2)
    one = _train(str(tiny_world), cfg, str(tmp_path / "one"))
    two = launch(2, _train, str(tiny_world), cfg, str(tmp_path / "two"))
    assert two[0] == two[1]  # every rank reports the same
    assert two[0]["distributed"] == {"world_size": 2, "backend": "gloo", "threads_per_rank": 1}
    written = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert written["days"] == json.loads(json.dumps(two[0]["days"]))
    for a, b in zip(one["days"], two[0]["days"], strict=True):
        assert a["n_train"] == b["n_train"] == 301
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        for k in ("auc", "gauc", "zero_shot_auc"):
            assert b[k] == pytest.approx(a[k], abs=1e-6), k
    pa, pb = (load_checkpoint(tmp_path / r / "checkpoint.pt")["state_dict"] for r in ("one", "two"))
    assert pa.keys() == pb.keys()
    for k, v in pa.items():
        torch.testing.assert_close(pb[k], v, rtol=1e-4, atol=1e-5, msg=k)
    start = StreamingTrainer(Dataset(tiny_world), cfg, [ClusterSnapshot(tiny_snapshot)], progress=False,
                             init_vectors=item_vectors(Dataset(tiny_world))).model.state_dict()
    for k in ("items.emb.item.weight", "items.emb.author.weight"):  # sparse tables trained: equality means something
        assert (pa[k] - start[k]).abs().max() > 1e-3, k
    a_pred, b_pred = (pd.read_parquet(tmp_path / r / "predictions-day4.parquet") for r in ("one", "two"))
    np.testing.assert_allclose(b_pred["score"], a_pred["score"], rtol=1e-4, atol=1e-6)


def test_cli_train_nproc_launches_ranks_and_bench_has_real_subcommands(monkeypatch, tmp_path, capsys):
    from twinv2 import cli
    from twinv2.bench import ddp
    from twinv2.data import storage
    from twinv2.train import distributed

    seen = {}

    def fake_launch(n, fn, ds, cfg, out, threads=None, timeout_s=None, **kw):
        seen.update(n=n, fn=fn.__name__, threads=threads, timeout=timeout_s, progress=kw["progress"], cfg=cfg)
        return [{"auc_mean": 0.5, "auc_std": 0.0, "gauc_mean": 0.5, "gauc_std": 0.0}] * n

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed, "launch", fake_launch)
    monkeypatch.setattr(storage, "Dataset", lambda root: type("D", (), {"root": tmp_path})())
    assert cli.main(["train", "d", "--nproc", "3", "--set", "threads=4", "--dist-timeout", "30", "--quiet",
                     "--out", str(tmp_path / "r")]) == 0
    assert (seen["n"], seen["fn"], seen["threads"], seen["timeout"], seen["progress"]) == (3, "train_one", 1, 30.0,
                                                                                           False)
    assert seen["cfg"].threads == 4  # the config keeps the machine's total; each rank takes its part
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun the processes are torchrun's
    assert cli.main(["train", "d", "--nproc", "2", "--out", str(tmp_path / "r")]) == 2
    assert "--nproc 2 under torchrun" in capsys.readouterr().err

    monkeypatch.setattr(ddp, "bench_ddp", lambda n, lengths, steps: {"n": n, "lengths": list(lengths), "steps": steps})
    assert cli.main(["bench", "train", "--nproc", "2", "--lengths", "500,700", "--steps", "3", "--json",
                     str(tmp_path / "b.json")]) == 0
    assert read_sealed(tmp_path / "b.json", fix="") == {"n": 2, "lengths": [500, 700], "steps": 3}
    assert cli.main(["bench", "--json", str(tmp_path / "c.json"), "train", "--nproc", "2"]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["lengths"] == [1000]
    p = cli.build_parser()
    assert p.parse_args(["bench", "cluster", "--users", "3", "--no-big-user"]).users == 3
    assert p.parse_args(["bench", "serve", "--serve-reps", "4"]).serve_reps == 4
    with pytest.raises(SystemExit):  # a cluster flag is not a train flag any more
        p.parse_args(["bench", "train", "--users", "3"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        p.parse_args(["bench", "--help"])
    out = capsys.readouterr().out
    assert "train" in out and "--steps" not in out and "--serve-reps" not in out


@pytest.mark.slow
def test_bench_ddp_reports_both_rates_and_the_efficiency():
    from twinv2.bench.ddp import bench_ddp

    r = bench_ddp(2, models=("twin_v2",), lengths=(50,), n_items=500, B=13, steps=2, threads=1)
    (row,) = r["rows"]
    assert row["runs"]["n"]["rows_per_rank"] == [6, 7] and row["runs"]["one"]["rows_per_rank"] == [13]
    assert row["scaling_efficiency"] == pytest.approx(row["rate_n"] / (2 * row["rate_1"]))
    assert row["rate_1"] > 0 and row["rate_n"] > 0 and len(r["machine"]["load_avg_start"]) == 3
