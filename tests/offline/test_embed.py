"""Item embeddings K_s: training on pre-evaluation behaviours, the table's files, and the fallback."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from twinv2.config import from_dict
from twinv2.data.storage import DAY_MS, Dataset, ShardedWriter, eval_days, write_manifest, write_table
from twinv2.models.embeddings import ItemEmbedding, ItemVocab
from twinv2.offline.embed import (
    EmbedConfig,
    EmbeddingTable,
    _cuts,
    embed,
    sample_pairs,
    sgns_loss_and_grad,
    train_item_embeddings,
)
from twinv2.schema import BEHAVIOURS

T0 = 1_700_006_400_000 - 1_700_006_400_000 % DAY_MS  # a day boundary
EVAL_START = T0 + 10 * DAY_MS
TOPIC_A = np.arange(100, 110)  # authors 1 (100-104) and 2 (105-109), tag 10
TOPIC_B = np.arange(200, 210)  # authors 3 (200-204) and 4 (205-209), tag 20
LATE = 300  # author 1, tag 10: watched only at or after the first evaluation day
COLD = 301  # author 9 (no other item), tag 20, never watched
ORPHAN = 302  # unknown author and tag, never watched
FAST = EmbedConfig(dim=8, max_pairs=30_000, batch_size=1024, epochs=2, lr=0.1, threads=1)


def _items() -> pd.DataFrame:
    ids = np.r_[TOPIC_A, TOPIC_B, LATE, COLD, ORPHAN]
    author = np.r_[np.repeat([1, 2, 3, 4], 5), 1, 9, -1]
    tag = np.r_[np.full(10, 10), np.full(10, 20), 10, 20, -1]
    return pd.DataFrame({"item_id": ids, "author_id": author, "tag": tag, "duration_ms": 10_000})


def _world(root: Path, n_users: int = 40, length: int = 60, seed: int = 0) -> Path:
    """Users of topic A watch only A items, users of B only B; every third user also watches LATE on and
    after the first evaluation day's start (exactly at it, then an hour later)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        topic = TOPIC_A if u % 2 == 0 else TOPIC_B
        ts = T0 + np.sort(rng.choice(10 * DAY_MS - 1, size=length, replace=False))
        rows.append(pd.DataFrame({"user_id": u, "item_id": rng.choice(topic, size=length), "ts": ts}))
        if u % 3 == 0:
            rows.append(pd.DataFrame({"user_id": u, "item_id": [LATE, LATE, topic[0]],
                                      "ts": [EVAL_START, EVAL_START + 3_600_000, EVAL_START + 7_200_000]}))
    df = pd.concat(rows, ignore_index=True)
    df["play_ms"] = 5_000
    df["duration_ms"] = 10_000
    root.mkdir(parents=True, exist_ok=True)
    w = ShardedWriter(root, BEHAVIOURS, n_shards=3)
    w.append_frame(df)
    w.close()
    write_table(root / "items.parquet", _items())
    write_manifest(root, {"n_shards": 3, "eval_days": [asdict(d) for d in eval_days(EVAL_START, 5)]})
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return _world(tmp_path_factory.mktemp("world") / "ds")


@pytest.fixture(scope="module")
def trained(world) -> EmbeddingTable:
    return train_item_embeddings(Dataset(world), FAST, progress=False)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# ---- training ---------------------------------------------------------------------------------------------
def test_cowatched_items_are_closer(trained):
    va = _unit(trained.lookup(TOPIC_A))
    vb = _unit(trained.lookup(TOPIC_B))
    off = ~np.eye(10, dtype=bool)
    within = np.r_[(va @ va.T)[off], (vb @ vb.T)[off]].mean()
    across = (va @ vb.T).mean()
    assert within > across + 0.5, (within, across)


def test_nothing_at_or_after_before_ts_is_used(world, trained):
    assert trained.meta["before_ts"] == EVAL_START
    assert LATE not in set(trained.item_ids.tolist())  # only watched at/after EVAL_START
    assert set(trained.item_ids.tolist()) == set(TOPIC_A) | set(TOPIC_B)
    assert trained.source == {"trained": 20}
    # completed: LATE gets its author's mean (author 1 = items 100..104), not a vector of its own
    full = trained.complete(_items())
    expect = trained.lookup(TOPIC_A[:5]).astype(np.float64).mean(0)
    np.testing.assert_allclose(full.lookup([LATE])[0], expect, rtol=1e-6)
    assert full.source["fallback-author"] == 1
    # a later cut does include it
    later = train_item_embeddings(Dataset(world), FAST, before_ts=EVAL_START + 1, progress=False)
    assert LATE in set(later.item_ids.tolist())


