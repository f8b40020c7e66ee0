"""Why int8 scores move between CPUs: one artifact's TFLite and ONNX int8 graphs under every kernel family on
this host, against each other, layer by layer, and in LSBs of the teacher/student features.

ARM's kernels gave scores 30-85 % of the threshold away from this x86 host's (docs/device-runtimes.md). This
study asks whether x86's own kernel families already disagree that much, which would make the amplification
studyable here:

* TFLite: LiteRT's XNNPACK delegate (the default), its built-in optimised kernels (ruy/gemmlowp,
  ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``) and its reference kernels (``BUILTIN_REF``, plain C++ integer code);
* ONNX Runtime: the fused int8 kernels (default graph optimisation: DQ-Conv-Q -> QLinearConv, MLAS) against
  the QDQ graph run op by op in float (``ORT_DISABLE_ALL``: what the quantised model means, with no integer
  kernel's rounding).

For each pair: how many feature elements differ and by how many LSBs, the first tensor (in execution order)
that differs, and the image scores' difference as a fraction of the deployed threshold. And how far the
teacher and student features of the test images are apart in LSBs of their own output scale: when that
distance is a few LSBs, a one-LSB rounding difference moves the squared distance by tens of percent.

    python benchmarks/study_int8_kernels.py --artifact ART [--limit 24] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from edgead.export.arm64_check import stratified_subset
from edgead.export.pipeline import load_data, load_run

from firmware_sim import anomaly_map as amap_np
from firmware_sim.atomic import atomic_write_json
from firmware_sim.manifest import load_manifest
from firmware_sim.quantization import dequantize

TFLITE_FAMILIES = ("xnnpack", "builtin", "reference")


def tflite_interpreter(path: Path, family: str, keep_all: bool = False):
    from ai_edge_litert import interpreter as lite

    kinds = {"xnnpack": lite.OpResolverType.BUILTIN, "builtin": lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
             "reference": lite.OpResolverType.BUILTIN_REF}
    it = lite.Interpreter(model_path=str(path), num_threads=1, experimental_op_resolver_type=kinds[family],
                          experimental_preserve_all_tensors=keep_all)
    it.allocate_tensors()
    return it


def _q(d: dict) -> tuple[np.ndarray, np.ndarray, int]:
    qp = d["quantization_parameters"]
    return np.asarray(qp["scales"], np.float64), np.asarray(qp["zero_points"]), int(qp["quantized_dimension"])


def run_tflite(art: Path, views: np.ndarray, family: str, levels) -> dict:
    """Raw int8 outputs of trunk then head per image (the device path), by output name."""
    trunk = tflite_interpreter(art / "trunk.int8.tflite", family).get_signature_runner("serving_default")
    head_it = tflite_interpreter(art / "head.int8.tflite", family)
    head = head_it.get_signature_runner("serving_default")
    qin = trunk.get_input_details()["image"]
    sc, zp, _ = _q(qin)
    outs: dict[str, list] = {}
    t0 = time.perf_counter()
    hq = head.get_input_details()["latent"]
    tq = trunk.get_output_details()["latent"]
    for v in views:
        x = _quantize(v[None], qin)
        lat = trunk(image=x)["latent"]
        same = np.array_equal(_q(hq)[0], _q(tq)[0]) and np.array_equal(_q(hq)[1], _q(tq)[1])
        # int16 graphs (--tflite-activations int16): the head's input scale is its own; requantise as the device does
        o = head(latent=lat if same else _quantize(dequantize(lat, *_deq(_q(tq))), hq))
        outs.setdefault("latent", []).append(lat)
        for k, a in o.items():
            outs.setdefault(k, []).append(a)
    det = head.get_output_details()
    res = {k: np.concatenate(a) for k, a in outs.items()}
    res["_quant"] = {k: _q(d) for k, d in det.items()}
    res["_ms_per_image"] = 1000 * (time.perf_counter() - t0) / max(len(views), 1)  # trunk + head, this host
    return res


def _quantize(x: np.ndarray, d: dict) -> np.ndarray:
    sc, zp, _ = _q(d)
    info = np.iinfo(d["dtype"])
    return np.clip(np.round(np.asarray(x, np.float32) / sc[0]) + zp[0], info.min, info.max).astype(d["dtype"])


def tflite_scores(raw: dict, levels, size: int, post) -> np.ndarray:
    q = raw["_quant"]
    t = [dequantize(raw[f"teacher_{lv}"], *_deq(q[f"teacher_{lv}"])) for lv in levels]
    s = [dequantize(raw[f"student_{lv}"], *_deq(q[f"student_{lv}"])) for lv in levels]
    return post.score(amap_np.anomaly_map(t, s, size, layout="NHWC"))


def _deq(q):
    sc, zp, axis = q
    return [float(v) for v in sc], [int(v) for v in zp], (axis if len(sc) > 1 else None)


def first_difference(art: Path, graph: str, x: np.ndarray, a: str, b: str) -> dict:
    """The first tensor, in execution order, whose value differs between kernel families a and b (one input)."""
    its = {f: tflite_interpreter(art / graph, f, keep_all=True) for f in (a, b)}
    for it in its.values():
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
    ops = its[a]._get_ops_details()
    details = {d["index"]: d for d in its[a].get_tensor_details()}
    for n, op in enumerate(ops):
        for t in op["outputs"]:
            va, vb = its[a].get_tensor(t), its[b].get_tensor(t)
            if not np.array_equal(va, vb):
                d = np.abs(va.astype(np.int32) - vb.astype(np.int32))
                qp = details[t]["quantization_parameters"]
                return {"op_index": n, "op": op["op_name"], "tensor": details[t]["name"],
                        "per_channel_weights": _per_channel(its[a], op), "max_lsb": int(d.max()),
                        "fraction_differing": float((d > 0).mean()), "ops_total": len(ops),
                        "output_scale_count": len(qp["scales"])}
    return {"op_index": None, "ops_total": len(ops)}


def _per_channel(it, op) -> bool | None:
    if len(op["inputs"]) < 2:
        return None
    w = it.get_tensor_details()[op["inputs"][1]] if op["inputs"][1] >= 0 else None
    return None if w is None else len(w["quantization_parameters"]["scales"]) > 1


def lsb_gaps(raw: dict, levels, labels: np.ndarray) -> dict:
    """Per level, on the normal test images: |teacher - student| in LSBs of the output scale (both dequantised,
    divided by the larger of the two scales), and the features' own magnitude in LSBs."""
    q = raw["_quant"]
    out = {}
    normal = labels == 0
    for lv in levels:
        tq, sq = q[f"teacher_{lv}"], q[f"student_{lv}"]
        t = dequantize(raw[f"teacher_{lv}"][normal], *_deq(tq))
        s = dequantize(raw[f"student_{lv}"][normal], *_deq(sq))
        lsb = max(float(tq[0].max()), float(sq[0].max()))
        out[f"level_{lv}"] = {
            "teacher_scale": float(tq[0][0]), "student_scale": float(sq[0][0]),
            "abs_t_minus_s_lsb_median": float(np.median(np.abs(t - s)) / lsb),
            "abs_t_minus_s_lsb_p90": float(np.percentile(np.abs(t - s), 90) / lsb),
            "abs_teacher_lsb_median": float(np.median(np.abs(t)) / lsb),
            "norm_t_minus_s_over_norm_t_median": float(np.median(
                np.linalg.norm((t - s).reshape(-1, t.shape[-1]), axis=1)
                / np.maximum(np.linalg.norm(t.reshape(-1, t.shape[-1]), axis=1), 1e-12))),
        }
    return out


