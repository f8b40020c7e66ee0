"""Type and range checks of every manifest field the device reads, and the manifest against the model files.

A manifest is trusted only as far as it can be checked: each field has the type and range the runtime needs
(finite numbers, integers within bounds, zero points inside their integer type), and once the interpreter has
loaded the graphs, every shape and quantisation parameter the manifest states must be the graph's own. A
UserError names the field (as a dotted path) and what was expected.
"""

from __future__ import annotations

import math
import re
from typing import Any

from firmware_sim.anomaly_map import ScorePost
from firmware_sim.errors import UserError

MIN_SIZE, MAX_SIZE = 16, 4096  # image side, as firmware_sim.preprocess.Preprocess
MAX_DIM = 65535
MAX_LEVEL = 1000
DTYPE_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int32": (-2**31, 2**31 - 1)}
DTYPES = (*DTYPE_RANGES, "float32", "float16")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _fail(where: str, field: str, value: Any, expected: str) -> UserError:
    shown = repr(value)
    return UserError(f"{where}: field '{field}' is {shown[:80] + '...' if len(shown) > 80 else shown}: "
                     f"expected {expected}")


def _dict(v: Any, where: str, field: str) -> dict:
    if not isinstance(v, dict):
        raise _fail(where, field, v, "a JSON object")
    return v


def _list(v: Any, where: str, field: str, min_len: int = 0, max_len: int = 1 << 16) -> list:
    if not isinstance(v, list) or not min_len <= len(v) <= max_len:
        raise _fail(where, field, v, f"a list of {min_len} to {max_len} items")
    return v


def _str(v: Any, where: str, field: str) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(where, field, v, "a non-empty string")
    return v


