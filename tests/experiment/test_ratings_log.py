"""Issue 13's "Done when": a log shaped like a public ratings log (1990s unix seconds, ratings 1-5, genres as
text, a pipe-separated users file) goes through `twinv2 import mapped` with a YAML mapping alone (no
preprocessing) and `twinv2 experiment --config` on it, both started as a user starts them, from an empty
folder; the report has every section that applies to a log without ground truth and none wrongly missing."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from twinv2.serve.server import cli_command

GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
START, END = "1997-11-11", "1997-12-10"  # unix seconds from the 1990s: outside the default 2000-2100 range
# Sessions start by UTC hour, evenings busiest (so each test hour, 23:00-24:00, holds a few users' sessions).
HOURS = np.array([6, 5, 4, 3, 2, 1, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 6, 7, 8, 9, 10, 10], dtype=float)

MAPPING = {
    "name": "ratings-log",
    "inputs": ["ratings.csv"],
    "columns": {"user": "userId", "item": "movieId", "time": "timestamp", "time_unit": "s",
                "time_range": [1990, 2000], "label": {"column": "rating", "ge": 4}},
    "categorical": ["genres", "gender", "occupation"],
    "multi_value_sep": "|",
    "split": {"last_days": 5, "history": "all"},
    "items": {"path": "movies.csv", "item": "movieId", "tag": "genres"},
    "users": {"path": "users.dat", "sep": "|", "user": "user_id", "features": ["age", "gender", "occupation"]},
}
# The smallest experiment that still computes every section that applies to imported data.
EXPERIMENT = {"name": "ratings", "dataset": "DS", "models": ["din", "twin", "twin_v2"], "seeds": 1,
              "ablation": True, "cluster_bench_users": 2, "train": {"max_train_per_day": 300},
              "embed": {"max_pairs": 50_000}, "cluster": {"workers": 1}}


def ratings_log(folder: Path, n_users: int = 200, n_items: int = 600, seed: int = 0) -> pd.DataFrame:
    """ratings.csv (userId,movieId,rating,timestamp in unix s), movies.csv (movieId,title,genres "A|B", titles
    with commas quoted) and users.dat (pipe-separated), as public ratings logs ship them; ratings follow each
    user's genre taste, so there is something to learn. Returns the ratings."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    main = rng.integers(0, len(GENRES), n_items)
    genres = ["|".join(dict.fromkeys([GENRES[g], *(GENRES[x] for x in rng.integers(0, len(GENRES), k))]))
              for g, k in zip(main, rng.integers(0, 3, n_items))]
    titles = [f"Movie {i}, The (19{rng.integers(30, 98)})" for i in range(1, n_items + 1)]
    pd.DataFrame({"movieId": np.arange(1, n_items + 1), "title": titles, "genres": genres}).to_csv(
        folder / "movies.csv", index=False)
    pd.DataFrame({"user_id": np.arange(1, n_users + 1), "age": rng.integers(7, 74, n_users),
                  "gender": rng.choice(["M", "F"], n_users), "occupation": rng.choice(["student", "writer", "none",
                                                                                       "engineer"], n_users),
                  "zip_code": [f"{z:05d}" for z in rng.integers(0, 99_999, n_users)]}).to_csv(
        folder / "users.dat", sep="|", index=False)
    t0 = int(pd.Timestamp(START, tz="UTC").timestamp())
    t1 = int(pd.Timestamp(END, tz="UTC").timestamp()) + 86_399
    pop = 1.0 / (rng.permutation(n_items) + 5.0)
    taste = rng.dirichlet(np.full(len(GENRES), 0.3), n_users)
    rows = []
    for u, n in enumerate(rng.integers(20, 90, n_users)):
        w = pop * (0.2 + 5 * taste[u, main])
        items = rng.choice(n_items, n, replace=False, p=w / w.sum())
        score = 2.9 + 0.7 * np.log1p(taste[u, main[items]] * len(GENRES)) + rng.normal(0, 0.8, n)
        ts = np.sort(sessions(rng, n, t0, t1))
        rows.append(pd.DataFrame({"userId": u + 1, "movieId": items + 1, "rating": np.clip(np.round(score), 1, 5)
                                  .astype(int), "timestamp": ts}))
    log = pd.concat(rows, ignore_index=True).sort_values("timestamp", kind="stable")
    log.to_csv(folder / "ratings.csv", index=False)
    return log


