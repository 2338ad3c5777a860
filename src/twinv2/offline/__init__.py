"""Offline compression of a user's life cycle (TWIN-V2 §3.3.1–3.3.2): pure per-user estimators, no I/O.

- :func:`completion_groups`: rule-based grouping by playing completion ratio (Algorithm 1, step 1).
- :func:`kmeans`: one k-means call, faiss / numpy / sklearn backends.
- :class:`HierarchicalClusterer`: Algorithm 1 (adaptive δ = ⌊|V|^0.3⌋, binary, balanced binary).
- :func:`virtual_items`: cluster features, Eq. 5 (numeric mean) and Eq. 6–7 (categorical of nearest member).
- :func:`cluster_accuracy`: mean cosine similarity to the centroid (Table 4).
"""

from .grouping import DEFAULT_EDGES, completion_groups
from .hierarchical import VARIANTS, HierarchicalClusterer
from .kmeans import BACKENDS, kmeans
from .metrics import cluster_accuracy
from .virtual_items import nearest_members, virtual_items

__all__ = [
    "BACKENDS",
    "DEFAULT_EDGES",
    "VARIANTS",
    "HierarchicalClusterer",
    "cluster_accuracy",
    "completion_groups",
    "kmeans",
    "nearest_members",
    "virtual_items",
]