def _int(v: Any, where: str, field: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _fail(where, field, v, f"an integer in {lo}..{hi}")
    return v


def _num(v: Any, where: str, field: str, positive: bool = False, optional: bool = False) -> float | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise _fail(where, field, v, ("a finite number" + (" > 0" if positive else ""))
                    + (" or null" if optional else ""))
    return float(v)


def _quant(q: Any, where: str, field: str, dtype: str | None) -> None:
    """None, or {scale: [finite > 0], zero_point: [integers inside dtype's range], axis: null | int}."""
    if q is None:
        return
    q = _dict(q, where, field)
    scales = _list(q.get("scale"), where, f"{field}.scale", 1)
    for i, s in enumerate(scales):
        _num(s, where, f"{field}.scale[{i}]", positive=True)
    lo, hi = DTYPE_RANGES.get(dtype or "int8", (-2**31, 2**31 - 1))
    zps = _list(q.get("zero_point"), where, f"{field}.zero_point", 1)
    if len(zps) != len(scales):
        raise _fail(where, f"{field}.zero_point", zps, f"{len(scales)} value(s), one per scale")
    for i, z in enumerate(zps):
        _int(z, where, f"{field}.zero_point[{i}]", lo, hi)
    if q.get("axis") is not None:
        _int(q["axis"], where, f"{field}.axis", 0, 8)


def _tensor(t: Any, where: str, field: str) -> None:
    t = _dict(t, where, field)
    _str(t.get("name"), where, f"{field}.name")
    shape = _list(t.get("shape"), where, f"{field}.shape", 1, 8)
    for i, d in enumerate(shape):
        _int(d, where, f"{field}.shape[{i}]", 0, MAX_DIM)
    if t.get("dtype") not in DTYPES:
        raise _fail(where, f"{field}.dtype", t.get("dtype"), f"one of {', '.join(DTYPES)}")
    if t.get("quantization") is None and t["dtype"] in ("int8", "uint8"):  # no way back to real values
        raise _fail(where, f"{field}.quantization", t.get("quantization"), f"scale and zero point of a {t['dtype']} "
                    "tensor")
    _quant(t["quantization"], where, f"{field}.quantization", t["dtype"])


def _latent_dtype(formats: dict, fmt: str) -> str:
    """The dtype of the trunk's latent in ``fmt`` (uint8 with --io uint8), int8 if the format has no trunk."""
    trunk = formats.get(fmt, {}).get("graphs", {}).get("trunk", {})
    dtype = next((t["dtype"] for t in trunk.get("outputs", []) if t["name"] == "latent"), "int8")
    return dtype if dtype in ("int8", "uint8") else "int8"  # a float graph stores the int8 export's numbers


def _calibration(cal: Any, where: str, field: str) -> None:
    """A threshold (finite) and optional finite score statistics: the top-level calibration and each task's."""
    cal = _dict(cal, where, field)
    _num(cal.get("threshold"), where, f"{field}.threshold")
    for key in ("score_min", "score_max", "score_mean", "score_std", "quantile"):
        _num(cal.get(key), where, f"{field}.{key}", optional=True)


def _task_calibration(tc: Any, where: str) -> None:
    """Per-task thresholds (``run --task NAME``): every listed task has an entry, each checked as the top-level
    calibration is (a NaN or null threshold would call every image normal)."""
    tc = _dict(tc, where, "task_calibration")
    tasks = _list(tc.get("tasks"), where, "task_calibration.tasks", 1)
    per = _dict(tc.get("per_task"), where, "task_calibration.per_task")
    for i, name in enumerate(tasks):
        _str(name, where, f"task_calibration.tasks[{i}]")
        if name not in per:
            raise _fail(where, "task_calibration.per_task", sorted(per), f"an entry for every listed task ({name!r})")
    for name, cal in per.items():
        _calibration(cal, where, f"task_calibration.per_task.{name}")


def check_fields(data: dict, where: str) -> None:
    """Every field the device reads has its type and range (a UserError names the first that does not)."""
    _str(data.get("model"), where, "model")
    _str(data.get("backbone"), where, "backbone")
    for i, lv in enumerate(_list(data.get("levels"), where, "levels", 1, 64)):
        _int(lv, where, f"levels[{i}]", 0, MAX_LEVEL)
    inp = _dict(data.get("input"), where, "input")
    size = _int(inp.get("image_size"), where, "input.image_size", MIN_SIZE, MAX_SIZE)
    pre = _dict(inp.get("preprocess"), where, "input.preprocess")
    if _int(pre.get("image_size"), where, "input.preprocess.image_size", MIN_SIZE, MAX_SIZE) != size:
        raise _fail(where, "input.preprocess.image_size", pre["image_size"], f"input.image_size ({size})")
    for key in ("mean", "std"):
        for i, v in enumerate(_list(pre.get(key), where, f"input.preprocess.{key}", 3, 3)):
            _num(v, where, f"input.preprocess.{key}[{i}]", positive=key == "std")
    for key in ("channel_order", "layout"):
        if key in pre:
            _str(pre[key], where, f"input.preprocess.{key}")
    for fmt, q in _dict(inp.get("quantization", {}), where, "input.quantization").items():
        _quant(q, where, f"input.quantization.{fmt}", None)
    formats = _dict(data.get("formats"), where, "formats")
    if not formats:
        raise _fail(where, "formats", formats, "at least one exported format")
    for fmt, entry in formats.items():
        graphs = _dict(_dict(entry, where, f"formats.{fmt}").get("graphs"), where, f"formats.{fmt}.graphs")
        for gname, g in graphs.items():
            g = _dict(g, where, f"formats.{fmt}.graphs.{gname}")
            _str(g.get("file"), where, f"formats.{fmt}.graphs.{gname}.file")
            for side in ("inputs", "outputs"):
                for i, t in enumerate(_list(g.get(side), where, f"formats.{fmt}.graphs.{gname}.{side}", 1)):
                    _tensor(t, where, f"formats.{fmt}.graphs.{gname}.{side}[{i}]")
    if data.get("anomaly_map") is not None and _dict(data["anomaly_map"], where, "anomaly_map").get("score") \
            is not None:  # older manifests have no score post-processing: the maximum
        try:
            ScorePost.parse(_str(data["anomaly_map"]["score"], where, "anomaly_map.score"))
        except UserError as e:
            raise _fail(where, "anomaly_map.score", data["anomaly_map"]["score"],
                        f"a score post-processing ({e})") from None
    _calibration(data.get("calibration"), where, "calibration")
    if data.get("task_calibration") is not None:
        _task_calibration(data["task_calibration"], where)
    if data.get("latent") is not None:
        lat = _dict(data["latent"], where, "latent")
        for i, d in enumerate(_list(lat.get("shape_chw"), where, "latent.shape_chw", 3, 3)):
            _int(d, where, f"latent.shape_chw[{i}]", 1, MAX_DIM)
        for fmt, q in _dict(lat.get("quantization", {}), where, "latent.quantization").items():
            _quant(q, where, f"latent.quantization.{fmt}", _latent_dtype(formats, fmt))
    if data.get("cost") is not None:
        cost = _dict(data["cost"], where, "cost")
        if cost.get("peak_activation_bytes_int8") is not None:
            _int(cost["peak_activation_bytes_int8"], where, "cost.peak_activation_bytes_int8", 0, 2**48)
    for name, rec in _dict(data.get("files"), where, "files").items():
        rec = _dict(rec, where, f"files.{name}")
        _int(rec.get("size"), where, f"files.{name}.size", 0, 2**48)
        if not isinstance(rec.get("sha256"), str) or not _SHA256.fullmatch(rec["sha256"]):
            raise _fail(where, f"files.{name}.sha256", rec.get("sha256"), "64 lower-case hex digits")


def _same_quant(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (list(a["zero_point"]) == list(b["zero_point"]) and len(a["scale"]) == len(b["scale"])
            and all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(a["scale"], b["scale"], strict=True)))


def check_against_graphs(manifest, fmt: str, runners: dict) -> None:
    """Refuse a manifest whose shapes, dtypes or quantisation differ from the loaded graphs' own.

    Args:
        manifest: the Manifest (fields already checked by ``check_fields``).
        fmt: the format the runners were loaded from.
        runners: graph name -> runner with ``inputs`` / ``outputs`` (name -> shape, dtype, layout, quantization).
    """
    where = str(manifest.root / "manifest.json")
    graphs = manifest.data["formats"][fmt]["graphs"]
    for gname, runner in runners.items():
        actual = {"inputs": runner.inputs, "outputs": runner.outputs}
        for side in ("inputs", "outputs"):
            for i, t in enumerate(graphs[gname][side]):
                field = f"formats.{fmt}.graphs.{gname}.{side}[{i}]"
                real = actual[side].get(t["name"])
                if real is None:
                    raise _fail(where, f"{field}.name", t["name"], f"one of the graph's {side}: {sorted(actual[side])}")
                if list(t["shape"]) != list(real["shape"]) or t["dtype"] != real["dtype"]:
                    raise _fail(where, field, f"{t['dtype']} {t['shape']}",
                                f"the graph's own {real['dtype']} {real['shape']} ({graphs[gname]['file']})")
                if real["quantization"] is not None and not _same_quant(t.get("quantization"), real["quantization"]):
                    raise _fail(where, f"{field}.quantization", t.get("quantization"),
                                f"the graph's own {real['quantization']} ({graphs[gname]['file']})")
    _check_needed_tensors(manifest, fmt, runners, where)


def _side(shape: list[int], layout: str) -> int | None:
    if len(shape) != 4:
        return None
    return shape[1] if layout == "NHWC" else shape[2]


def _check_needed_tensors(manifest, fmt: str, runners: dict, where: str) -> None:
    size = manifest.image_size
    for gname in ("trunk", "full"):
        if gname in runners:
            image = runners[gname].inputs.get("image")
            if image is None:
                raise UserError(f"{where}: graph {fmt}/{gname} has no 'image' input")
            side = _side(image["shape"], runners[gname].layout)
            if side != size:
                raise _fail(where, "input.image_size", size, f"the graph's own input size {side} "
                            f"({fmt}/{gname} takes {image['shape']})")
            q = manifest.data["input"].get("quantization", {}).get(fmt)
            if image["quantization"] is not None and q is not None and not _same_quant(q, image["quantization"]):
                raise _fail(where, f"input.quantization.{fmt}", q, f"the graph's own {image['quantization']}")
    features = runners.get("head") or runners.get("full")
    for lv in manifest.levels:
        for kind in ("teacher", "student"):
            if f"{kind}_{lv}" not in features.outputs:
                raise _fail(where, "levels", manifest.levels, f"levels the graph has features of: outputs "
                            f"{sorted(features.outputs)}")
    if "trunk" in runners:
        trunk = runners["trunk"]
        out = trunk.outputs.get("latent")
        if out is None:
            raise UserError(f"{where}: graph {fmt}/trunk has no 'latent' output")
        lat = manifest.data.get("latent")
        if lat is not None:
            chw = list(out["shape"][1:]) if trunk.layout == "NCHW" else [out["shape"][3], *out["shape"][1:3]]
            if list(lat["shape_chw"]) != chw:
                raise _fail(where, "latent.shape_chw", lat["shape_chw"], f"the trunk's own {chw}")
            q = lat.get("quantization", {}).get(fmt)
            if out["quantization"] is not None and not _same_quant(q, out["quantization"]):
                raise _fail(where, f"latent.quantization.{fmt}", q, f"the trunk's own {out['quantization']}")
            if out["quantization"] is None and "tflite-int8" in manifest.data["formats"] and fmt != "tflite-int8":
                # A float format stores latents with the int8 export's parameters: they must be that graph's.
                g = manifest.data["formats"]["tflite-int8"]["graphs"].get("trunk", {})
                declared = next((t.get("quantization") for t in g.get("outputs", []) if t["name"] == "latent"),
                                None)
                q8 = lat.get("quantization", {}).get("tflite-int8")
                if declared is not None and q8 is not None and not _same_quant(q8, declared):
                    raise _fail(where, "latent.quantization.tflite-int8", q8,
                                f"the tflite-int8 trunk's latent quantisation {declared}")
