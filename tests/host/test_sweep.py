"""edgead.sweep: serial, local processes and a local Ray give the same results; failures are reported and
the sweep goes on; a rerun skips finished runs; another sweep's folder is refused unless resume."""

from __future__ import annotations

import json
import sys

import pytest

from edgead.errors import EdgeadError
from edgead.sweep import Run, run_sweep
from tests.conftest import MCUNET_DIR

FN = "bench_real_stream:run_one"


def _runs(root, seeds=(0, 1), bad=False) -> list[Run]:
    kw = {"data": str(root), "tasks": ["nut"], "image_size": 64, "epochs": 1}
    runs = [Run(f"finetune__s{s}", FN, {**kw, "method": "finetune", "seed": s}) for s in seeds]
    runs.append(Run("int8__n4__s0", FN, {**kw, "method": "int8-channel", "seed": 0, "memory_size": 4}))
    if bad:  # a category the root lacks: this run fails, the others go on
        runs.insert(1, Run("broken", FN, {**kw, "tasks": ["screw"], "method": "finetune", "seed": 0}))
    return runs


def _numbers(results: dict) -> dict:
    return {k: {m: v for m, v in r.items() if m != "wall_s"} for k, r in results.items()}


@pytest.fixture(scope="module")
def serial(synth_root, tmp_path_factory):
    """The reference: the three runs one after another in this process (shared by the tests that compare)."""
    with pytest.MonkeyPatch.context() as mp:  # the autouse weights fixture is function-scoped
        mp.setenv("EDGEAD_WEIGHTS_DIR", str(MCUNET_DIR))
        return run_sweep("s", _runs(synth_root), tmp_path_factory.mktemp("serial") / "serial", progress=False,
                         log=lambda m: None)


def test_processes_match_serial_and_failures_do_not_stop_the_sweep(synth_root, serial, tmp_path):
    assert serial.ok and list(serial.results) == ["finetune__s0", "finetune__s1", "int8__n4__s0"]
    logs: list[str] = []
    par = run_sweep("s", _runs(synth_root, bad=True), tmp_path / "par", jobs=2, progress=False, log=logs.append)
    assert _numbers(par.results) == _numbers(serial.results)  # identical, whichever process ran them
    assert list(par.failed) == ["broken"] and "screw" in par.failed["broken"]
    assert any("run broken failed" in m for m in logs)
    rec = json.loads((tmp_path / "par" / "runs" / "broken.failed.json").read_text())
    assert "Traceback" in rec["traceback"] and rec["spec"]["key"] == "broken"
    # a rerun skips what finished and retries the failure only
    again = run_sweep("s", _runs(synth_root, bad=True), tmp_path / "par", progress=False, log=lambda m: None)
    assert sorted(again.skipped) == ["finetune__s0", "finetune__s1", "int8__n4__s0"]
    assert list(again.failed) == ["broken"] and _numbers(again.results) == _numbers(serial.results)


def test_another_sweeps_folder_is_refused_unless_resume(synth_root, tmp_path):
    out = tmp_path / "sw"
    run_sweep("a", _runs(synth_root, seeds=(0,)), out, progress=False, log=lambda m: None)
    with pytest.raises(EdgeadError, match=r"holds another sweep \('a', 2 runs\); pass --resume"):
        run_sweep("b", _runs(synth_root, seeds=(0, 1)), out, progress=False, log=lambda m: None)
    res = run_sweep("b", _runs(synth_root, seeds=(0, 1)), out, resume=True, progress=False, log=lambda m: None)
    assert sorted(res.skipped) == ["finetune__s0", "int8__n4__s0"] and len(res.results) == 3
    assert json.loads((out / "sweep.json").read_text())["name"] == "b"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(EdgeadError, match="not empty and holds no sweep.json"):
        run_sweep("a", _runs(synth_root), tmp_path / "other", progress=False, log=lambda m: None)


def test_bad_sweeps_and_missing_ray(synth_root, tmp_path, monkeypatch):
    with pytest.raises(EdgeadError, match="appears twice"):
        run_sweep("a", [Run("x", FN), Run("x", FN)], tmp_path / "a", progress=False)
    with pytest.raises(EdgeadError, match="'package.module:function'"):
        run_sweep("a", [Run("x", "nocolon")], tmp_path / "a", progress=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(EdgeadError, match=r"--ray needs Ray, which is not installed: pip install 'edgead\[cluster\]'"):
        run_sweep("a", _runs(synth_root), tmp_path / "r", ray="auto", progress=False)
    assert not (tmp_path / "r").exists()  # refused before anything is written


@pytest.mark.slow  # starting a local Ray takes ~20-40 s on this machine
def test_local_ray_of_two_cpus_matches_serial(synth_root, serial, tmp_path):
    pytest.importorskip("ray")
    ray = run_sweep("s", _runs(synth_root), tmp_path / "ray", ray="local", jobs=2, progress=False,
                    log=lambda m: None)
    assert ray.ok and _numbers(ray.results) == _numbers(serial.results)
