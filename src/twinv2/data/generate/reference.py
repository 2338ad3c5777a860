"""What the generated world borrows from KuaiRand (Gao et al., CIKM 2022; CC BY-SA 4.0), as measured numbers.

The package must run where the KuaiRand files are absent, so the few distributions the generator needs are
embedded here as summary statistics (quantiles and counts, not rows). `measure` recomputes every one of them
from the files; a test checks that the constants below equal what the files say, so they cannot drift.

- Primary-tag counts of `video_features_basic_pure.csv` (the `tag` column can be "39,68": the first is the
  primary tag; 96 of 7,583 videos have no tag).
- `video_duration` quantiles (ms) of the same file.
- Playing completion ratio play_time_ms / duration_ms of `kuairand27k_likehate_k15.tsv` (rows with a known,
  positive duration; 18.5% of the rows have duration_ms = 0).
- Hour-of-day counts (`hourmin // 100`, the log's local clock) of the same log.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VIDEO_FILE = "video_features_basic_pure.csv"
LOG_FILE = "kuairand27k_likehate_k15.tsv"

# Probability grid of the embedded quantiles: every percent plus two points in the upper tail, where the
# completion ratio has its long replay tail (99%: 4.4, 99.9%: 9.6).
QUANTILE_PROBS = np.r_[np.arange(100) / 100.0, 0.995, 0.999]

# (tag, number of videos whose primary tag it is), most frequent first.
TAG_COUNTS: tuple[tuple[int, int], ...] = (
    (39, 1437), (3, 732), (20, 675), (12, 606), (9, 418), (6, 378), (7, 340), (2, 289), (1, 254), (15, 245),
    (17, 220), (8, 177), (11, 175), (62, 161), (28, 145), (25, 136), (19, 96), (4, 90), (5, 87), (10, 87),
    (26, 82), (18, 59), (38, 54), (27, 48), (67, 46), (14, 43), (36, 41), (24, 41), (21, 41), (22, 37),
    (29, 35), (34, 35), (13, 33), (35, 33), (30, 31), (42, 29), (65, 14), (16, 13), (37, 11), (40, 5),
    (56, 4), (23, 3), (68, 1),
)
UNTAGGED_VIDEOS = 96
N_VIDEOS = 7583

# video_duration (ms) at QUANTILE_PROBS followed by the maximum (probability 1).
DURATION_QUANTILES_MS: tuple[int, ...] = (
    5000, 7444, 8431, 9200, 10131, 10725, 11386, 12166, 12890, 13811, 14593, 15233, 16149, 16966, 17900, 18800,
    19633, 20520, 21924, 23122, 24486, 25867, 27466, 29000, 30366, 31950, 33506, 35233, 37250, 38800, 40766,
    42444, 44775, 46929, 49533, 51833, 54590, 57200, 59284, 61225, 62733, 64477, 66135, 67840, 69230, 71145,
    72840, 74912, 76721, 78771, 81170, 83264, 84962, 86477, 87852, 89421, 91505, 93563, 95637, 97966, 100153,
    102746, 106000, 109085, 111850, 114416, 116713, 119980, 122869, 126122, 129818, 133360, 136763, 140466,
    144388, 148228, 153094, 157291, 162020, 166194, 170300, 176189, 180645, 185600, 191463, 197374, 204596,
    211021, 218766, 228208, 237830, 249544, 258493, 271716, 287084, 303456, 321813, 358396, 413666, 510023,
    610238, 766114, 1177720,
)

# play_time_ms / duration_ms at QUANTILE_PROBS (rows with duration_ms > 0). 2.5% of them are exactly 0.
RATIO_QUANTILES: tuple[float, ...] = (
    0.0, 0.0, 0.0, 0.0058, 0.012, 0.0174, 0.0232, 0.029, 0.0366, 0.0438, 0.0519, 0.0609, 0.0709, 0.0824, 0.0944,
    0.1061, 0.1185, 0.1306, 0.1439, 0.1583, 0.1731, 0.1868, 0.2004, 0.2155, 0.2299, 0.2448, 0.2593, 0.2739,
    0.2914, 0.309, 0.3295, 0.3491, 0.3702, 0.3913, 0.4122, 0.435, 0.4584, 0.482, 0.5054, 0.5333, 0.5597, 0.5871,
    0.6094, 0.633, 0.6556, 0.6762, 0.7029, 0.7257, 0.7496, 0.7749, 0.7999, 0.8222, 0.8437, 0.8649, 0.8862,
    0.9058, 0.9226, 0.9385, 0.953, 0.9671, 0.9795, 0.9896, 0.9987, 1.0062, 1.0131, 1.0201, 1.0262, 1.0332,
    1.0403, 1.0482, 1.057, 1.0662, 1.0777, 1.0897, 1.1019, 1.1153, 1.1309, 1.1479, 1.1668, 1.192, 1.218, 1.2478,
    1.2792, 1.3192, 1.3706, 1.4277, 1.4935, 1.5738, 1.6485, 1.729, 1.8155, 1.8934, 1.9692, 2.0437, 2.1363,
    2.3075, 2.5815, 2.9372, 3.3987, 4.3984, 5.7038, 9.558,
)
UNKNOWN_DURATION_SHARE = 0.185  # rows of the 27K log with duration_ms = 0

# Behaviours per hour of day 0..23. Hour 23 holds 6.2% of the day: the test hour is a busy one.
HOUR_COUNTS: tuple[int, ...] = (
    1590, 843, 445, 265, 212, 235, 606, 1138, 1371, 1605, 1829, 2165, 2663, 2798, 1753, 1705, 2034, 2369, 2776,
    2654, 2493, 2670, 3028, 2581,
)


def tag_shares(n_tags: int) -> tuple[np.ndarray, np.ndarray]:
    """(tag ids, shares summing to 1) of the `n_tags` most frequent primary tags."""
    tags = np.array([t for t, _ in TAG_COUNTS[:n_tags]], dtype=np.int64)
    counts = np.array([c for _, c in TAG_COUNTS[:n_tags]], dtype=np.float64)
    return tags, counts / counts.sum()


def hour_profile() -> np.ndarray:
    """Share of activity in each hour of the day (24 values summing to 1)."""
    h = np.asarray(HOUR_COUNTS, dtype=np.float64)
    return h / h.sum()


def sample_durations(u: np.ndarray) -> np.ndarray:
    """Inverse CDF of the KuaiRand duration distribution at uniforms `u`; log-linear between quantiles (ms)."""
    probs = np.r_[QUANTILE_PROBS, 1.0]
    logq = np.log(np.asarray(DURATION_QUANTILES_MS, dtype=np.float64))
    return np.rint(np.exp(np.interp(u, probs, logq))).astype(np.int64)


def measure(kuairand_dir: str | Path) -> dict[str, object]:
    """Recompute every constant of this module from the KuaiRand files (needs pandas; used by tests)."""
    import pandas as pd

    d = Path(kuairand_dir)
    v = pd.read_csv(d / VIDEO_FILE)
    primary = v["tag"].dropna().astype(str).str.split(",").str[0].astype(int).value_counts()
    dur = v["video_duration"].dropna().to_numpy()
    log = pd.read_csv(d / LOG_FILE, sep="\t")
    ok = (log["duration_ms"] > 0) & (log["play_time_ms"] >= 0)
    ratio = (log["play_time_ms"] / log["duration_ms"])[ok].to_numpy()
    hours = (log["hourmin"] // 100).value_counts().reindex(range(24), fill_value=0)
    return {
        "tag_counts": list(zip(primary.index.tolist(), primary.tolist())),
        "untagged": int(v["tag"].isna().sum()),
        "n_videos": len(v),
        "duration_quantiles_ms": np.round(np.quantile(dur, np.r_[QUANTILE_PROBS, 1.0])).astype(int).tolist(),
        "ratio_quantiles": np.round(np.quantile(ratio, QUANTILE_PROBS), 4).tolist(),
        "unknown_duration_share": float((log["duration_ms"] == 0).mean()),
        "hour_counts": hours.tolist(),
    }
