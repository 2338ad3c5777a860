"""`twinv2 export`: both formats round-trip the tiny world (and a small imported log with extra behaviour
columns) with every sample's history equal to our own batcher's, no behaviour at or after the sample time, the
trainer's splits, and refusals of bad arguments.

max_len = 7 and batches of 13 are deliberately unlike every other length here, so a swapped axis, an
off-by-one at the cut or a history kept from the wrong end fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from twinv2.cli import main
from twinv2.data.importers import import_mapped
from twinv2.data.storage import DAY_MS, HOUR_MS, Dataset
from twinv2.schema import completion_ratio
from twinv2.train.batching import Batcher
from twinv2.train.export import export_dataset
from twinv2.train.trainer import item_tables

L = 7  # max_len
B = 13  # batch size of the batcher comparisons
FIX = Path(__file__).resolve().parents[1] / "data" / "fixtures"
MAPPING = {  # the import tests' fixture log: two evaluation days, extra columns `liked` and `page`
    "name": "tiny", "inputs": ["tiny_log.csv"],
    "columns": {"user": "uid", "item": "photo", "time": "t_s", "time_unit": "s", "label": "clicked",
                "play": "watch_ms", "duration": "len_ms"},
    "cross_features": ["liked", "page"], "sample_features": ["page"],
    "split": {"last_days": 2, "day_offset_hours": 0, "history": "label == 1"},
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("log")
    for f in ("tiny_log.csv", "tiny_items.csv"):
        shutil.copy(FIX / f, d / f)
    (d / "map.yaml").write_text(yaml.safe_dump(MAPPING, sort_keys=False))
    return import_mapped(d / "map.yaml", d / "ds", n_shards=3)


@pytest.fixture(scope="module", params=["tiny_world", "imported"])
def dataset(request) -> Path:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def exports(dataset, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exports")
    return {f: export_dataset(dataset, out / f, f, max_len=L, progress=False) for f in ("longctr", "sequences")}


def read_splits(folder: Path) -> dict[str, pd.DataFrame]:
    return {s: pd.read_parquet(folder / f"{s}.parquet") for s in ("train", "valid", "test")}


def full_history_lengths(ds: Dataset, uid: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Brute force, independent of the CSR searches: behaviours of the user with ts < the sample's."""
    return np.array([int((ds.history(int(u))["ts"] < t).sum()) for u, t in zip(uid, ts)])


# ---- splits -------------------------------------------------------------------------------------------------
def expected_split(ds: Dataset, ts: np.ndarray) -> np.ndarray:
    """Split of each sample time from the hour of its day, computed without the EvalDay masks."""
    out = np.full(len(ts), "", dtype=object)
    for d in ds.warmup_days:
        out[(ts >= d.start_ms) & (ts < d.start_ms + DAY_MS)] = "train"
    for d in ds.eval_days:
        inside = (ts >= d.start_ms) & (ts < d.start_ms + DAY_MS)
        hour = (ts - d.start_ms) // HOUR_MS
        out[inside] = np.where(hour[inside] == 23, "test", np.where(hour[inside] == 22, "valid", "train"))
    return out


def test_splits_are_the_trainers_in_time_order(dataset, exports):
    ds = Dataset(dataset)
    s = ds.samples()
    want = expected_split(ds, s["ts"].to_numpy())
    key = lambda u, i, t: sorted(zip(u.tolist(), i.tolist(), t.tolist()))  # noqa: E731
    seq, lct = read_splits(exports["sequences"]), read_splits(exports["longctr"])
    for name in ("train", "valid", "test"):
        mine = s[want == name]
        assert len(mine) > 0 or name != "train"
        assert key(seq[name].user_id, seq[name].item_id, seq[name].ts) == key(mine.user_id, mine.item_id, mine.ts)
        assert key(lct[name].raw_user_id, lct[name].raw_item_id, lct[name].ts) == \
            key(mine.user_id, mine.item_id, mine.ts)
        assert (np.diff(seq[name].ts.to_numpy()) >= 0).all() and (lct[name].ts.to_numpy() == seq[name].ts).all()
    m = json.loads((exports["sequences"] / "manifest.json").read_text())
    assert m["counts"] == {"train": int((want == "train").sum()), "valid": int((want == "valid").sum()),
                           "test": int((want == "test").sum()), "outside_protocol_days": int((want == "").sum())}


