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


def test_loaded_vectors_are_the_inherent_embedding_before_duration():
    feats = ItemFeatures(tables(), dim=32)
    vecs = np.random.default_rng(1).normal(size=(13, 32)).astype(np.float32)
    feats.load_pretrained(vecs)
    rows = torch.tensor([[0, 3, 12], [5, 5, 1]])
    got = feats(rows) - feats.dur(feats.dur_of[rows])  # (2, 3, D)
    want = torch.from_numpy(vecs)[rows]
    want[0, 0] = 0  # row 0 (unknown/padding) stays zero
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(feats.every_item() - feats.dur.weight[feats.dur_of], torch.cat([want[0, :1], torch.from_numpy(vecs[1:])]))


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
