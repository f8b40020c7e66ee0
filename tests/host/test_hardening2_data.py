"""Issue 21, data side: converters that decode-check what they copy, labelme files of any shape, folder datasets
with overlapping roles, JPEG masks, and YAML files (config and dataset) that cannot blow up or crash the reader.

Each test is one case of the December 2026 bad-input probe: it failed (traceback, silent wrong result or
unbounded work) before the fix it names.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgead.config_file import read_config
from edgead.data import scan_mvtec
from edgead.data.battery_weld import MAX_MEMBER_BYTES, convert_battery_weld
from edgead.data.bsdata import convert_bsdata
from edgead.data.folder import read_dataset_file, stream_from_options
from edgead.data.labelme import rasterise, read_labelme
from edgead.data.layout import mask_threshold, scan_folder
from edgead.data.magnetic_tile import convert_magnetic_tile
from edgead.data.mpdd import convert_mpdd_metal_plate
from edgead.errors import EdgeadError
from firmware_sim.preprocess import load_mask
from tests.host.test_converters import DATA, _bsd, _labelme, _mask_png, _mpdd, _png, _shape, _weld_zip

# ---------------------------------------------------------------- converters: decode before copying

ZIP_NAME = "Battery Weld Anomaly Detection Dataset.zip"


def _add_members(zip_path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(zip_path, "a") as z:
        for name, data in members.items():
            z.writestr(name, data)


def _truncated_png(seed=5) -> bytes:
    data = _png(seed=seed)
    return data[: len(data) // 3]


def test_battery_weld_refuses_corrupt_and_truncated_members_naming_them(tmp_path):
    _weld_zip(tmp_path)
    _add_members(tmp_path / ZIP_NAME, {"welding/train/good/text.png": b"this is not an image\n" * 10})
    with pytest.raises(EdgeadError, match=r"\.zip:welding/train/good/text\.png: cannot read image.*--skip-bad"):
        convert_battery_weld(tmp_path, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())  # nothing half-written


def test_battery_weld_skip_bad_counts_bad_members_not_as_normals(tmp_path):
    _weld_zip(tmp_path)
    _add_members(tmp_path / ZIP_NAME, {"welding/train/good/text.png": b"not an image",
                                       "welding/train/good/cut.png": _truncated_png(),
                                       "welding/test/defective/cutd.png": _truncated_png(7),
                                       "welding/ground_truth/defective/cutd.png": _mask_png()})
    with pytest.warns(UserWarning, match=r"3 unreadable image\(s\) skipped"):
        [cat] = convert_battery_weld(tmp_path, tmp_path / "out", skip_bad=True)
    doc = json.loads((cat / "dataset.json").read_text())
    assert doc["counts"]["train"] == {"good": 4} and doc["counts"]["test"] == {"defective": 3, "good": 2}
    assert doc["counts"]["ground_truth"] == {"defective": 3}  # the bad defect image's mask left out with it
    assert doc["ignored"]["bad_images"] == 3
    assert any("cut.png" in e for e in doc["ignored"]["bad_image_examples"])
    assert not any(".scratch" in e for e in doc["ignored"]["bad_image_examples"])  # the zip member, not a temp copy


def test_battery_weld_caps_a_member_declared_size_before_extracting(tmp_path):
    _weld_zip(tmp_path)
    big = b"\0" * (MAX_MEMBER_BYTES + 1)  # a zero-filled "image": a few hundred kB inside the zip
    with zipfile.ZipFile(tmp_path / ZIP_NAME, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("welding/train/good/bomb.png", big)
    del big
    with pytest.raises(EdgeadError, match=r"welding/train/good/bomb\.png: .*over the .* limit"):
        convert_battery_weld(tmp_path, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())
    with pytest.warns(UserWarning, match="1 unreadable image"):
        [cat] = convert_battery_weld(tmp_path, tmp_path / "out", skip_bad=True)
    assert json.loads((cat / "dataset.json").read_text())["counts"]["train"] == {"good": 4}


def test_mpdd_truncated_image_is_refused_naming_it(tmp_path):
    src = _mpdd(tmp_path / "src")
    img = src / "val" / "images" / "val_00001.png"
    img.write_bytes(img.read_bytes()[:100])  # header intact, pixels cut
    with pytest.raises(EdgeadError, match=r"val/images/val_00001\.png: cannot read image"):
        convert_mpdd_metal_plate(src, tmp_path / "out")


def test_huge_image_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 32 * 32 - 1)  # PIL's own limit, lowered for a small test
    src = _mpdd(tmp_path / "src")
    with pytest.raises(EdgeadError, match=r"train_00000\.png: .*too large to decode safely"):
        convert_mpdd_metal_plate(src, tmp_path / "out")


def test_mpdd_binarises_masks_at_127_as_its_docstring_says(tmp_path):
    src = _mpdd(tmp_path / "src")
    a = np.zeros((32, 32), np.uint8)
    a[3, 3] = 3  # one stray pixel in a normal image's mask: not a defect
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    (src / "train" / "masks" / "train_00001.png").write_bytes(buf.getvalue())
    [cat] = convert_mpdd_metal_plate(src, tmp_path / "out")
    counts = json.loads((cat / "dataset.json").read_text())["counts"]
    assert counts["test"]["defective"] == 6 and counts["train"]["good"] + counts["test"]["good"] == 12


def _magnetic(folder: Path, defect_mask: np.ndarray) -> Path:
    for cls, n in (("MT_Free", 6), ("MT_Crack", 2)):
        (folder / cls / "Imgs").mkdir(parents=True)
        for i in range(n):
            value = 60 + i if cls == "MT_Free" else 150 + i
            Image.fromarray(np.full((20, 30), value, np.uint8)).save(folder / cls / "Imgs" / f"{cls}_{i}.jpg")
            m = defect_mask if (cls != "MT_Free" and i == 0) else np.zeros((20, 30), np.uint8)
            if cls != "MT_Free" and i == 1:
                m = np.zeros((20, 30), np.uint8)
                m[5:9, 5:9] = 255
            Image.fromarray(m).save(folder / cls / "Imgs" / f"{cls}_{i}.png")
    return folder


def test_magnetic_tile_refuses_a_faint_mask_that_the_threshold_would_empty(tmp_path):
    faint = np.zeros((20, 30), np.uint8)
    faint[4:10, 4:10] = 90  # a defect drawn only at values <= 127
    src = _magnetic(tmp_path / "src", faint)
    with pytest.raises(EdgeadError, match=r"MT_Crack_0\.png: .*no pixel above 127.*values up to 90"):
        convert_magnetic_tile(src, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_magnetic_tile_flags_an_all_zero_source_mask(tmp_path):
    src = _magnetic(tmp_path / "src", np.zeros((20, 30), np.uint8))
    with pytest.warns(UserWarning, match=r"1 defect image\(s\) .*mark no defect pixel.*MT_Crack_0"):
        cat = convert_magnetic_tile(src, tmp_path / "out")
    doc = json.loads((cat / "dataset.json").read_text())
    assert doc["ignored"]["empty_masks"] == 1 and doc["ignored"]["empty_mask_examples"] == ["crack/MT_Crack_0"]


# ---------------------------------------------------------------- labelme


def _doc(shapes, size=(40, 20), **extra) -> dict:
    return {**json.loads(_labelme(shapes, size)), **extra}


@pytest.mark.parametrize("shapes, extra, match", [
    (["a string"], {}, r"x\.json: shape 0 is str; expected an object"),
    ([_shape(["polygon"], [[1, 1], [5, 1], [5, 5]])], {}, r"x\.json: shape 0 has shape_type \['polygon'\]"),
    ([{**_shape("polygon", [[1, 1]]), "points": {"x": 1}}], {}, r"x\.json: shape 0 has no valid 'points'"),
    ([_shape("polygon", [[1, 1], [5, 1], [5, 5]])], {"imageWidth": "abc"}, r"x\.json: imageWidth 'abc'"),
    ([_shape("polygon", [[1, 1], [5, 1], [5, 5]])], {"imageHeight": [20]}, r"x\.json: imageHeight \[20\]"),
    ([_shape("polygon", [[True, 1], [5, 1], [5, 5]])], {}, r"x\.json: shape 0 has no valid 'points'"),
])
def test_labelme_wrong_types_name_the_file_and_shape(shapes, extra, match):
    with pytest.raises(EdgeadError, match=match):
        rasterise(Path("x.json"), _doc(shapes, **extra), (40, 20))


def test_labelme_deep_json_is_a_clear_error(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(EdgeadError, match=r"deep\.json: .*nested too deeply"):
        read_labelme(p)
    p.write_text('{"shapes": ' + "[" * 50_000 + "]" * 50_000 + "}")
    with pytest.raises(EdgeadError, match=r"deep\.json: .*nested too deeply"):
        read_labelme(p)


@pytest.mark.parametrize("shape", [
    _shape("polygon", [[0, 0], [1e300, 0], [0, 1e300]]),
    _shape("polygon", [[-1e300, -1e300], [1e300, -1e300], [1e300, 1e300], [-1e300, 1e300]]),
    _shape("circle", [[20, 10], [20 + 1e15, 10]]),
    _shape("rectangle", [[-1e300, -1e300], [1e300, 1e300]]),
])
def test_labelme_shapes_with_huge_coordinates_cover_the_image(shape):
    mask = rasterise(Path("x.json"), _doc([shape]), (40, 20))
    assert mask.shape == (20, 40) and mask.all()


def test_labelme_huge_shape_is_clipped_not_moved():
    # A triangle with one far vertex: inside the image it is the half-plane below the line y = x / 2 ... the
    # same pixels as the same triangle with a vertex at a moderate distance along the same edge.
    far = rasterise(Path("x.json"), _doc([_shape("polygon", [[0, 0], [4e12, 2e12], [0, 2e12]])]), (40, 20))
    near = rasterise(Path("x.json"), _doc([_shape("polygon", [[0, 0], [400, 200], [0, 200]])]), (40, 20))
    assert (far == near).mean() > 0.99 and near.any() and not near.all()
    circle = rasterise(Path("x.json"), _doc([_shape("circle", [[1e15 + 20, 10], [20, 10]])]), (40, 20))
    assert circle[:, 21:].all() and not circle[:, :19].any()  # a circle this large is a straight edge here


def test_bsdata_with_a_deep_or_wrong_label_names_it(tmp_path):
    src = _bsd(tmp_path / "src")
    (src / "label" / "01_drect_crop_2.json").write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(EdgeadError, match=r"01_drect_crop_2\.json: .*nested too deeply"):
        convert_bsdata(src, tmp_path / "out")
    (src / "label" / "01_drect_crop_2.json").write_text(json.dumps({"shapes": ["oops"]}))
    with pytest.raises(EdgeadError, match=r"01_drect_crop_2\.json: shape 0 is str"):
        convert_bsdata(src, tmp_path / "out")


# ---------------------------------------------------------------- folder datasets


def _img(path: Path, seed: int, size=(32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(size, seed=seed, mode="RGB"))


@pytest.fixture
def plain(tmp_path) -> Path:
    root = tmp_path / "plain"
    for i in range(5):
        _img(root / "good" / f"g{i}.png", i)
    for i in range(3):
        _img(root / "bad" / f"b{i}.png", 10 + i)
        (root / "masks").mkdir(exist_ok=True)
        (root / "masks" / f"b{i}_mask.png").write_bytes(_mask_png((32, 32), (4, 4, 12, 12)))
    return root


@pytest.mark.parametrize("roles, match", [
    ({"mask": "bad"}, r"--abnormal .*bad and --mask .*bad are the same folder \(every abnormal image would be"),
    ({"abnormal": "good"}, r"--normal .*good and --abnormal .*good are the same folder"),
    ({"normal_test": "good"}, r"--normal .*good and --normal-test .*good are the same folder"),
    ({"mask": "good"}, r"--normal .*good and --mask .*good are the same folder"),
])
def test_folder_roles_in_one_folder_are_refused(plain, tmp_path, roles, match):
    opts = {"normal": plain / "good", "abnormal": plain / "bad", "mask": plain / "masks"}
    opts.update({k: plain / v for k, v in roles.items()})
    with pytest.raises(EdgeadError, match=match):
        stream_from_options(None, None, out=tmp_path / "run", **opts)
    assert not (tmp_path / "run" / "dataset.yaml").exists()


def test_folder_roles_through_a_symlink_or_dataset_file_are_refused(plain, tmp_path):
    (tmp_path / "alias").symlink_to(plain / "bad")
    with pytest.raises(EdgeadError, match="are the same folder"):
        stream_from_options(None, None, normal=plain / "good", abnormal=plain / "bad", mask=tmp_path / "alias",
                            out=tmp_path / "run")
    f = plain / "ds.yaml"
    f.write_text("tasks:\n  - {name: a, normal: good, abnormal: bad, normal_test: ./good/}\n")
    with pytest.raises(EdgeadError, match=r"ds\.yaml tasks\[0\]: normal .*good and normal_test .*good are the same"):
        read_dataset_file(f)


def test_a_mask_that_is_its_own_image_is_refused(plain):
    (plain / "masks" / "b1_mask.png").unlink()
    (plain / "masks" / "b1_mask.png").symlink_to(plain / "bad" / "b1.png")
    with pytest.raises(EdgeadError, match=r"b1\.png: its mask .*b1_mask\.png is the image itself"):
        scan_folder(plain / "good", plain / "bad", plain / "masks")


def test_one_file_in_two_roles_is_warned_about(plain):
    shutil.copy(plain / "bad" / "b2.png", plain / "good" / "copy_of_b2.png")
    with pytest.warns(UserWarning, match=r"1 file\(s\) appear in two roles.*copy_of_b2\.png.*b2\.png"):
        scan_folder(plain / "good", plain / "bad", plain / "masks")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (plain / "good" / "copy_of_b2.png").unlink()
        scan_folder(plain / "good", plain / "bad", plain / "masks")  # no overlap, no warning


def _jpeg_mask(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=75)
    return buf.getvalue()


def test_jpeg_masks_are_warned_about_and_binarised_above_127(plain):
    truth = np.zeros((64, 64), np.uint8)
    truth[10:30, 14:40] = 255
    for i in range(3):
        (plain / "masks" / f"b{i}_mask.png").unlink()
        (plain / "masks" / f"b{i}_mask.jpg").write_bytes(_jpeg_mask(truth))
    jpg = plain / "masks" / "b0_mask.jpg"
    raw = np.asarray(Image.open(jpg))
    assert ((raw > 0) != (truth > 0)).sum() > 10  # compression noise that "> 0" would count as defect
    assert mask_threshold(jpg) == 127 and mask_threshold(plain / "m.png") == 0
    assert (load_mask(jpg, threshold=mask_threshold(jpg)) == (truth > 0)).all()  # the drawn area exactly
    with pytest.warns(UserWarning, match=r"3 mask\(s\) are JPEG, e.g. .*b0_mask\.jpg.*binarised at > 127"):
        scan_folder(plain / "good", plain / "bad", plain / "masks")


def test_jpeg_masks_in_mvtec_layout_are_warned_about_too(synth_root, tmp_path):
    root = tmp_path / "mv"
    shutil.copytree(synth_root / "nut", root / "nut")
    gt = next(p for p in (root / "nut" / "ground_truth").iterdir() if p.is_dir())
    m = next(gt.glob("*_mask.png"))
    (m.with_suffix(".jpg")).write_bytes(_jpeg_mask(np.asarray(Image.open(m))))
    m.unlink()
    with pytest.warns(UserWarning, match=r"1 mask\(s\) are JPEG, e.g. .*_mask\.jpg"):
        scan_mvtec(root, "nut")


# ---------------------------------------------------------------- YAML: config and dataset files


def _alias_bomb(levels: int = 7) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"tasks: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def _edgead(*args):
    from edgead.cli import cli

    cli.main(args=[str(a) for a in args], standalone_mode=False)


@pytest.fixture(autouse=True)
def _restore_log_env(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # the CLI group sets it; monkeypatch puts it back


def test_config_alias_bomb_is_refused_at_once_with_a_short_message(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(7))
    assert len(bomb.read_bytes()) < 400
    t0 = time.perf_counter()
    with pytest.raises(EdgeadError) as e:
        _edgead("train", "--config", bomb, "--out", tmp_path / "r")
    assert time.perf_counter() - t0 < 2.0
    assert "bomb.yaml" in str(e.value) and "alias" in str(e.value) and len(str(e.value)) < 500
    assert not (tmp_path / "r").exists()


def test_config_deep_nesting_is_a_clear_error(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("epochs: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(EdgeadError, match=r"deep\.yaml: .*nested .*deeper than"):
        _edgead("train", "--config", deep, "--out", tmp_path / "r")


@pytest.mark.parametrize("text, match", [
    ("epochs: [1, 2]\n", r"bad\.yaml: key 'epochs' is a list; expected a whole number"),
    ("lr: {a: 1}\n", r"bad\.yaml: key 'lr' is a mapping; expected a number"),
    ("epochs: abc\n", r"bad\.yaml: key 'epochs' = 'abc': .*not a valid integer"),
    ("quiet: maybe\n", r"bad\.yaml: key 'quiet' = 'maybe'"),
    ("strategy: [finetune]\n", r"bad\.yaml: key 'strategy' is a list; expected one of"),
])
def test_config_values_of_the_wrong_type_name_key_and_file(tmp_path, text, match):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(EdgeadError, match=match):
        _edgead("train", "--config", bad, "--out", tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_config_list_of_task_names_is_joined(tmp_path):
    import click

    from edgead.cli.train import train

    ok = tmp_path / "ok.yaml"
    ok.write_text("tasks: [nut, brick]\nepochs: 2\n")
    assert read_config(ok) == {"tasks": ["nut", "brick"], "epochs": 2}
    ctx = train.make_context("train", ["--config", str(ok), "--out", str(tmp_path / "r")])
    assert ctx.params["tasks"] == "nut,brick" and ctx.params["epochs"] == 2  # as config_to_argv joins lists
    assert isinstance(ctx, click.Context)


@pytest.mark.parametrize("text, match", [
    ("name: [a]\nnormal: good\n", r"ds\.yaml: 'name' is a list; expected a task name"),
    ("normal: {a: 1}\n", r"ds\.yaml: 'normal' is a mapping; expected a folder path"),
    ("normal: good\nabnormal: 5\n", r"ds\.yaml: 'abnormal' is an int; expected a folder path"),
    ("tasks: [{normal: good}, 7]\n", r"ds\.yaml tasks\[1\]: expected a mapping"),
])
def test_dataset_file_types_are_checked(tmp_path, text, match):
    f = tmp_path / "ds.yaml"
    f.write_text(text)
    with pytest.raises(EdgeadError, match=match):
        read_dataset_file(f)


def test_dataset_file_alias_bomb_and_oversized_file(tmp_path):
    f = tmp_path / "ds.yaml"
    f.write_text(_alias_bomb(7).replace("tasks:", "normal:"))
    with pytest.raises(EdgeadError, match=r"ds\.yaml: .*alias"):
        read_dataset_file(f)
    f.write_text("normal: good\n" + "# padding\n" * 200_000)
    with pytest.raises(EdgeadError, match=r"ds\.yaml: .*larger than"):
        read_dataset_file(f)


def test_deep_json_beside_the_images_is_a_clear_error(synth_root, tmp_path):
    root = tmp_path / "mv"
    shutil.copytree(synth_root / "nut", root / "nut")
    (root / "nut" / "dataset.json").write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(EdgeadError, match=r"nut/dataset\.json: not readable JSON \(nested too deeply\)"):
        scan_mvtec(root, "nut")
    src = _bsd(tmp_path / "src")
    (src / "image_data.json").write_text('{"images": ' + "[" * 50_000 + "]" * 50_000 + "}")
    with pytest.raises(EdgeadError, match=r"image_data\.json: not BSData's image list .*RecursionError"):
        convert_bsdata(src, tmp_path / "out")
    (src / "image_data.json").write_text('{"images": [{"filename": "x.jpg", "type": 1e400}]}')
    with pytest.raises(EdgeadError, match=r"image_data\.json: not BSData's image list .*OverflowError"):
        convert_bsdata(src, tmp_path / "out")


def test_mpdd_real_masks_are_strictly_binary():
    # Why MPDD's > 127 equals > 0 on the published copy (mpdd.py's docstring): its masks hold only 0 and 255.
    masks = sorted((DATA / "mpdd-metal-plate").glob("*/masks/*.png"))
    values = set()
    for m in masks:
        values |= set(np.unique(np.asarray(Image.open(m))).tolist())
    assert len(masks) == 161 and values == {0, 255}


def test_files_edgead_writes_have_no_aliases_and_read_back(tmp_path):
    from edgead.config_file import record_config
    from edgead.data.folder import FolderSpec, write_dataset_file

    shared = ["nut", "brick"]  # one object under two keys: yaml.safe_dump would write an alias the reader refuses
    path = record_config(tmp_path, {"tasks": shared, "levels": shared, "epochs": 1})
    assert "*" not in path.read_text() and read_config(path) == {"tasks": shared, "levels": shared, "epochs": 1}
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    specs = [FolderSpec("x", tmp_path / "a", tmp_path / "b"), FolderSpec("y", tmp_path / "a", tmp_path / "b")]
    assert read_dataset_file(write_dataset_file(tmp_path / "ds.yaml", specs)) == specs


def test_a_test_image_that_is_a_training_image_is_left_out_and_counted(tmp_path):
    _weld_zip(tmp_path)
    _add_members(tmp_path / ZIP_NAME, {"welding/test/good/again.png": _png(seed=2)})  # = train/good/t2.png
    with pytest.warns(UserWarning, match=r"1 test image\(s\) left out, byte for byte .*good/again\.png = train/t2"):
        [cat] = convert_battery_weld(tmp_path, tmp_path / "out")
    doc = json.loads((cat / "dataset.json").read_text())
    assert doc["counts"]["test"]["good"] == 2 and doc["ignored"]["test_images_also_in_train"] == 1
    assert not (cat / "test" / "good" / "again.png").exists()


def test_a_huge_task_list_gives_a_short_error(synth_root):
    for tasks, match in [("nut," * 100_000, r"task list of 100000 names a category twice: \['nut'\]"),
                         (",".join(f"x{i}" for i in range(100_000)), r"unknown categories \['x0', .* and 99992 more\]")]:
        with pytest.raises(EdgeadError, match=match) as e:
            stream_from_options(synth_root, tasks)
        assert len(str(e.value)) < 1000