def onnx_scores(art: Path, views: np.ndarray, levels, size: int, post, fused: bool) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not fused:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    trunk = ort.InferenceSession(str(art / "trunk.int8.onnx"), so, providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(art / "head.int8.onnx"), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in head.get_outputs()]
    maps = []
    for v in views:
        x = np.ascontiguousarray(v[None].transpose(0, 3, 1, 2).astype(np.float32))
        lat = trunk.run(["latent"], {"image": x})[0]
        o = dict(zip(names, head.run(names, {"latent": lat}), strict=True))
        maps.append(amap_np.anomaly_map([o[f"teacher_{lv}"] for lv in levels],
                                        [o[f"student_{lv}"] for lv in levels], size))
    return post.score(np.concatenate(maps))


def diff_row(a: np.ndarray, b: np.ndarray, thr: float) -> dict:
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return {"max_abs_score_diff": float(d.max()), "mean_abs_score_diff": float(d.mean()),
            "max_of_threshold": float(d.max() / thr), "decision_flips": int(((a > thr) != (b > thr)).sum())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--limit", type=int, default=24)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    art = a.artifact.resolve()
    man = load_manifest(art)
    src = man.data["source"]
    run = load_run(src["run"], int(src.get("task_index", 0)))
    _, test, tasks = load_data(run, a.data)
    test = stratified_subset(test, a.limit, int(run.results["config"]["train"]["seed"]))
    levels, size = tuple(man.data["levels"]), int(man.data["input"]["image_size"])
    post = amap_np.ScorePost.parse(man.data["anomaly_map"].get("score"))
    thr = float(man.threshold)
    res: dict = {"artifact": str(art), "tasks": tasks, "test_images": len(test), "threshold": thr,
                 "tflite_activations": (man.data["formats"].get("tflite-int8") or {}).get("activations", "int8")}
    if "tflite-int8" in man.formats:
        raws = {f: run_tflite(art, test.images, f, levels) for f in TFLITE_FAMILIES}
        scores = {f: tflite_scores(raws[f], levels, size, post) for f in TFLITE_FAMILIES}
        pairs = [("xnnpack", "builtin"), ("xnnpack", "reference"), ("builtin", "reference")]
        tfl: dict = {"score_diff": {}, "feature_lsb_diff": {}, "first_difference": {}}
        for x, y in pairs:
            key = f"{x}_vs_{y}"
            tfl["score_diff"][key] = diff_row(scores[x], scores[y], thr)
            tfl["feature_lsb_diff"][key] = {
                k: {"max": int(np.abs(raws[x][k].astype(np.int32) - raws[y][k]).max()),  # in the tensor's LSBs
                    "fraction_differing": float((raws[x][k] != raws[y][k]).mean())}
                for k in raws[x] if not k.startswith("_")}
            x0 = raws[x]["latent"][:1]
            img_d = tflite_interpreter(art / "trunk.int8.tflite", "reference").get_input_details()[0]
            img_q = _quantize(test.images[:1], img_d)
            tfl["first_difference"][key] = {"trunk": first_difference(art, "trunk.int8.tflite", img_q, x, y),
                                            "head": first_difference(art, "head.int8.tflite", x0, x, y)}
        tfl["lsb_gaps_normal"] = lsb_gaps(raws["reference"], levels, test.labels)
        tfl["ms_per_image"] = {f: round(raws[f]["_ms_per_image"], 1) for f in TFLITE_FAMILIES}
        res["tflite-int8"] = tfl
    if "onnx-int8" in man.formats:
        fused = onnx_scores(art, test.images, levels, size, post, fused=True)
        plain = onnx_scores(art, test.images, levels, size, post, fused=False)
        res["onnx-int8"] = {"fused_vs_unfused_qdq": diff_row(fused, plain, thr)}
    print(json.dumps(res, indent=1))
    if a.out:
        atomic_write_json(a.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
