"""`--overwrite` only ever deletes what twinv2 wrote (issue 14, item 2): a folder holding anything else is
refused, naming the foreign entries, and nothing in it is touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from twinv2.data.dirs import clean_leftovers, foreign_entries, prepare_dir, staged_dir
from twinv2.data.generate import generate_world, preset
from twinv2.data.importers import import_mapped
from twinv2.data.storage import Dataset, write_manifest
from twinv2.serve.server import cli_command

FIX = Path(__file__).resolve().parents[1] / "data" / "fixtures"
MAPPING = {"name": "tiny", "inputs": [str(FIX / "tiny_log.csv")],
           "columns": {"user": "uid", "item": "photo", "time": "t_s", "time_unit": "s", "label": "clicked",
                       "play": "watch_ms", "duration": "len_ms"},
           "split": {"last_days": 2, "day_offset_hours": 0, "history": "label == 1"}}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cli_command(), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def mapping(tmp_path) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(MAPPING))
    return p


@pytest.fixture
def dataset(tiny_world, tmp_path) -> Path:
    """A copy of the tiny world with what later stages put inside a dataset: caches, embeddings, a snapshot."""
    root = tmp_path / "ds"
    shutil.copytree(tiny_world, root)
    Dataset(root).csr(0)
    (root / "embeddings").mkdir(exist_ok=True)
    for name in ("item_embeddings.parquet", "item_embeddings.json"):
        (root / "embeddings" / name).write_text("x")
    snap = root / "clusters" / "before-1"
    snap.mkdir(parents=True, exist_ok=True)
    (snap / "manifest.json").write_text(json.dumps({"format": "twinv2-clusters"}))
    (snap / "part-00000.parquet").write_text("x")
    (snap / "part-00000.parquet.tmp-123-ab12").write_text("x")  # a killed job's temporary part
    return root


def test_the_issues_reproduction_is_refused_and_nothing_is_deleted(tmp_path, mapping):
    """mkdir -p proj/samples proj/src; echo x > proj/thesis.txt; twinv2 import mapped ... --out proj --overwrite"""
    proj = tmp_path / "proj"
    (proj / "samples").mkdir(parents=True)
    (proj / "src").mkdir()
    (proj / "src" / "main.py").write_text("print(1)\n")
    (proj / "thesis.txt").write_text("x\n")
    before = _tree(proj)
    for args in (["import", "mapped", "--mapping", str(mapping), "--out", str(proj), "--overwrite"],
                 ["generate", "--preset", "tiny", "--out", str(proj), "--overwrite", "--quiet"]):
        r = _cli(*args)
        err = r.stderr.strip()
        assert r.returncode == 2 and err.startswith("twinv2: error:") and "\n" not in err, err[-2000:]
        assert "not a twinv2 dataset" in err and "src/" in err and "thesis.txt" in err, err
    assert _tree(proj) == before and (proj / "samples").is_dir()


@pytest.mark.parametrize("foreign, named", [
    ("thesis.txt", "thesis.txt"), ("src/main.py", "src/"), ("behaviours/mine.parquet", "behaviours/mine.parquet"),
    ("truth/notes/a.txt", "truth/notes/"), ("clusters/before-1/thesis.txt", "clusters/before-1/thesis.txt"),
    ("embeddings/other.parquet", "embeddings/other.parquet"), ("samples/x.csv", "samples/x.csv")])
def test_a_dataset_holding_a_foreign_entry_is_not_replaced(dataset, foreign, named):
    p = dataset / foreign
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("mine\n")
    before = _tree(dataset)
    assert foreign_entries(dataset) == [named]
    with pytest.raises(FileExistsError, match=f"holds entries twinv2 did not write: {named}"):
        generate_world(preset("tiny", n_users=8), dataset, overwrite=True, progress=False)
    with pytest.raises(FileExistsError, match="holds entries twinv2 did not write"):
        prepare_dir(dataset, overwrite=True)
    assert _tree(dataset) == before


def test_the_cli_names_the_foreign_entries_with_status_2(dataset, mapping):
    (dataset / "thesis.txt").write_text("x\n")
    r = _cli("import", "mapped", "--mapping", str(mapping), "--out", str(dataset), "--overwrite")
    err = r.stderr.strip()
    assert r.returncode == 2 and "\n" not in err and "holds entries twinv2 did not write: thesis.txt" in err, err
    assert (dataset / "thesis.txt").exists() and (dataset / "manifest.json").exists()


def test_a_dataset_with_its_own_sidecars_is_replaced_whole(dataset, mapping):
    assert foreign_entries(dataset) == []
    root = import_mapped(mapping, dataset, n_shards=2, overwrite=True)
    assert root == dataset
    ds = Dataset(dataset)
    assert ds.manifest["name"] == "tiny" and ds.n_shards == 2 and ds.manifest["source"] != "generated"
    assert not (dataset / "clusters").exists() and not (dataset / "embeddings").exists()  # stale: removed
    assert not (dataset / "truth").exists()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        import_mapped(mapping, dataset, n_shards=2)


def test_an_older_dataset_without_a_file_list_is_replaced_by_its_layout(dataset, mapping):
    m = json.loads((dataset / "manifest.json").read_text())
    old = {k: v for k, v in m.items() if k not in ("files", "manifest_sha256")}
    (dataset / "manifest.json").write_text(json.dumps({**old, "version": 1}))
    assert foreign_entries(dataset) == []
    (dataset / "notes.md").write_text("x")
    assert foreign_entries(dataset) == ["notes.md"]
    (dataset / "notes.md").unlink()
    import_mapped(mapping, dataset, n_shards=2, overwrite=True)
    assert Dataset(dataset).n_shards == 2


def test_a_data_file_the_manifest_does_not_list_is_foreign(dataset):
    shutil.copy(dataset / "users.parquet", dataset / "behaviours" / "part-00004.parquet")
    assert foreign_entries(dataset) == ["behaviours/part-00004.parquet"]


def test_an_empty_folder_and_a_link_are_written_into(tmp_path, mapping):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert import_mapped(mapping, empty, n_shards=1) == empty and Dataset(empty).n_shards == 1
    link = tmp_path / "link"
    os.symlink(empty, link)
    import_mapped(mapping, link, n_shards=3, overwrite=True)
    assert link.is_symlink() and Dataset(link).n_shards == 3 and Dataset(empty).n_shards == 3


def test_a_failed_write_leaves_the_old_dataset_and_no_leftovers(dataset):
    before = _tree(dataset)
    with pytest.raises(RuntimeError, match="boom"):
        with staged_dir(dataset, overwrite=True) as tmp:
            (tmp / "items.parquet").write_text("half")
            raise RuntimeError("boom")
    assert _tree(dataset) == before
    assert not [p for p in dataset.parent.iterdir() if ".twinv2-" in p.name]


def test_leftovers_of_dead_runs_are_removed_and_of_live_ones_kept(tmp_path):
    out = tmp_path / "ds"
    dead = _dead_pid()
    (tmp_path / f".ds.twinv2-tmp-{dead}").mkdir()
    (tmp_path / f".ds.twinv2-old-{dead}").mkdir()
    live = tmp_path / f".ds.twinv2-tmp-{os.getppid()}"
    live.mkdir()
    removed = clean_leftovers(out)
    assert sorted(p.name for p in removed) == [f".ds.twinv2-old-{dead}", f".ds.twinv2-tmp-{dead}"]
    assert live.is_dir()


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_write_manifest_recomputes_checksums_of_a_hand_made_dataset(dataset):
    """Hand-assembled data (tests, tools) goes through write_manifest, which lists what is really there."""
    m = json.loads((dataset / "manifest.json").read_text())
    shutil.rmtree(dataset / "truth")
    write_manifest(dataset, m)
    assert not any(k.startswith("truth/") for k in Dataset(dataset).files)
