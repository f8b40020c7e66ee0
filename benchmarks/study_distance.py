"""Where should the teacher-student distance run? A measurement, kept so it can be repeated.

Compares, on a run's held-out test images, two int8 TFLite heads fed by the same int8 trunk:
  features: the exported head (teacher and student level features out), distance in numpy on the device
            (firmware_sim.anomaly_map), i.e. what `edgead export` ships;
  in-graph: the same head followed by int8 L2_NORMALIZATION, SUB, MUL, SUM, RESIZE_BILINEAR (half-pixel) and
            the product of levels, so the model outputs the anomaly map itself.
Reports image/pixel AUROC, map cosine to the float torch model, and per-image latency.

    python benchmarks/study_distance.py RUN_DIR [--task N] [--calibration 32] [--max-images 200]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from edgead.export.fidelity import row_cosines
from edgead.export.graphs import GraphSpec, feature_names
from edgead.export.pipeline import load_data, load_run, reference, select_calibration

from edgead.metrics import image_auroc, pixel_auroc
from firmware_sim import anomaly_map as amap_np
from firmware_sim.runtime import TFLiteRunner, dequantize, image_feed


def in_graph_head(model, pre):
    """The head with the anomaly map computed inside the graph (Keras layers over tf ops)."""
    import keras
    import tensorflow as tf
    from edgead.export.tflite import keras_graph

    head = keras_graph(model, pre, GraphSpec("head", "latent", tuple(feature_names(model.config.levels))))
    s = model.config.image_size

    class LevelDistance(keras.layers.Layer):
        def call(self, t, st):
            d = tf.math.l2_normalize(t, axis=-1) - tf.math.l2_normalize(st, axis=-1)
            d = 0.5 * tf.reduce_sum(d * d, axis=-1, keepdims=True)
            return tf.image.resize(d, (s, s), method="bilinear")  # half-pixel centres = align_corners=False

    amap = None
    for lv in model.config.levels:
        up = LevelDistance()(head.output[f"teacher_{lv}"], head.output[f"student_{lv}"])
        amap = up if amap is None else keras.layers.Multiply()([amap, up])
    return keras.Model(head.input, {"map": amap}, name="head_map")


def run_study(run_dir: str, task: int | None, n_calib: int, max_images: int) -> dict:
    from edgead.export.tflite import check_fully_int8, convert_int8, keras_graph, quant_range

    run = load_run(run_dir, task)
    model, pre = run.model, run.pre
    pool, test, _ = load_data(run, None)
    if len(test) > max_images:
        test = test.subset(np.sort(np.random.default_rng(0).choice(len(test), max_images, replace=False)))
    calib = select_calibration(pool, n_calib, int(run.results["config"]["train"]["seed"]))
    ref = reference(model, pre, test)

    trunk_km = keras_graph(model, pre, GraphSpec("trunk", "image", ("latent",)))
    trunk = TFLiteRunner(convert_int8(trunk_km, lambda: (calib[i:i + 1].astype(np.float32)
                                                          for i in range(len(calib))), "int8", (0.0, 255.0)))
    lat_entry = trunk.outputs["latent"]
    lat_q = [trunk(**image_feed(trunk, img[None]))["latent"] for img in test.images]
    cal_lat = [dequantize(trunk(**image_feed(trunk, img[None]))["latent"], lat_entry) for img in calib]
    rng = quant_range(lat_entry["quantization"]["scale"][0], lat_entry["quantization"]["zero_point"][0], "int8")
    spec = GraphSpec("head", "latent", tuple(feature_names(model.config.levels)))
    heads = {"features+numpy": keras_graph(model, pre, spec), "in-graph int8": in_graph_head(model, pre)}
    out = {"test_images": len(test), "float": {"image_auroc": image_auroc(test.labels, ref.scores),
                                               "pixel_auroc": pixel_auroc(test.masks, ref.maps)}}
    for name, km in heads.items():
        fb = convert_int8(km, lambda: iter(cal_lat), "int8", rng)
        check = check_fully_int8(fb, name)
        runner = TFLiteRunner(fb)
        maps, t_model, t_dist = [], 0.0, 0.0
        for z in lat_q:
            t0 = time.perf_counter()
            o = runner(latent=z)
            t1 = time.perf_counter()
            if "map" in o:
                m = dequantize(o["map"], runner.outputs["map"])[..., 0]
            else:
                lv = model.config.levels
                m = amap_np.anomaly_map([dequantize(o[f"teacher_{v}"], runner.outputs[f"teacher_{v}"]) for v in lv],
                                        [dequantize(o[f"student_{v}"], runner.outputs[f"student_{v}"]) for v in lv],
                                        model.config.image_size, layout="NHWC")
            t_dist += time.perf_counter() - t1
            t_model += t1 - t0
            maps.append(m)
        maps = np.concatenate(maps)
        scores = amap_np.image_score(maps)
        out[name] = {"image_auroc": image_auroc(test.labels, scores), "pixel_auroc": pixel_auroc(test.masks, maps),
                     "map_cosine_mean": float(row_cosines(maps, ref.maps).mean()),
                     "distinct_map_values": int(len(np.unique(maps))),
                     # An int8 map's range is calibrated on normal images: anomalies can clip at its top.
                     "images_at_map_ceiling": int((scores >= maps.max() - 1e-12).sum()),
                     "ops": check["ops"],
                     "head_ms": 1000 * t_model / len(lat_q), "distance_ms": 1000 * t_dist / len(lat_q)}
    return out


def main() -> None:
    from edgead.export.pipeline import ExportOptions

    from edgead.options import add_arguments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--task", type=int, default=None)
    add_arguments(ap, ExportOptions, "calibration")  # edgead export's own definition
    ap.add_argument("--max-images", type=int, default=200)
    a = ap.parse_args()
    print(json.dumps(run_study(a.run_dir, a.task, a.calibration, a.max_images), indent=2))


if __name__ == "__main__":
    main()
