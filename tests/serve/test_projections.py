"""The projection cache: what it precomputes, where it finds checkpoints, and atomic hot swaps (requests in
flight finish on their version; no request mixes two, under concurrent load)."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
import torch

from twinv2.data.sealed import write_sealed
from twinv2.serve.projections import (
    ModelNotReady,
    ProjectionCache,
    load_model_version,
    resolve_checkpoint,
)
from twinv2.serve.scorer import Scorer
from twinv2.serve.store import ClusterStore


def test_cache_holds_the_models_projections(tiny_checkpoint):
    mv = load_model_version(tiny_checkpoint)
    attn, c = mv.model.attn, mv.cache
    E = attn.cfg.cross_dim
    with torch.no_grad():
        items = mv.model.items(torch.arange(mv.model.items.n_items))  # the offline lookup, row by row
        torch.testing.assert_close(c.items, items)
        torch.testing.assert_close(c.keys, attn.w_h(items).view(-1, c.heads, c.head_dim))
        torch.testing.assert_close(c.values, attn.w_v(items).view(-1, c.heads, c.head_dim))
        for j, (emb, t) in enumerate(zip(attn.cross, attn.cross_scalars())):
            torch.testing.assert_close(c.cross_attn[j], t)
            torch.testing.assert_close(c.cross_gsu[j], t.mean(-1))
            # W^v_c on [K_c] with only feature j's embedding non-zero: its share of the cross values.
            only_j = torch.zeros(emb.num_embeddings, attn.n_cross * E)
            only_j[:, j * E:(j + 1) * E] = emb.weight
            torch.testing.assert_close(c.cross_value[j], attn.w_vc(only_j))
    assert c.keys.shape == (mv.model.items.n_items, 4, 16) and mv.version.startswith("twin_v2-")
    assert mv.info["day"] == 0 and not mv.model.training


def test_sources_files_run_folders_and_latest_pointers(tiny_checkpoint, tmp_path, perturbed):
    assert resolve_checkpoint(tiny_checkpoint) == tiny_checkpoint
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "checkpoint.pt")
    assert resolve_checkpoint(run) == run / "checkpoint.pt"
    (run / "checkpoints").mkdir()
    perturbed(tiny_checkpoint, run / "checkpoints" / "ckpt-000001.pt")
    write_sealed(run / "LATEST", {"checkpoint": "checkpoints/ckpt-000001.pt"})
    assert resolve_checkpoint(run) == run / "checkpoints" / "ckpt-000001.pt"
    with pytest.raises(FileNotFoundError, match="neither LATEST nor checkpoint.pt"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read the checkpoint"):
        load_model_version(bad)


def test_only_cluster_attention_checkpoints_are_served(tmp_path, tiny_checkpoint):
    from twinv2.models.registry import build_model
    from twinv2.train.checkpoint import load_model, save_checkpoint
    from twinv2.train.trainer import TrainConfig

    model, vocab, _ = load_model(tiny_checkpoint)
    for name in ("twin", "din"):  # raw behaviours (no online store for them) and a model without model.score
        other = build_model(name, _tables(model), model.cfg, model.cross_buckets)
        path = tmp_path / f"{name}.pt"
        save_checkpoint(path, other, TrainConfig(model=name, model_cfg=model.cfg), vocab, {})
        with pytest.raises(ValueError, match=f"model '{name}' is not served"):
            load_model_version(path)


def _tables(model):
    from twinv2.models.frame import ItemTables

    it = model.items
    return ItemTables(author_of=it.author_of.numpy(), tag_of=it.tag_of.numpy(), dur_of=it.dur_of.numpy(),
                      n_authors=it.emb.author.num_embeddings, n_tags=it.emb.tag.num_embeddings,
                      n_dur=it.dur.num_embeddings)


def test_refresh_swaps_to_a_newer_checkpoint_and_survives_a_bad_one(tiny_checkpoint, tmp_path, perturbed):
    src = tmp_path / "ckpt.pt"
    shutil.copy(tiny_checkpoint, src)
    cache = ProjectionCache(src)
    v1 = cache.current.version
    assert cache.refresh() is False  # same file: nothing to do
    perturbed(tiny_checkpoint, src)
    assert cache.refresh() is True and cache.current.version != v1
    src.write_bytes(b"garbage, as if half written")
    v2 = cache.current.version
    assert cache.refresh() is False and cache.current.version == v2  # keeps serving the last good one
    assert cache.reload_errors == 1 and "cannot read" in cache.last_error
    with pytest.raises(ModelNotReady):
        _ = ProjectionCache(src, load=False).current


@pytest.fixture(scope="module")
def two_versions(tiny_checkpoint, tmp_path_factory, perturbed):
    d = tmp_path_factory.mktemp("swap")
    a = load_model_version(tiny_checkpoint)
    b = load_model_version(perturbed(tiny_checkpoint, d / "b.pt"))
    return a, b


def test_no_request_mixes_versions_under_concurrent_swaps(two_versions, tiny_store, request_ts, known_items):
    a, b = two_versions
    cache = ProjectionCache(a.path, load=False)
    store = ClusterStore(tiny_store)
    scorer = Scorer(cache, store)
    rng = np.random.default_rng(4)
    requests = [(int(u), rng.choice(known_items, 50)) for u in (1, 2, 3, 5, 8, 13, 21, 34)]
    expected = {}
    for mv in (a, b):
        cache.swap(mv)
        expected[mv.version] = [scorer.score(u, items, request_ts).scores for u, items in requests]
    for ea, eb in zip(expected[a.version], expected[b.version]):
        assert np.abs(ea - eb).max() > 1e-3  # every request tells the versions apart
    # A request mixing versions (A's projections, B's tower) matches neither: the check below would see it.
    mixed = Scorer(cache, store)
    cache.swap(a)
    a_model = a.model
    object.__setattr__(a, "model", b.model)
    try:
        m = mixed.score(*requests[0], request_ts).scores
    finally:
        object.__setattr__(a, "model", a_model)
    assert np.abs(m - expected[a.version][0]).max() > 1e-4 and np.abs(m - expected[b.version][0]).max() > 1e-4

    stop, results, errors = threading.Event(), [], []

    def client(k):
        i = k
        while not stop.is_set():
            u, items = requests[i % len(requests)]
            try:
                r = scorer.score(u, items, request_ts)
            except Exception as e:  # noqa: BLE001 - any failure fails the test below
                errors.append(repr(e))
                return
            results.append((i % len(requests), r.model_version, r.scores))
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    swaps, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 3.0 or len({v for _, v, _ in results}) < 2:
        cache.swap(b if swaps % 2 == 0 else a)
        swaps += 1
        time.sleep(0.002)
        if time.monotonic() - t0 > 30:
            break
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert {v for _, v, _ in results} == {a.version, b.version} and swaps > 100 and len(results) > 20
    for i, version, scores in results:
        np.testing.assert_allclose(scores, expected[version][i], rtol=0, atol=1e-6)


def test_a_request_in_flight_finishes_on_its_version(two_versions, tiny_store, request_ts, known_items):
    a, b = two_versions
    cache = ProjectionCache(a.path, load=False)
    cache.swap(a)
    store = ClusterStore(tiny_store)
    inside, release = threading.Event(), threading.Event()

    class SlowStore:  # pauses the request after it took its model version
        def get(self, user):
            inside.set()
            release.wait(10)
            return store.get(user)

        def info(self, version):
            return store.info(version)

    scorer = Scorer(cache, SlowStore())  # type: ignore[arg-type]
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", scorer.score(3, known_items[:20], request_ts)))
    t.start()
    assert inside.wait(10)
    cache.swap(b)  # the swap lands while the request is in flight
    release.set()
    t.join()
    want = Scorer(ProjectionCache(a.path), store).score(3, known_items[:20], request_ts)
    assert out["r"].model_version == a.version
    np.testing.assert_allclose(out["r"].scores, want.scores, atol=1e-6)
    assert Scorer(cache, store).score(3, known_items[:20], request_ts).model_version == b.version