def test_sample_pairs_stay_within_user_window_and_before_cut(world):
    ds = Dataset(world)
    window = 3
    allowed = set()
    for s in range(ds.n_shards):
        csr = ds.csr(s)
        for u in range(csr.n_users):
            lo, hi = csr.offsets[u], csr.offsets[u + 1]
            ok = [i for i in range(lo, hi) if csr.columns["ts"][i] < EVAL_START]
            for i in ok:
                for k in range(1, window + 1):
                    if i + k in ok:
                        allowed.add((int(csr.columns["item_id"][i]), int(csr.columns["item_id"][i + k])))
    left, right = sample_pairs(ds, 5000, window, EVAL_START, np.random.default_rng(0))
    assert left.shape == right.shape == (5000,)
    assert set(zip(left.tolist(), right.tolist())) <= allowed
    assert LATE not in set(left.tolist()) | set(right.tolist())


def test_cuts_match_a_per_user_binary_search():
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 30, size=50)
    offsets = np.r_[0, np.cumsum(lengths)]
    ts = np.concatenate([np.sort(rng.integers(0, 100, size=n)) for n in lengths])
    for before in (None, -1, 0, 37, 50, 1000):
        want = [offsets[u] + (lengths[u] if before is None else np.searchsorted(ts[offsets[u]:offsets[u + 1]],
                before, side="left")) for u in range(50)]
        np.testing.assert_array_equal(_cuts(ts, offsets, before), want)


def test_closed_form_gradient_matches_autograd():
    B, K, D = 13, 3, 11
    e = torch.randn(B * (2 + K), D, dtype=torch.float64, requires_grad=True)
    loss, grad = sgns_loss_and_grad(e.detach(), K)
    ea, ec, en = e[:B], e[B:2 * B], e[2 * B:].reshape(B, K, D)
    ref = (F.softplus(-(ea * ec).sum(-1)) + F.softplus(torch.einsum("bkd,bd->bk", en, ea)).sum(-1)).mean()
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()), rel=1e-12)
    torch.testing.assert_close(grad, e.grad)


def test_same_seed_same_vectors_other_seed_differs(world, trained):
    again = train_item_embeddings(Dataset(world), FAST, progress=False)
    np.testing.assert_array_equal(again.item_ids, trained.item_ids)
    np.testing.assert_array_equal(again.vectors, trained.vectors)
    other = train_item_embeddings(Dataset(world), from_dict(EmbedConfig, {**asdict(FAST), "seed": 1}),
                                  progress=False)
    assert not np.array_equal(other.vectors, trained.vectors)


def test_config_rejects_typos_and_bad_values():
    with pytest.raises(ValueError, match="windw"):
        from_dict(EmbedConfig, {"windw": 3})
    with pytest.raises(ValueError, match="negatives"):
        EmbedConfig(negatives=0)


def test_embed_writes_default_path_with_every_item(world, capsys):
    out = embed(world, cfg=FAST, progress=False)
    assert out == world / "embeddings" / "item_embeddings.parquet"
    assert "wrote" in capsys.readouterr().out
    table = EmbeddingTable.load(out)
    assert set(table.item_ids.tolist()) == set(_items()["item_id"].tolist())
    assert table.source == {"trained": 20, "fallback-author": 1, "fallback-tag": 1, "fallback-global": 1}
    assert table.meta["before_ts"] == EVAL_START
    assert out.with_suffix(".json").is_file()


# ---- the table: files and fallback ------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(tmp_path, trained):
    path = trained.save(tmp_path / "emb.parquet")
    back = EmbeddingTable.load(path)
    np.testing.assert_array_equal(back.item_ids, trained.item_ids)
    np.testing.assert_array_equal(back.vectors, trained.vectors)
    assert back.vectors.dtype == np.float32 and back.source == trained.source
    assert back.meta["before_ts"] == trained.meta["before_ts"]


