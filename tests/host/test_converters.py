"""Dataset converters (battery-weld, bsdata, mpdd-metal-plate, elpv): small fakes in the real formats, bad
input, determinism, the real ../shared data, and image-level categories through the pipeline."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgead.data import load_entries, scan_mvtec
from edgead.data.battery_weld import convert_battery_weld
from edgead.data.bsdata import convert_bsdata
from edgead.data.converters import convert
from edgead.data.elpv import convert_elpv
from edgead.data.mpdd import convert_mpdd_metal_plate
from edgead.errors import EdgeadError
from firmware_sim.preprocess import Preprocess
from tests.conftest import SHARED

DATA = SHARED / "data"


def _png(size=(40, 24), seed=0, mode="L") -> bytes:
    import io

    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def _mask_png(size=(40, 24), box=(5, 5, 15, 12), value=255) -> bytes:
    import io

    a = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = value
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, "PNG")
    return buf.getvalue()


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- battery-weld


def _weld_zip(folder: Path, root: str = "welding/", name: str = "Battery Weld Anomaly Detection Dataset.zip",
              orphans: int = 2, mask_size=(40, 24), missing_mask: bool = False) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("train_welding.json", "{}")
        for d in ("train/good/", "test/good/", "test/defective/", "ground_truth/defective/"):
            z.writestr(root + d, "")
        for i in range(4):
            z.writestr(f"{root}train/good/t{i}.png", _png(seed=i))
        for i in range(2):
            z.writestr(f"{root}test/good/g{i}.png", _png(seed=10 + i))
        for i in range(3):
            z.writestr(f"{root}test/defective/d{i}.png", _png(seed=20 + i))
            if not (missing_mask and i == 2):
                z.writestr(f"{root}ground_truth/defective/d{i}.png",
                           _mask_png(mask_size if i == 0 else (40, 24), value=200))
        for i in range(orphans):
            z.writestr(f"{root}ground_truth/defective/orphan{i}.png", _mask_png())
    return path


def test_battery_weld_from_zip_with_space_counts_orphans(tmp_path):
    _weld_zip(tmp_path)
    [cat] = convert_battery_weld(tmp_path, tmp_path / "out")
    assert cat.name == "battery_weld"
    doc = json.loads((cat / "dataset.json").read_text())
    assert doc["counts"] == {"train": {"good": 4}, "test": {"defective": 3, "good": 2},
                             "ground_truth": {"defective": 3}}
    assert doc["ignored"]["orphan_masks"] == 2 and doc["pixel_labels"] is True
    assert "Apache-2.0" in doc["license"] and doc["command"].startswith("edgead data convert battery-weld")
    # images byte for byte; masks binarised (200 -> 255) and named <stem>_mask.png
    with zipfile.ZipFile(tmp_path / "Battery Weld Anomaly Detection Dataset.zip") as z:
        assert (cat / "test" / "defective" / "d1.png").read_bytes() == z.read("welding/test/defective/d1.png")
    m = np.asarray(Image.open(cat / "ground_truth" / "defective" / "d1_mask.png"))
    assert set(np.unique(m)) == {0, 255} and m[6, 6] == 255 and m[0, 0] == 0
    idx = scan_mvtec(tmp_path / "out", "battery_weld")
    assert len(idx.train) == 4 and sum(e.label for e in idx.test) == 3
    assert all(e.mask_path is not None for e in idx.test if e.label)
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())  # no temp folder left


def test_battery_weld_denoised_variant_has_folders_at_top(tmp_path):
    _weld_zip(tmp_path, root="", name="welding-denoised.zip", orphans=0)
    [cat] = convert_battery_weld(tmp_path, tmp_path / "out", variant="denoised")
    assert cat.name == "battery_weld_denoised"
    assert json.loads((cat / "dataset.json").read_text())["ignored"]["orphan_masks"] == 0


def test_battery_weld_bad_inputs_name_the_file(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    with zipfile.ZipFile(bad / "Battery Weld Anomaly Detection Dataset.zip", "w") as z:
        z.writestr("other/readme.txt", "no MVTec folders here")
    with pytest.raises(EdgeadError, match=r"Battery Weld Anomaly Detection Dataset\.zip: expected one folder"):
        convert_battery_weld(bad, tmp_path / "o1")
    with pytest.raises(EdgeadError, match="no 'welding-denoised.zip'"):
        convert_battery_weld(bad, tmp_path / "o1", variant="denoised")
    (bad / "Battery Weld Anomaly Detection Dataset.zip").write_bytes(b"not a zip")
    with pytest.raises(EdgeadError, match="not a readable zip"):
        convert_battery_weld(bad, tmp_path / "o1")

    size = tmp_path / "size"
    size.mkdir()
    _weld_zip(size, mask_size=(40, 20))
    with pytest.raises(EdgeadError, match=r"\.zip:welding/ground_truth/defective/d0\.png: mask is 40x20 but its "
                                          r"image is 40x24"):
        convert_battery_weld(size, tmp_path / "o2")
    assert not (tmp_path / "o2" / "battery_weld").exists()  # nothing half-written
    assert not list((tmp_path / "o2").iterdir())

    nomask = tmp_path / "nomask"
    nomask.mkdir()
    _weld_zip(nomask, missing_mask=True)
    with pytest.raises(EdgeadError, match=r"welding/test/defective/d2\.png: no mask"):
        convert_battery_weld(nomask, tmp_path / "o3")


@pytest.mark.parametrize("variant,train,good,defective,orphans", [("original", 37, 35 - 7, 93, 40),
                                                                  ("denoised", 36, 35, 74, 0)])
def test_battery_weld_real(tmp_path, variant, train, good, defective, orphans):
    # The counts SOURCE.md states for the published zips, less the 7 good test images of the original zip that
    # are byte for byte training images (left out of test, counted).
    [cat] = convert_battery_weld(DATA / "battery-weld", tmp_path, variant=variant)
    doc = json.loads((cat / "dataset.json").read_text())
    assert doc["counts"]["train"] == {"good": train}
    assert doc["counts"]["test"] == {"good": good, "defective": defective}
    assert doc["counts"]["ground_truth"] == {"defective": defective}
    assert doc["ignored"]["orphan_masks"] == orphans
    assert doc["ignored"]["test_images_also_in_train"] == (7 if variant == "original" else 0)
    zip_name = "Battery Weld Anomaly Detection Dataset.zip" if variant == "original" else "welding-denoised.zip"
    with zipfile.ZipFile(DATA / "battery-weld" / zip_name) as z:  # images as published, not re-encoded
        members = {Path(n).name: n for n in z.namelist() if "/defective/" in n and "ground_truth" not in n}
        for p in sorted((cat / "test" / "defective").iterdir())[::10]:
            assert p.read_bytes() == z.read(members[p.name])


# ---------------------------------------------------------------- bsdata


def _labelme(shapes, size) -> str:
    return json.dumps({"version": "4.5.6", "flags": {}, "shapes": shapes, "imagePath": "x.jpg", "imageData": None,
                       "imageWidth": size[0], "imageHeight": size[1]})


def _shape(kind, points, label="Pitting"):
    return {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}


def _bsd(folder: Path, n_normal: int = 10, extra_shapes=None, size=(60, 24)) -> Path:
    (folder / "data").mkdir(parents=True)
    (folder / "label").mkdir()
    images = []
    for i in range(n_normal):
        name = f"01_n{i:02d}_crop_2.jpg"
        Image.fromarray(np.full((size[1], size[0], 3), 100 + i, np.uint8)).save(folder / "data" / name)
        images.append({"filename": name, "type": 2, "annotations": None})
    shapes = {
        "01_dpoly_crop_2": [_shape("polygon", [[2, 2], [12, 2], [12, 10], [2, 10]])],
        "01_drect_crop_2": [_shape("rectangle", [[30, 15], [20, 5]])],  # corners in any order
        "01_dcirc_crop_2": [_shape("circle", [[30, 12], [34, 12]])],
        "01_dclip_crop_2": [_shape("polygon", [[50, -10], [90, -10], [90, 8], [50, 8]])],  # partly outside
        "01_type1_crop_1": [_shape("polygon", [[2, 2], [12, 2], [12, 10]])],
    }
    shapes.update(extra_shapes or {})
    for stem, sh in shapes.items():
        Image.fromarray(np.full((size[1], size[0], 3), 50, np.uint8)).save(folder / "data" / f"{stem}.jpg")
        (folder / "label" / f"{stem}.json").write_text(_labelme(sh, size))
        images.append({"filename": f"{stem}.jpg", "type": 1 if "type1" in stem else 2, "annotations": f"{stem}.json"})
    (folder / "image_data.json").write_text(json.dumps({"images": images}))
    return folder


def test_bsdata_rasterises_polygon_rectangle_circle_and_clips(tmp_path):
    src = _bsd(tmp_path / "src")
    [cat] = convert_bsdata(src, tmp_path / "out", seed=0)
    doc = json.loads((cat / "dataset.json").read_text())
    assert doc["counts"] == {"train": {"good": 8}, "test": {"good": 2, "pitting": 4},
                             "ground_truth": {"pitting": 4}}
    assert doc["ignored"]["excluded_image_types"] == {"type_1_defective": 1}  # type 1: left out, counted
    assert doc["license"].startswith("CC BY-SA 4.0")

    def mask(stem):
        return np.asarray(Image.open(cat / "ground_truth" / "pitting" / f"{stem}_mask.png")) > 0

    poly = mask("01_dpoly_crop_2")
    assert poly[2:11, 2:13].all() and poly.sum() == 9 * 11
    rect = mask("01_drect_crop_2")
    assert rect[5:16, 20:31].all() and rect.sum() == 11 * 11
    circ = mask("01_dcirc_crop_2")
    assert circ[12, 30] and circ[12, 26] and circ[8, 30] and not circ[12, 36] and 30 < circ.sum() < 70
    clip = mask("01_dclip_crop_2")  # the part inside the 60x24 image, rows 0..8, columns 50..59
    assert clip.shape == (24, 60) and clip[0:9, 50:60].all() and clip.sum() == 9 * 10
    assert (cat / "test" / "pitting" / "01_dpoly_crop_2.jpg").read_bytes() == \
        (src / "data" / "01_dpoly_crop_2.jpg").read_bytes()


@pytest.mark.parametrize("shapes,match", [
    ([_shape("line", [[1, 1], [5, 5]])], r"01_dbad_crop_2\.json: shape 0 is a 'line'; expected polygon"),
    ([_shape("polygon", [[1, 1], [5, 5]])], r"01_dbad_crop_2\.json: shape 0 is a polygon of 2 points"),
    ([_shape("polygon", [[100, 100], [120, 100], [120, 120]])], r"01_dbad_crop_2\.json: its shapes cover no pixel"),
])
def test_bsdata_bad_shapes_name_the_file(tmp_path, shapes, match):
    src = _bsd(tmp_path / "src", extra_shapes={"01_dbad_crop_2": shapes})
    with pytest.raises(EdgeadError, match=match):
        convert_bsdata(src, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_bsdata_label_of_another_size_and_missing_files(tmp_path):
    src = _bsd(tmp_path / "src")
    (src / "label" / "01_drect_crop_2.json").write_text(_labelme([_shape("rectangle", [[1, 1], [4, 4]])], (120, 48)))
    with pytest.raises(EdgeadError, match=r"01_drect_crop_2\.json: labelme image size 120x48 but the image is 60x24"):
        convert_bsdata(src, tmp_path / "out")
    (src / "image_data.json").unlink()
    with pytest.raises(EdgeadError, match=r"image_data\.json: missing"):
        convert_bsdata(src, tmp_path / "out")
    with pytest.raises(EdgeadError, match=r"data: missing \(expected BSData layout"):
        convert_bsdata(tmp_path, tmp_path / "out")


def test_bsdata_real(tmp_path):
    [cat] = convert_bsdata(DATA / "bsdata", tmp_path, seed=0)
    doc = json.loads((cat / "dataset.json").read_text())
    # SOURCE.md: 710 unlabelled images (all type 2), 394 labelled of which 69 are type 1
    assert sum(doc["counts"]["train"].values()) + doc["counts"]["test"]["good"] == 710
    assert doc["counts"]["test"]["pitting"] == doc["counts"]["ground_truth"]["pitting"] == 394 - 69
    assert doc["ignored"]["excluded_image_types"] == {"type_1_defective": 69}
    masks = sorted((cat / "ground_truth" / "pitting").iterdir())
    fractions = [(np.asarray(Image.open(m)) > 0).mean() for m in masks[::25]]
    assert all(0 < f < 0.2 for f in fractions)  # small pitting areas, never empty


# ---------------------------------------------------------------- mpdd-metal-plate


def _mpdd(folder: Path, bad_size: bool = False) -> Path:
    k = 0
    for split, n in (("train", 9), ("val", 3), ("test", 6)):
        (folder / split / "images").mkdir(parents=True)
        (folder / split / "masks").mkdir()
        for i in range(n):
            name = f"{split}_{i:05d}.png"
            (folder / split / "images" / name).write_bytes(_png((32, 32), seed=k, mode="RGB"))
            defective = i % 3 == 0
            size = (16, 16) if bad_size and split == "val" and defective else (32, 32)
            box = (4, 4, 10, 10) if defective else (0, 0, 0, 0)
            (folder / split / "masks" / name).write_bytes(_mask_png(size, box))
            k += 1
    return folder


def test_mpdd_resplits_normals_and_is_deterministic(tmp_path):
    src = _mpdd(tmp_path / "src")
    [cat] = convert_mpdd_metal_plate(src, tmp_path / "out", seed=0)
    doc = json.loads((cat / "dataset.json").read_text())
    assert doc["counts"] == {"train": {"good": 8}, "test": {"defective": 6, "good": 4},
                             "ground_truth": {"defective": 6}}
    first = _tree_digest(cat)
    convert_mpdd_metal_plate(src, tmp_path / "out", seed=0, overwrite=True)
    assert _tree_digest(cat) == first  # byte-identical for a seed
    convert_mpdd_metal_plate(src, tmp_path / "out", seed=1, overwrite=True)
    again = _tree_digest(cat)
    assert sorted(k for k in again if "good" in k) != sorted(k for k in first if "good" in k)
    # every normal from every source split is somewhere; every defective image is in test
    goods = sorted(p.name for p in cat.glob("*/good/*.png"))
    assert len(goods) == 12 and len(set(goods)) == 12
    with pytest.raises(EdgeadError, match="already exists"):
        convert_mpdd_metal_plate(src, tmp_path / "out")


def test_mpdd_bad_inputs(tmp_path):
    src = _mpdd(tmp_path / "src", bad_size=True)
    with pytest.raises(EdgeadError, match=r"val/masks/val_00000\.png: mask is 16x16 but its image is 32x32"):
        convert_mpdd_metal_plate(src, tmp_path / "out")
    (src / "test" / "masks" / "test_00001.png").unlink()
    shutil.rmtree(src / "val")
    with pytest.raises(EdgeadError, match=r"val: expected images/ and masks/"):
        convert_mpdd_metal_plate(src, tmp_path / "out")


def test_mpdd_real(tmp_path):
    [cat] = convert_mpdd_metal_plate(DATA / "mpdd-metal-plate", tmp_path, seed=0)
    c = json.loads((cat / "dataset.json").read_text())["counts"]
    assert c["train"]["good"] + c["test"]["good"] == 80 and c["test"]["defective"] == 81  # SOURCE.md counts
    assert c["test"]["good"] == round(80 / 3)


# ---------------------------------------------------------------- elpv


def _elpv(folder: Path, size: int = 48) -> Path:
    (folder / "images").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for kind in ("mono", "poly"):
        for i, p in enumerate([0.0] * 15 + [1.0] * 4 + [1 / 3, 2 / 3]):
            name = f"images/{kind}{i:03d}.png"
            a = np.clip(rng.normal(128, 6, (size, size)), 0, 255).astype(np.uint8)
            if p > 0:
                a[size // 3: size // 3 + 3, :] = 20  # a dark crack across the cell
            Image.fromarray(a, "L").save(folder / name)
            rows.append(f"{name}  {p!r:<18}  {kind}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.mark.parametrize("uncertain,good,tests", [("drop", 15, {"defective": 4}),
                                                   ("as-defect", 15, {"defective": 4, "uncertain": 2}),
                                                   ("as-normal", 17, {"defective": 4})])
def test_elpv_categories_and_uncertain(tmp_path, uncertain, good, tests):
    cats = convert_elpv(_elpv(tmp_path / "src"), tmp_path / "out", uncertain=uncertain)
    assert [c.name for c in cats] == ["elpv_mono", "elpv_poly"]
    for cat in cats:
        doc = json.loads((cat / "dataset.json").read_text())
        c = doc["counts"]
        assert c["train"]["good"] + c["test"].pop("good") == good and c["test"] == tests
        assert c["ground_truth"] == {} and doc["pixel_labels"] is False
        assert doc["ignored"]["uncertain_left_out"] == (2 if uncertain == "drop" else 0)
        assert not (cat / "ground_truth").exists()


def test_elpv_missing_package_says_how_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "elpv_dataset" else real(name, *a))
    with pytest.raises(EdgeadError, match=r"pip install elpv-dataset==1\.0\.0\.post1"):
        convert_elpv("package", tmp_path)
    src = _elpv(tmp_path / "src")
    (src / "labels.csv").write_text("images/mono000.png 0.0 cigs\n")
    with pytest.raises(EdgeadError, match=r"labels\.csv:1: type 'cigs'"):
        convert_elpv(src, tmp_path / "out")
    (src / "labels.csv").write_text("images/missing.png 0.0 mono\n")
    with pytest.raises(EdgeadError, match=r"labels\.csv:1: image .*missing\.png not found"):
        convert_elpv(src, tmp_path / "out")


def test_elpv_real_package(tmp_path):
    mono, poly = convert_elpv("package", tmp_path)
    for cat, normal, defective in ((mono, 588, 313), (poly, 920, 402)):  # labels.csv: p = 0 and p = 1 counts
        c = json.loads((cat / "dataset.json").read_text())["counts"]
        assert c["train"]["good"] + c["test"]["good"] == normal and c["test"]["defective"] == defective
    idx = scan_mvtec(tmp_path, "elpv_mono")
    assert all(e.mask_path is None for e in idx.test)


def test_image_level_category_loads_without_masks(tmp_path):
    convert_elpv(_elpv(tmp_path / "src"), tmp_path / "out")
    idx = scan_mvtec(tmp_path / "out", "elpv_mono")
    assert sum(e.label for e in idx.test) == 4 and all(e.mask_path is None for e in idx.test)
    split = load_entries(idx.test, Preprocess(image_size=32))
    assert split.has_masks is False and not split.masks.any()
    # without the dataset.json declaration a defective image with no mask is still an error
    (tmp_path / "out" / "elpv_mono" / "dataset.json").unlink()
    with pytest.raises(EdgeadError, match="no ground-truth mask"):
        scan_mvtec(tmp_path / "out", "elpv_mono")


# ---------------------------------------------------------------- registry and CLI


def test_registry_rejects_options_of_another_converter(tmp_path):
    with pytest.raises(EdgeadError, match="--variant: not an option of bsdata"):
        convert("bsdata", tmp_path, tmp_path / "out", variant="denoised")
    with pytest.raises(EdgeadError, match="dataset 'kolektor'"):
        convert("kolektor", tmp_path, tmp_path / "out")


def test_cli_convert_battery_weld_and_errors(tmp_path):
    def edgead(*args):
        return subprocess.run([sys.executable, "-m", "edgead", "data", "convert", *args], capture_output=True,
                              text=True, timeout=300)

    _weld_zip(tmp_path)
    r = edgead("battery-weld", str(tmp_path), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "battery_weld" in r.stdout and "'defective': 3" in r.stdout
    r = edgead("mpdd-metal-plate", str(tmp_path), str(tmp_path / "o"), "--uncertain", "drop")
    assert r.returncode == 2 and "error: --uncertain: not an option of mpdd-metal-plate" in r.stderr
    assert "Traceback" not in r.stderr


def test_image_level_task_in_a_stream_reports_pixel_metrics_as_na(synth_root, tmp_path, capsys):
    from edgead.cl.config import ReplayConfig
    from edgead.cl.runner import run_stream
    from edgead.cli.tables import print_table
    from edgead.data import TaskStream
    from edgead.engine.trainer import TrainConfig
    from edgead.models.teacher_student import DetectorConfig

    root = tmp_path / "root"
    shutil.copytree(synth_root / "nut", root / "nut")
    convert_elpv(_elpv(tmp_path / "src", size=64), root)
    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64)
    cfg = TrainConfig(epochs=1, batch_size=8, seed=0, progress=False, val_fraction=0.25)
    res = run_stream(TaskStream(root, ["nut", "elpv_mono"]), det, cfg, ReplayConfig(), tmp_path / "run",
                     log=lambda m: None)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for name in ("pixel_auroc", "pixel_f1", "pixel_ap", "aupro"):
        m = saved["metrics"][name]
        assert m["matrix"][1][1] is None  # n/a, not 0
        assert m["final_average"] == pytest.approx(m["matrix"][1][0])  # the pixel task alone, nothing averaged in
        assert m["final_average_tasks"] == 1
    img = saved["metrics"]["image_auroc"]
    assert img["final_average_tasks"] == 2 and 0.0 <= img["matrix"][1][1] <= 1.0
    print_table(res)
    out = capsys.readouterr().out
    assert "(over 1 of 2 tasks)" in out.splitlines()[3] and "over" not in out.splitlines()[1]


def test_elpv_checks_both_categories_before_writing(tmp_path):
    src = _elpv(tmp_path / "src")
    (tmp_path / "out" / "elpv_poly").mkdir(parents=True)
    (tmp_path / "out" / "elpv_poly" / "keep.txt").write_text("mine")
    with pytest.raises(EdgeadError, match=r"elpv_poly: already exists"):
        convert_elpv(src, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["elpv_poly"]  # mono not written either


@pytest.mark.parametrize("name", ["bsdata", "elpv", "battery-weld"])
def test_conversion_is_byte_identical_for_a_seed(tmp_path, name):
    src = {"bsdata": lambda: _bsd(tmp_path / "src"), "elpv": lambda: _elpv(tmp_path / "src"),
           "battery-weld": lambda: _weld_zip(tmp_path)}[name]()
    cats = convert(name, src, tmp_path / "out", seed=3)
    first = [_tree_digest(c) for c in cats]
    assert convert(name, src, tmp_path / "out", seed=3, overwrite=True) == cats
    assert [_tree_digest(c) for c in cats] == first