# ---- longctr --------------------------------------------------------------------------------------------------
def test_longctr_tables_are_what_its_loader_indexes(dataset, exports):
    ds = Dataset(dataset)
    vocab, _ = item_tables(ds)
    users = pd.read_parquet(exports["longctr"] / "user_info.parquet")
    items = pd.read_parquet(exports["longctr"] / "item_info.parquet")
    assert (users["user_index"].to_numpy() == np.arange(len(users))).all()  # read by position
    assert (items["item_index"].to_numpy() == np.arange(vocab.n_items)).all() and items.iloc[0].item_id == 0
    assert (items["raw_item_id"].to_numpy()[1:] == vocab.item_ids).all()
    assert (items["author_id"].to_numpy() == vocab.author_of).all() and (items["tag"] == vocab.tag_of).all()
    for u, seq, ts in zip(users.raw_user_id, users.full_item_seq, users.full_ts_seq):  # whole, in time order
        h = ds.history(int(u))
        assert (seq == vocab.rows(h["item_id"])).all() and (ts == h["ts"]).all() and (np.diff(ts) >= 0).all()
    for df in read_splits(exports["longctr"]).values():  # np.column_stack of these must stay an integer array
        assert all(df[c].dtype.kind == "i" for c in df.columns), df.dtypes.to_dict()
        assert {"p_true", "page", "item_id", "author_id", "tag", "duration"}.isdisjoint(df.columns)
    config = yaml.safe_load((exports["longctr"] / "fuxictr_dataset_config.yaml").read_text())
    (entry,) = config.values()
    assert all(Path(entry[k]).is_file() for k in ("train_data", "valid_data", "test_data", "user_info", "item_info"))
    sizes = {c["name"]: c.get("vocab_size") for c in entry["feature_cols"]}
    assert all(sizes[c] == items[c].max() + 1 for c in ("item_id", "author_id", "tag"))


def test_longctr_seq_len_gives_the_batchers_history_and_nothing_later(dataset, exports):
    ds = Dataset(dataset)
    vocab, _ = item_tables(ds)
    users = pd.read_parquet(exports["longctr"] / "user_info.parquet")
    batcher = Batcher(ds, vocab, "recent", L)
    for df in read_splits(exports["longctr"]).values():
        uid, ts = df.raw_user_id.to_numpy(), df.ts.to_numpy()
        assert (df.seq_len.to_numpy() == full_history_lengths(ds, uid, ts)).all()
        for a in range(0, len(df), B):
            part = df.iloc[a:a + B]
            ours = batcher.batch(part.raw_user_id.to_numpy(), part.raw_item_id.to_numpy(), part.ts.to_numpy(),
                                 part.label.to_numpy())
            assert (ours.target.numpy() == part.item_index.to_numpy()).all()
            for i, r in enumerate(part.itertuples()):
                full_ts = users.full_ts_seq[r.user_index]
                assert (full_ts[:r.seq_len] < r.ts).all() and (r.seq_len == len(full_ts) or full_ts[r.seq_len] >= r.ts)
                kept = users.full_item_seq[r.user_index][:r.seq_len][-L:]  # what LongCTR's collator keeps
                m = ours.seq.mask[i].numpy()
                assert m.sum() == len(kept) and (ours.seq.rows[i].numpy()[m] == kept).all()


