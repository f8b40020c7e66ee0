"""`device profile`: sizes in kB/MB beside the bytes, and the fastest exported format on this machine, measured
in the same run (every format timed, the recommendation the smallest median)."""

from __future__ import annotations

import json
import re

import pytest

from firmware_sim import commands
from firmware_sim.__main__ import main as fw_main
from firmware_sim.sizes import format_size
from tests.device.edgetpu_artifact import edgetpu_artifact

pytestmark = pytest.mark.slow  # shares one real export (about a minute on 2 busy cores)
SIZE_RE = re.compile(r"\d+\.\d\d (?:kB|MB|GB) \([\d,]+ B\)")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return edgetpu_artifact(tmp_path_factory)["art"]


def test_format_size_human_and_exact():
    assert format_size(589_511) == "589.51 kB (589,511 B)"
    assert format_size(70_918_144) == "70.92 MB (70,918,144 B)"
    assert format_size(512) == "512 B"


def test_profile_compares_every_format_and_recommends_the_fastest(art):
    res = commands.profile(art, ["rpi4"], runs=5, warmup=1)
    cmp = res["format_comparison"]
    assert set(cmp["formats"]) == {"tflite-int8", "onnx-int8"}
    rows = cmp["formats"]
    assert all(r["available"] and r["p50_ms"] > 0 for r in rows.values())
    assert rows["onnx-int8"]["interpreter"] == "onnxruntime" and "litert" in rows["tflite-int8"]["interpreter"]
    assert cmp["recommended"] == min(rows, key=lambda f: rows[f]["p50_ms"])
    assert cmp["runs"] == 5
    assert commands.profile(art, ["rpi4"], runs=2, warmup=0, compare=False)["format_comparison"] is None


def test_profile_text_sizes_and_recommendation(art, capsys):
    assert fw_main(["profile", "--artifact", str(art), "--profile", "rpi4", "--profile", "stm32h7",
                    "--runs", "5", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    ram = next(line for line in out.splitlines() if line.startswith("RAM:"))
    flash = next(line for line in out.splitlines() if line.startswith("flash:"))
    assert len(SIZE_RE.findall(ram)) == 3 and len(SIZE_RE.findall(flash)) >= 3, out
    for name in ("rpi4", "stm32h7"):
        row = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert len(SIZE_RE.findall(row)) == 2, row  # RAM and flash headroom
    rec = re.search(r"fastest format here: (\S+) \(.*: (.*)\); use --format (\S+)", out)
    assert rec, out
    timed = dict((f, float(ms)) for f, ms in re.findall(r"(\S+) ([\d.]+) ms", rec.group(2)))
    assert set(timed) == {"tflite-int8", "onnx-int8"}
    assert rec.group(1) == rec.group(3) == min(timed, key=timed.get)


def test_profile_json_keeps_exact_bytes_and_no_compare_skips_timing(art, capsys):
    assert fw_main(["profile", "--artifact", str(art), "--runs", "2", "--warmup", "0", "--json",
                    "--no-compare"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["format_comparison"] is None and res["flash"]["total_bytes"] > 0  # JSON keeps exact bytes