def test_external_file_missing_items_fall_back_author_then_tag_then_global(tmp_path, world, capsys):
    rng = np.random.default_rng(7)
    have = np.r_[TOPIC_A[:3], TOPIC_A[6:], TOPIC_B[:5]]  # no item of author 4 (205-209), none of author 9
    vecs = rng.normal(size=(len(have), 5))
    ext = tmp_path / "ext.csv"
    pd.DataFrame({"item_id": have[::-1], **{f"v{d}": vecs[::-1, d] for d in range(5)}}).to_csv(ext, index=False)
    out = embed(world, tmp_path / "out.parquet", embeddings_file=ext)
    table = EmbeddingTable.load(out)
    assert table.dim == 5
    np.testing.assert_allclose(table.lookup(have), vecs, rtol=1e-6)

    def mean(ids):
        return vecs[np.isin(have, ids)].mean(0)

    by_author1 = mean(TOPIC_A[:5])  # 100, 101, 102 present
    by_tag20 = mean(TOPIC_B)  # 200..204 present
    glob = vecs.mean(0)
    expect = {103: by_author1, 104: by_author1, LATE: by_author1,  # author 1
              105: mean(TOPIC_A[5:]),  # author 2: 106..109 present
              205: by_tag20, 209: by_tag20, COLD: by_tag20,  # authors 4 and 9 have nothing: tag 20
              ORPHAN: glob}  # unknown author and tag
    for item, v in expect.items():
        np.testing.assert_allclose(table.lookup([item])[0], v, rtol=1e-5, err_msg=str(item))
    assert table.source == {"file": 12, "fallback-author": 4, "fallback-tag": 6, "fallback-global": 1}
    # lookup straight from the external table, with counts; an id unknown everywhere gets the global mean
    ext_table = EmbeddingTable.load(ext)
    got, counts = ext_table.lookup([100, 103, 205, ORPHAN, 999_999], _items(), return_counts=True)
    np.testing.assert_allclose(got, np.stack([vecs[0], by_author1, by_tag20, glob, glob]),
                               rtol=1e-5)
    assert counts == {"found": 1, "fallback-author": 1, "fallback-tag": 1, "fallback-global": 2}


def test_lookup_without_items_table_uses_global_mean():
    t = EmbeddingTable(np.array([1, 5]), np.array([[1.0, 0.0], [3.0, 2.0]], np.float32))
    np.testing.assert_allclose(t.lookup([5, 7]), [[3.0, 2.0], [2.0, 1.0]])


@pytest.mark.parametrize("fmt", ["parquet", "csv", "npz", "npy", "list"])
def test_load_accepts_each_format(tmp_path, fmt):
    ids = np.array([9, 3, 5])
    v = np.arange(6, dtype=np.float32).reshape(3, 2) / 7
    path = tmp_path / f"e.{'parquet' if fmt == 'list' else fmt}"
    if fmt == "parquet":
        pd.DataFrame({"item_id": ids, "e0": v[:, 0], "e1": v[:, 1]}).to_parquet(path)
    elif fmt == "list":
        pd.DataFrame({"item_id": ids, "vector": list(v)}).to_parquet(path)
    elif fmt == "csv":
        pd.DataFrame({"item_id": ids, "a": v[:, 0], "b": v[:, 1]}).to_csv(path, index=False)
    elif fmt == "npz":
        np.savez(path, item_id=ids, vectors=v)
    else:
        np.save(path, np.c_[ids, v])
    t = EmbeddingTable.load(path)
    np.testing.assert_array_equal(t.item_ids, [3, 5, 9])
    np.testing.assert_allclose(t.vectors, v[[1, 2, 0]], rtol=1e-6)


