"""Starting the CTR model's item tables from the offline embedding table (TrainConfig.item_init)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinv2.models.frame import ItemFeatures, ItemTables
from twinv2.train.trainer import TrainConfig


def tables(n_items=13, n_authors=5, n_tags=7, n_dur=3, seed=0):
    rng = np.random.default_rng(seed)
    return ItemTables(author_of=np.r_[0, rng.integers(1, n_authors, n_items - 1)],
                      tag_of=np.r_[0, rng.integers(1, n_tags, n_items - 1)],
                      dur_of=np.r_[0, rng.integers(0, n_dur, n_items - 1)],
                      n_authors=n_authors, n_tags=n_tags, n_dur=n_dur)


def test_loaded_vectors_keep_their_cosines_at_one_norm_and_nothing_is_added():
    feats = ItemFeatures(tables(), dim=32)
    rng = np.random.default_rng(1)
    vecs = (rng.normal(size=(13, 32)) * rng.uniform(0.2, 3.0, size=(13, 1))).astype(np.float32)  # mixed norms
    feats.load_pretrained(vecs)
    got = feats.every_item()  # (13, D): item + author + tag + duration after loading
    torch.testing.assert_close(got[0], torch.zeros(32))  # row 0 (unknown/padding) stays zero
    norms = got[1:].norm(dim=1)
    rms = float(np.sqrt((np.linalg.norm(vecs[1:], axis=1) ** 2).mean()))
    torch.testing.assert_close(norms, torch.full((12,), rms), rtol=1e-5, atol=1e-5)
    v = torch.from_numpy(vecs[1:])
    want_cos = torch.nn.functional.cosine_similarity(v[:, None], v[None], dim=-1)  # (12, 12)
    got_cos = torch.nn.functional.cosine_similarity(got[1:, None], got[None, 1:], dim=-1)
    torch.testing.assert_close(got_cos, want_cos, rtol=1e-5, atol=1e-5)
    rows = torch.tensor([[0, 3, 12], [5, 5, 1]])
    torch.testing.assert_close(feats(rows), got[rows])  # the lookup path equals the every-item path
    assert float(feats.dur.weight.detach().abs().max()) == 0.0  # the duration table adds nothing at the start


def test_duration_table_starts_at_zero_without_pretraining():
    feats = ItemFeatures(tables(n_dur=5), dim=8)
    assert float(feats.dur.weight.detach().abs().max()) == 0.0


@pytest.mark.parametrize("shape", [(12, 32), (13, 31)])
def test_wrong_shape_names_both_shapes(shape):
    feats = ItemFeatures(tables(), dim=32)
    with pytest.raises(ValueError, match=r"\(13, 32\)"):
        feats.load_pretrained(np.zeros(shape, np.float32))


@pytest.mark.parametrize("kw, match", [({"item_init": "pretrained"}, "pretrained"),
                                       ({"passes_per_day": 0}, "passes_per_day=0")])
def test_train_config_rejects(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)