def sessions(rng: np.random.Generator, n: int, t0: int, t1: int) -> np.ndarray:
    """`n` rating times (unix s) in sessions of ~10 ratings, 5-90 s apart, each session on a uniform day at an
    hour drawn from HOURS."""
    k = max(1, n // 10)
    day = rng.integers(t0 // 86_400, t1 // 86_400 + 1, k)
    start = day * 86_400 + rng.choice(24, k, p=HOURS / HOURS.sum()) * 3_600 + rng.integers(0, 2_700, k)
    which = np.sort(rng.integers(0, k, n))
    step = np.concatenate([np.cumsum(rng.integers(5, 90, (which == j).sum())) for j in range(k)])
    return np.minimum(start[which] + step, t1)


def twinv2(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*cli_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def section(md: str, title: str) -> str:
    """The text of the report section whose heading starts with `title`, up to the next heading of its level."""
    m = re.search(rf"^(#+) {re.escape(title)}.*$", md, flags=re.M)
    assert m, f"no section {title!r} in the report; its headings: {re.findall(r'^#+ .*$', md, flags=re.M)}"
    end = re.search(rf"^#{{1,{len(m.group(1))}}} ", md[m.end():], flags=re.M)
    return md[m.end(): m.end() + end.start() if end else len(md)]


@pytest.mark.slow
def test_a_ratings_log_imports_with_a_mapping_alone_and_runs_the_experiment(tmp_path):
    log = ratings_log(tmp_path / "log")
    (tmp_path / "log" / "m.yaml").write_text(yaml.safe_dump(MAPPING, sort_keys=False))
    work = tmp_path / "work"  # the user's empty folder
    work.mkdir()
    r = twinv2(["import", "mapped", "--mapping", "../log/m.yaml", "--out", "DS"], work)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((work / "DS" / "manifest.json").read_text())
    n = len(log)
    # The import says what it did: rows in = stored + quarantined + unused, and the window's test hours.
    assert f"ratings.csv (log): {n:,} rows in = {n:,} stored" in r.stdout and "+ 0 quarantined + 0 unused" in r.stdout
    days = manifest["eval_window"]["days"]
    assert [d["label"] for d in days] == ["1997-12-06", "1997-12-07", "1997-12-08", "1997-12-09", "1997-12-10"]
    for d in days:
        assert f"  {d['label']}: {d['samples']:,} / {d['test_samples']:,} / {d['test_positives']:,}" in r.stdout
        assert 0 < d["test_positives"] < d["test_samples"]  # both labels in every test hour
    # label = rating >= 4 (a rule), genres coded from text by their first value, history = every rating
    assert manifest["counts"]["behaviours"] == n and manifest["counts"]["quarantined"] == 0
    assert manifest["mapping"]["derived"] == {"label": "1 where rating ge 4, else 0"}
    from twinv2.data.storage import Dataset

    ds = Dataset(work / "DS")
    smp = ds.samples()
    tail = log[log["timestamp"] >= pd.Timestamp("1997-12-06", tz="UTC").timestamp()]
    assert len(smp) == len(tail) and smp["label"].sum() == (tail["rating"] >= 4).sum()
    codes = manifest["codes"]["genres"]
    movies = pd.read_csv(tmp_path / "log" / "movies.csv")
    first = movies.set_index("movieId")["genres"].str.split("|").str[0]
    items = pd.read_parquet(work / "DS" / "items.parquet").set_index("item_id")
    assert (items["tag"] == first.loc[items.index].map(codes)).all()

    (work / "exp.yaml").write_text(yaml.safe_dump(EXPERIMENT))
    r = twinv2(["experiment", "--config", "exp.yaml", "--quiet"], work)
    assert r.returncode == 0, r.stderr[-3000:]
    exp = work / "out" / "ratings"  # the default --out
    md = (exp / "report" / "report.md").read_text()
    assert not (exp / "sweep").exists() and not (exp / "kuairand").exists()

    # Every section that applies to imported data is computed ...
    t3 = section(md, "Table 3 analog")
    assert "| DIN |" in t3 and "| TWIN |" in t3 and "| TWIN-V2 |" in t3 and "Oracle" not in t3
    assert "Test hours: " + ", ".join(f"{d['test_samples']:,}" for d in days) in t3
    assert "| DIN |" in section(md, "Learned vs zero-shot reference")
    assert "| TWIN-V2 |" in section(md, "Learning curve")
    assert "| no ln n in GSU |" in section(md, "Figure 4 analog")
    assert "| low |" in section(md, "Figure 5 analog")
    assert "distinct tags in top" in section(md, "Diversity of recommendations")
    t4 = section(md, "Table 4 analog")  # on this log's own history lengths; a target set for T = 14,500 says so
    assert re.search(r"Users: DS: the 2 longest histories \(T = \d+ to \d+ behaviours, median \d+\)", t4), t4
    assert all("not comparable" in line or "a fortiori" in line for line in t4.splitlines() if "14,500" in line)
    assert "| before-" in section(md, "Cost")  # a cluster snapshot per evaluation day, with its cost
    # ... what needs a world's ground truth says so, and nothing is wrongly "Not run"
    assert "imported data lacks" in section(md, "Retrieval diagnostics")
    assert "The premise on this log" in md
    body = md.split("# Far-past-signal sweep")[0]
    assert "Not run in this experiment" not in body, [l for l in body.splitlines() if "Not run" in l]
    # No generated-world wording: no oracle, no p_true, no generated-world caveat
    assert "p_true" not in md and "runs on a generated world" not in md and "Oracle" not in md
    caveats = section(md, "How to read this")
    assert "a log without ground truth" in caveats

    tables = json.loads((exp / "report" / "tables.json").read_text())
    main = tables["main"]
    assert main["truth"] is False and not main["table3"]["oracle"]
    snaps = sorted(s["snapshot_ts"] for s in main["cost"]["snapshots"])
    assert snaps == [d.start_ms for d in ds.eval_days]  # cluster_cadence daily (the default)
    from twinv2.report import check_report

    assert check_report(exp) == []
