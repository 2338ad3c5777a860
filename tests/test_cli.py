"""The command line: argument parsing, time parsing and user-facing errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from twinv2.cli import _parse_overrides, build_parser, main, parse_time


def test_parse_time_forms():
    assert parse_time("1650000000000") == 1_650_000_000_000
    assert parse_time("2022-04-17") == 1_650_153_600_000
    assert parse_time("2022-04-17T01:00:00+08:00") == 1_650_128_400_000
    with pytest.raises(ValueError, match="cannot read 'yesterday-ish'"):
        parse_time("yesterday-ish")
    with pytest.raises(ValueError, match="needs a dataset"):
        parse_time("eval:0")


def test_overrides_are_yaml_scalars():
    assert _parse_overrides(["a=0.5", "b=10", "c=true", "d=[1, 2]"]) == {"a": 0.5, "b": 10, "c": True, "d": [1, 2]}
    with pytest.raises(ValueError, match="--set expects key=value, got 'oops'"):
        _parse_overrides(["oops"])


def test_every_subcommand_parses():
    p = build_parser()
    for argv in (["generate", "--preset", "tiny"], ["import", "kuairand", "--out", "x"], ["stats", "d"],
                 ["embed", "d"], ["cluster", "d", "--snapshot-before", "eval:0"], ["bench", "cluster"], ["demo"]):
        assert callable(p.parse_args(argv).func)


def test_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twinv2: error:") and "no manifest.json" in err and err.count("\n") == 1


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "twinv2.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "generate" in r.stdout and "cluster" in r.stdout
