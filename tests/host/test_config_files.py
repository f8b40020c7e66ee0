"""--config FILE.yaml for train, export and bench: flags override the file, runs record theirs, bad keys named."""

from __future__ import annotations

import argparse
import importlib
import json

import pytest
import yaml

from edgead.cli import cli
from edgead.config_file import config_to_argv, read_config, split_config_arg, unknown_keys
from edgead.errors import EdgeadError


@pytest.fixture(autouse=True)
def _restore_log_env(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # the CLI group sets it; monkeypatch puts it back


def _edgead(*args):
    cli.main(args=[str(a) for a in args], standalone_mode=False)


def _matrices(run):
    return {k: v["matrix"] for k, v in json.loads((run / "results.json").read_text())["metrics"].items()}


def test_flags_override_the_file_and_the_recorded_config_repeats_the_run(synth_root, tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"data: {synth_root}\ntasks: nut\nimage-size: 64\nepochs: 3\nbatch_size: 4\n"
                   "val-fraction: 0.25\nselect_every: 0\n")
    a, b = tmp_path / "a", tmp_path / "b"
    _edgead("-q", "train", "--config", cfg, "--epochs", "1", "--out", a)
    rec = read_config(a / "config.yaml")
    assert rec["epochs"] == 1 and rec["image_size"] == 64 and rec["batch_size"] == 4  # flag beat the file
    assert rec["data"] == str(synth_root.resolve()) and "out" not in rec
    assert not unknown_keys(importlib.import_module("edgead.cli.train").train, rec)
    res = json.loads((a / "results.json").read_text())
    assert res["config"]["train"]["epochs"] == 1 and res["config"]["detector"]["image_size"] == 64
    _edgead("-q", "train", "--config", a / "config.yaml", "--out", b)
    assert _matrices(b) == _matrices(a)  # the same results
    assert (b / "config.yaml").read_text() == (a / "config.yaml").read_text()


def test_unknown_keys_are_named(tmp_path, synth_root):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data: {synth_root}\nepochz: 1\n")
    with pytest.raises(EdgeadError, match=r"--config .*bad.yaml: unknown key 'epochz' .*edgead train.*epochs"):
        _edgead("train", "--config", bad, "--out", tmp_path / "r")
    assert not (tmp_path / "r").exists()
    bad.write_text("formatz: onnx\n")
    with pytest.raises(EdgeadError, match="unknown key 'formatz'"):
        _edgead("export", "--config", bad, "--run", tmp_path, "--out", tmp_path / "art")
    bad.write_text("- not\n- a mapping\n")
    with pytest.raises(EdgeadError, match="expected a mapping"):
        _edgead("train", "--config", bad, "--out", tmp_path / "r")
    with pytest.raises(EdgeadError, match="file not found"):
        _edgead("train", "--config", tmp_path / "none.yaml", "--out", tmp_path / "r")


def test_bench_config_gives_script_options_and_flags_win(tmp_path, monkeypatch):
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(yaml.safe_dump({"quick": True, "out": str(tmp_path / "from-file"), "sizes": [64, 128],
                                   "skip": False, "tag": None}, sort_keys=False))
    assert config_to_argv(cfg) == ["--quick", "--out", str(tmp_path / "from-file"), "--sizes", "64,128"]
    argv = split_config_arg(["--config", str(cfg), "--out", str(tmp_path / "flag")])
    assert argv[-2:] == ["--out", str(tmp_path / "flag")]
    # The real script's parser: the file's options arrive and the flag after them wins.
    seen = {}

    def capture(self, args=None, namespace=None):
        seen["ns"] = argparse.ArgumentParser.parse_known_args(self, args, namespace)[0]
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    mod = importlib.import_module("bench_metrics")
    cfg.write_text(f"quick: true\nout: {tmp_path / 'from-file'}\n")
    with pytest.raises(SystemExit):
        mod.main(split_config_arg(["--config", str(cfg), "--out", str(tmp_path / "flag")]))
    assert seen["ns"].quick is True and str(seen["ns"].out) == str(tmp_path / "flag")