def _bad_files(tmp: Path) -> list[tuple[Path, str]]:
    out = []
    p = tmp / "nan.csv"
    pd.DataFrame({"item_id": [1, 2, 3], "e0": [0.1, np.nan, 0.3], "e1": [1.0, 2.0, 3.0]}).to_csv(p, index=False)
    out.append((p, r"row 1 \(item_id 2\).*NaN"))
    p = tmp / "inf.parquet"
    pd.DataFrame({"item_id": [1, 2], "e0": [0.1, np.inf]}).to_parquet(p)
    out.append((p, r"item_id 2.*infinite"))
    p = tmp / "ragged.parquet"
    pd.DataFrame({"item_id": [1, 2, 3], "vector": [[0.1, 0.2], [0.3, 0.4], [0.5]]}).to_parquet(p)
    out.append((p, r"dimension.*row 2 \(item_id 3\) has 1"))
    p = tmp / "shape.npz"
    np.savez(p, item_id=np.arange(4), vectors=np.zeros((3, 2)))
    out.append((p, r"one row per item_id"))
    p = tmp / "gap.parquet"
    pd.DataFrame({"item_id": [1], "e0": [0.0], "e2": [1.0]}).to_parquet(p)
    out.append((p, r"e0\.\.e1"))
    p = tmp / "dup.csv"
    pd.DataFrame({"item_id": [4, 7, 4], "e0": [0.0, 1.0, 2.0]}).to_csv(p, index=False)
    out.append((p, r"duplicate item_id 4 \(rows \[0, 2\]"))
    p = tmp / "noid.csv"
    pd.DataFrame({"id": [1, 2], "e0": [0.0, 1.0]}).to_csv(p, index=False)
    out.append((p, r"no 'item_id' column"))
    p = tmp / "noid.npy"
    np.save(p, np.zeros(5))
    out.append((p, r"no item_id column"))
    p = tmp / "text.csv"
    pd.DataFrame({"item_id": [1, 2], "e0": ["0.5", "abc"]}).to_csv(p, index=False)
    out.append((p, r"column 'e0' row 1 \(item_id 2\) is not a number"))
    p = tmp / "floatid.csv"
    pd.DataFrame({"item_id": [1.0, 2.5], "e0": [0.0, 1.0]}).to_csv(p, index=False)
    out.append((p, r"item_id in row 1 is not an integer"))
    p = tmp / "emb.txt"
    p.write_text("x")
    out.append((p, r"unsupported"))
    return out


def test_bad_files_raise_naming_file_and_problem(tmp_path):
    for path, pattern in _bad_files(tmp_path):
        with pytest.raises(ValueError) as err:
            EmbeddingTable.load(path)
        msg = str(err.value)
        assert str(path) in msg, msg
        assert re.search(pattern, msg), (pattern, msg)


def test_save_refuses_non_parquet_name(tmp_path):
    t = EmbeddingTable(np.array([1]), np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="Parquet"):
        t.save(tmp_path / "x.csv")


# ---- shapes -----------------------------------------------------------------------------------------------
def test_shapes_with_mismatched_dims():
    N, D = 37, 11
    rng = np.random.default_rng(0)
    items = pd.DataFrame({"item_id": rng.permutation(1000)[:23] * 3 + 5, "author_id": rng.integers(-1, 7, 23),
                          "tag": rng.integers(-1, 4, 23)})
    vocab = ItemVocab.from_items(items)
    assert vocab.n_items == 24 and vocab.author_of.shape == vocab.tag_of.shape == (24,)
    ids = items["item_id"].to_numpy()
    query = np.r_[ids, [-4, 2, 10**12], ids[:11]]  # (N,): 3 ids not in the items table
    rows = vocab.rows(query)
    assert rows.shape == (N,)
    assert (rows[23:26] == 0).all() and (np.delete(rows, [23, 24, 25]) > 0).all()
    np.testing.assert_array_equal(vocab.item_ids[rows[:23] - 1], ids)
    raw = items["author_id"].to_numpy()
    author = vocab.author_rows(query)
    np.testing.assert_array_equal(author[:23], np.where(raw >= 0, np.searchsorted(vocab.author_ids, raw) + 1, 0))
    assert (author[23:26] == 0).all()
    model = ItemEmbedding.from_vocab(vocab, dim=D)
    out = model(torch.from_numpy(rows), torch.from_numpy(author), torch.from_numpy(vocab.tag_rows(query)))
    assert out.shape == (N, D)
    assert torch.equal(out[23], torch.zeros(D))  # unknown item, author and tag: all padding rows
    table = EmbeddingTable(np.arange(N) * 2, rng.normal(size=(N, D)))
    assert table.lookup(np.arange(2 * N)).shape == (2 * N, D)
    np.testing.assert_allclose(table.lookup([1])[0], table.vectors.mean(0), rtol=1e-5)


@pytest.mark.parametrize("span", [1_000, 10**12])  # dense ids use a direct table, sparse ones a search
def test_vocab_rows_match_binary_search(span):
    rng = np.random.default_rng(span % 97)
    ids = rng.choice(span, 400, replace=False) - 300
    vocab = ItemVocab.from_items(pd.DataFrame({"item_id": ids, "author_id": 0, "tag": 0}))
    query = np.r_[ids, rng.integers(ids.min() - 50, ids.max() + 50, 3000), [-(2**62), 2**62]]
    want = np.searchsorted(np.sort(ids), query) + 1
    want[~np.isin(query, ids)] = 0
    np.testing.assert_array_equal(vocab.rows(query), want)
