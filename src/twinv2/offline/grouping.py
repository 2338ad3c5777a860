"""Rule-based grouping by playing completion ratio (TWIN-V2 §3.3.1, Algorithm 1 line 1).

Without this step k-means, which sees embeddings only, would put a video watched to the end and one skipped
after a second in the same cluster; the paper groups behaviours by completion ratio first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_EDGES: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)


def validate_edges(edges: Sequence[float]) -> np.ndarray:
    """Return ``edges`` as a float64 array, or raise ValueError naming the offending value.

    Edges must be finite, strictly increasing and strictly inside (0, 1); an empty sequence means one group.
    """
    arr = np.asarray(edges, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"edges must be a 1-D sequence of floats, got {edges!r}")
    for e in arr:
        if not (0.0 < e < 1.0):
            raise ValueError(f"edges must lie strictly inside (0, 1); got edge {e!r} in {tuple(edges)!r}")
    if arr.size > 1 and not np.all(np.diff(arr) > 0):
        i = int(np.argmin(np.diff(arr) > 0))
        raise ValueError(
            f"edges must be strictly increasing; got {arr[i]!r} followed by {arr[i + 1]!r} in {tuple(edges)!r}"
        )
    return arr


def completion_groups(
    play_ms: np.ndarray,
    duration_ms: np.ndarray,
    edges: Sequence[float] = DEFAULT_EDGES,
) -> np.ndarray:
    """Group id per behaviour from its completion ratio ``p = play_ms / duration_ms``.

    With M = ``len(edges) + 1`` the ratio bins are **left-closed**: group 0 is ``p < edges[0]``, group ``j`` is
    ``edges[j-1] <= p < edges[j]`` and group ``M-1`` is ``p >= edges[-1]``. So with the default edges (five equal
    bins of [0, 1], as in the paper) ``p = 0.2`` falls in group 1, ``p = 1.0`` in group 4, and any ``p >= 1``
    (replays, a play longer than the video) also in the top group 4.

    Unknown-ratio group (index ``M``, i.e. 5 by default): behaviours whose ratio is undefined — duration zero,
    negative or NaN, play time NaN or negative. The design keeps such rows (no crash, no silent drop); they are
    clustered among themselves by embedding like any other group.

    Args:
        play_ms: (T,) playing time, any real dtype.
        duration_ms: (T,) video duration, same length.
        edges: inner bin edges, strictly increasing in (0, 1).

    Returns:
        (T,) int64 group ids in ``0..M`` (``M`` = unknown ratio).
    """
    e = validate_edges(edges)
    play = np.asarray(play_ms, dtype=np.float64)
    dur = np.asarray(duration_ms, dtype=np.float64)
    if play.ndim != 1 or dur.shape != play.shape:
        raise ValueError(f"play_ms and duration_ms must be 1-D of equal length; got {play.shape} and {dur.shape}")
    known = (dur > 0) & (play >= 0)  # False for NaN as well
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(known, play / np.where(known, dur, 1.0), 0.0)
    # Counting edges <= p makes bins left-closed; p >= 1 passes every edge. (Faster than searchsorted for M ~ 5.)
    groups = np.zeros(len(p), dtype=np.int64)
    for edge in e:
        groups += p >= edge
    groups[~known] = len(e) + 1
    return groups
