"""The zero-shot reference of a model: what its own retrieval gives with the pre-trained similarity and no
training (issue 11; DESIGN.md "Learning from the first step").

The reference is the model at step 0, started from the pre-trained item vectors (`CTRModel.load_pretrained`):
its long-term module then retrieves and weighs by the pre-trained cosine (every GSU and ESU starts with its
item term dominant and neutral output maps, so the interest is a weighted mean of item vectors), and the
reference score of a sample is cos(e(target), bridge(interest)) (the bridge starts as the identity, or for the
TWIN + TWIN-V2 pair as the mean of its two interests). For Avg-Pooling that is the cosine with the mean of
the latest 100 behaviours; for TWIN the cosine with the softmax(κ cos)-weighted top 100 of the latest 10,000;
for TWIN-V2 the same over clusters with ln n. A learned model that does not beat its reference has learned
nothing its retrieval did not already know.
"""

from __future__ import annotations

import copy

import torch

from twinv2.models.batch import Batch
from twinv2.models.frame import CTRModel


def reference_model(model: CTRModel) -> CTRModel:
    """A frozen copy of `model` (call right after the pre-trained vectors are loaded, before any step)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


@torch.no_grad()
def zero_shot_scores(ref: CTRModel, batch: Batch) -> torch.Tensor:
    """cos(e(target), bridge(long-term interest)) per sample (B,); 0 for a sample with an empty history."""
    target = ref.items(batch.target)  # (B, D)
    interest = ref.bridge(ref.long_term(batch, target))  # (B, D): the neutral maps keep it in the item space
    return torch.nn.functional.cosine_similarity(target, interest, dim=-1, eps=1e-12)  # (B,)