# ---- sequences ------------------------------------------------------------------------------------------------
def test_sequences_history_equals_the_batchers_with_its_cross_features(dataset, exports):
    ds = Dataset(dataset)
    vocab, _ = item_tables(ds)
    batcher = Batcher(ds, vocab, "recent", L)
    specs = batcher.features.cross
    assert len(specs) == 3 + len(ds.cross_features)  # the imported log's `liked` and `page` are checked too
    for df in read_splits(exports["sequences"]).values():
        assert (df.hist_len.to_numpy() == full_history_lengths(ds, df.user_id.to_numpy(), df.ts.to_numpy())).all()
        for a in range(0, len(df), B):
            part = df.iloc[a:a + B]
            ours = batcher.batch(part.user_id.to_numpy(), part.item_id.to_numpy(), part.ts.to_numpy(),
                                 part.label.to_numpy())
            for i, r in enumerate(part.itertuples()):
                n = len(r.hist_item_id)
                assert n == min(r.hist_len, L) and (r.hist_ts < r.ts).all() and (np.diff(r.hist_ts) >= 0).all()
                m = ours.seq.mask[i].numpy()
                assert m.sum() == n and (ours.seq.rows[i].numpy()[m] == vocab.rows(r.hist_item_id)).all()
                play, dur = np.asarray(r.hist_play_ms), np.asarray(r.hist_duration_ms)
                cols = {"play_ms": np.where(play >= 0, play, np.nan), "ratio": completion_ratio(play, dur),
                        **{c: np.asarray(getattr(r, f"hist_{c}")) for c in ds.cross_features}}
                for j, spec in enumerate(specs):
                    want = spec.bucket(r.ts - np.asarray(r.hist_ts, np.float64)) if spec.since_sample \
                        else spec.bucket(cols[spec.source])
                    assert (ours.seq.cross[i, :, j].numpy()[m] == want).all(), spec.name


def test_sequences_keep_every_sample_column(dataset, exports):
    ds = Dataset(dataset)
    hist = {"hist_item_id", "hist_ts", "hist_play_ms", "hist_duration_ms", *(f"hist_{c}" for c in ds.cross_features)}
    for df in read_splits(exports["sequences"]).values():
        assert set(df.columns) == set(ds.samples().columns) | {"day", "hist_len"} | hist
    items = pd.read_parquet(exports["sequences"] / "items.parquet")
    assert items.equals(ds.items())


def test_a_cap_above_every_history_keeps_it_whole(tiny_world, tmp_path):
    root = export_dataset(tiny_world, tmp_path / "s", "sequences", max_len=10**6, progress=False)
    test = pd.read_parquet(root / "test.parquet", columns=["hist_len", "hist_item_id"])
    assert test.hist_len.max() > 1000 and (test.hist_item_id.map(len) == test.hist_len).all()


# ---- the folder and the command ----------------------------------------------------------------------------------
def test_manifest_overwrite_and_refusals(tiny_world, tmp_path):
    out = tmp_path / "x"
    export_dataset(tiny_world, out, "longctr", max_len=L, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "twinv2-export" and m["export_format"] == "longctr" and m["max_len"] == L
    assert m["source"]["manifest_sha256"] == Dataset(tiny_world).manifest["manifest_sha256"]
    assert {n: (out / n).stat().st_size for n in m["files"]} == {n: e["bytes"] for n, e in m["files"].items()}
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_dataset(tiny_world, out, "sequences", progress=False)
    export_dataset(tiny_world, out, "sequences", max_len=L, overwrite=True, progress=False)
    assert not (out / "user_info.parquet").exists() and (out / "items.parquet").exists()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        export_dataset(tiny_world, out, "sequences", overwrite=True, progress=False)
    assert (out / "notes.txt").exists() and not list(tmp_path.glob(".x.twinv2-*"))


@pytest.mark.parametrize("args, names", [
    (["--format", "csv"], "'csv'"),
    (["--format", "longctr", "--max-len", "0"], "got 0"),
    (["--format", "sequences", "--max-len", "-3"], "got -3"),
])
def test_cli_refuses_bad_arguments_in_one_line(tiny_world, tmp_path, capsys, args, names):
    assert main(["export", str(tiny_world), "--out", str(tmp_path / "e"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("twinv2: error:") and names in err, err
    assert not (tmp_path / "e").exists()


def test_cli_refuses_a_missing_dataset_and_an_out_inside_it(tiny_world, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "longctr", "--out", str(tmp_path / "e")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["export", str(tiny_world), "--format", "longctr", "--out", str(tiny_world / "e")]) == 2
    assert "inside it" in capsys.readouterr().err and not (tiny_world / "e").exists()


def test_cli_writes_and_names_the_export(tiny_world, tmp_path, capsys):
    assert main(["export", str(tiny_world), "--format", "sequences", "--out", str(tmp_path / "e"),
                 "--max-len", str(L), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert f"wrote sequences export to {tmp_path / 'e'}" in out and err == ""
