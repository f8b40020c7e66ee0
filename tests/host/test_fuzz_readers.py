"""Fuzzing the host's readers of user-written files (issue 21): `--config` YAML, dataset YAML, labelme JSON,
folder layouts, and the per-task calibration fields of a manifest. Every case is a clean load or an
EdgeadError/UserError that names the file or value, never another exception; a clean load has the types
the rest of the code relies on. Fixed, derandomised samples keep the file to a few seconds;
EDGEAD_FUZZ_EXAMPLES=N runs a deeper, randomised one."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgead.cli.train import train
from edgead.config_file import read_config
from edgead.data.checks import check_masks
from edgead.data.folder import FolderStream, read_dataset_file, stream_from_options
from edgead.data.labelme import rasterise, read_labelme
from edgead.errors import EdgeadError
from firmware_sim.errors import UserError
from firmware_sim.preprocess import Preprocess

_DEEP = int(os.environ.get("EDGEAD_FUZZ_EXAMPLES", "0"))


def _fuzz(n: int):
    return settings(max_examples=_DEEP or n, deadline=None, derandomize=not _DEEP,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


MAX_MESSAGE = 2000  # no error may quote a whole document back

SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=10))
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=6)
# Text with the characters YAML gives meaning to, to reach the parser's error paths.
YAML_TEXT = st.text(st.sampled_from(list("ab1:-[]{}&*!|>'\"#%@`, \n\t.?~=\\")), max_size=80)


def _named(message: str, *names: str) -> bool:
    return any(n in message for n in names) and len(message) < MAX_MESSAGE


def _refused(message: str, *paths) -> None:
    """Count refusals by kind (`--hypothesis-show-statistics`), so a strategy that only makes junk shows."""
    for p in paths:
        message = message.replace(str(p), "")
    event("refused: " + message[:45])


# -- --config files --------------------------------------------------------------------------------------------
PLAUSIBLE = [1, 2, 0.5, 1.5, "64", "brick,nut", True, False, None, "500kB", "squash", "finetune", -1, 2**70]
TRAIN_KEYS = sorted({o[2:] for p in train.params for o in p.opts if o.startswith("--")} - {"config", "help"})


@_fuzz(100)
@given(doc=st.dictionaries(st.sampled_from(TRAIN_KEYS), VALUES | st.sampled_from(PLAUSIBLE), min_size=1, max_size=3),
       other=st.sampled_from(range(6)).flatmap(lambda i: VALUES if i == 0 else YAML_TEXT if i == 1 else st.none()),
       unknown=st.sampled_from(range(8)).flatmap(lambda i: st.text(max_size=6) if i == 0 else st.none()))
def test_config_files(tmp_path, doc, other, unknown):
    path = tmp_path / "train.yaml"
    if unknown is not None:
        doc = {**doc, unknown: 1}  # a key no option has (or, by chance, one that exists)
    # Mostly a mapping of option names; sometimes any value (a list, a number) or any text.
    raw = other if isinstance(other, str) else None
    path.write_text(raw if raw is not None else yaml.safe_dump(other if other is not None else doc))
    try:
        ctx = train.make_context("train", ["--config", str(path), "--out", str(tmp_path / "run")])
    except EdgeadError as e:
        assert _named(str(e), str(path)), str(e)
        event("refused")
        return
    event("clean")
    # A clean load: every value the file gave reached the command with the option's own type.
    for key, value in (read_config(path) or {}).items():
        name = next(p.name for p in train.params if f"--{key.replace('_', '-')}" in p.opts or p.name == key)
        got = ctx.params[name]
        if value is not None and name != "out":
            assert got is not None
        if isinstance(got, float) and not isinstance(value, str):
            assert math.isnan(got) == (isinstance(value, float) and math.isnan(value))


# -- dataset files and folder layouts --------------------------------------------------------------------------
def _png(size=(16, 16), seed=0, mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def _mask(size=(16, 16), fmt="PNG") -> bytes:
    a = np.zeros((size[1], size[0]), np.uint8)
    a[3:9, 4:11] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt)
    return buf.getvalue()


CONTENTS = {"png": _png(), "png2": _png(seed=1), "text": b"not an image", "empty": b"",
            "cut": _png(seed=2)[:60], "small": _png((8, 8), seed=3)}
MASKS = {"mask": _mask(), "jpgmask": _mask(fmt="JPEG"), "wrongsize": _mask((8, 8)), "text": b"nope"}
FOLDERS = ("good", "bad", "masks", "test_good", "missing")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for i in range(4):
        (root / "good").mkdir(exist_ok=True)
        (root / "good" / f"g{i}.png").write_bytes(_png(seed=10 + i))
    for i in range(2):
        (root / "bad").mkdir(exist_ok=True)
        (root / "bad" / f"b{i}.png").write_bytes(_png(seed=20 + i))
        (root / "masks").mkdir(exist_ok=True)
        (root / "masks" / f"b{i}_mask.png").write_bytes(_mask())
    (root / "test_good").mkdir()
    (root / "test_good" / "t0.png").write_bytes(_png(seed=30))
    return root


def _mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """`valid` seven times in eight, any value otherwise: enough clean loads to check what they give."""
    return st.sampled_from(range(8)).flatmap(lambda i: VALUES if i == 0 else valid)  # one_of merges copies


def _folder(usual: str) -> st.SearchStrategy:
    """Mostly the folder that role usually gets, sometimes another (two roles, one folder) or a missing one."""
    return _mostly(st.sampled_from([usual] * 4 + list(FOLDERS)))


FOLDER_SPEC = st.fixed_dictionaries({"normal": _folder("good")}, optional={
    "name": _mostly(st.sampled_from(["screws", "7", ""])), "abnormal": _folder("bad"), "mask": _folder("masks"),
    "normal_test": _folder("test_good")})


@_fuzz(120)
@given(doc=_mostly(FOLDER_SPEC), wrap=st.integers(0, 2), extra=_mostly(st.none()), raw=_mostly(st.none()))
def test_dataset_files(tree, doc, wrap, extra, raw):
    path = tree / "ds.yaml"
    raw = raw if raw is None or isinstance(raw, str) else None  # any text: the parser's error paths
    if isinstance(doc, dict) and extra is not None:
        doc = {**doc, "extra": extra}  # an unknown key
    if wrap and isinstance(doc, dict):
        doc = {"tasks": [copy.deepcopy(doc) for _ in range(wrap)]}  # one or two tasks (one name twice: refused)
    path.write_text(raw if raw is not None else yaml.safe_dump(doc))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            specs = read_dataset_file(path)
            stream = FolderStream(specs, path)
            for task in stream.tasks:
                task.index_files()
        except EdgeadError as e:
            assert _named(str(e), str(path), str(tree)), str(e)
            _refused(str(e), path, tree)
            return
    event("clean")
    for s in specs:
        assert isinstance(s.name, str) and s.name and s.normal.is_absolute()
        folders = [p for p in (s.normal, s.abnormal, s.mask, s.normal_test) if p is not None]
        assert len(set(folders)) == len(folders)  # one folder, one role


BASE_LAYOUT = {"good/g0.png": CONTENTS["png"], "good/g1.png": CONTENTS["png2"], "good/g2.png": _png(seed=4),
               "bad/a.png": _png(seed=5), "bad/b.png": _png(seed=6), "masks/a_mask.png": MASKS["mask"],
               "masks/b_mask.png": MASKS["mask"], "test_good/t.png": _png(seed=7)}


@_fuzz(60)
@given(files=st.dictionaries(st.sampled_from(["good", "bad", "test_good"]).flatmap(
           lambda d: st.sampled_from([f"{d}/{s}.{x}" for s in ("a", "b", "c") for x in ("png", "jpg", "txt")])),
           st.sampled_from(sorted(CONTENTS)), max_size=3),
       masks=st.dictionaries(st.sampled_from(["a_mask.png", "b.png", "c_mask.jpg", "a_mask.bmp", "b_mask.png"]),
                             st.sampled_from(sorted(MASKS)), max_size=2),
       roles=st.fixed_dictionaries({
           "abnormal": st.sampled_from(["bad", "bad", "bad", "good", "masks"]),
           "mask": st.sampled_from(["masks", "masks", None, "bad", "good"]),
           "normal_test": st.sampled_from([None, "test_good", "test_good", "good", "missing"])}),
       skip_bad=st.booleans())
def test_folder_layouts(tmp_path_factory, files, masks, roles, skip_bad):
    root = tmp_path_factory.mktemp("layout")
    for d in ("good", "bad", "masks", "test_good"):
        (root / d).mkdir()
    for rel, content in BASE_LAYOUT.items():  # a usable task, then the drawn changes on top
        (root / rel).write_bytes(content)
    for rel, kind in files.items():
        (root / rel).write_bytes(CONTENTS[kind])
    for name, kind in masks.items():
        (root / "masks" / name).write_bytes(MASKS[kind])
    opts = {k: None if v is None else root / v for k, v in roles.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            stream = stream_from_options(None, None, normal=root / "good", out=root / "run", **opts)
            idx = stream.tasks[0].index_files(skip_bad)
            check_masks(idx, skip_bad=skip_bad)
            data = stream.tasks[0].load(Preprocess(image_size=16), val_fraction=0.0, skip_bad=skip_bad)
        except (EdgeadError, UserError) as e:
            assert _named(str(e), str(root), "--", "task "), str(e)
            _refused(str(e), root)
            return
    event("clean")
    train_files = {e.path.resolve() for e in idx.train}
    assert not train_files & {e.path.resolve() for e in idx.test}  # no image both trains and tests
    assert all(e.mask_path is None or e.mask_path.resolve() != e.path.resolve() for e in idx.test)
    assert len(data.test) and set(np.unique(data.test.labels)) == {0, 1}
    assert data.train.images.dtype == np.uint8 and data.test.masks.dtype == bool


# -- labelme files ---------------------------------------------------------------------------------------------
COORD = (st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2**70, 2**70)
         | st.sampled_from([0, 5, 19, 39, 1e300, -1e300, 1e9]))
SHAPES = st.fixed_dictionaries(
    {"shape_type": st.sampled_from(["polygon", "rectangle", "circle", "line", "point", None]) | VALUES,
     "points": st.lists(st.lists(COORD, min_size=2, max_size=2) | VALUES, max_size=5) | VALUES},
    optional={"label": VALUES}) | VALUES
LABELME = st.fixed_dictionaries({"shapes": st.lists(SHAPES, max_size=3) | VALUES},
                                optional={"imageWidth": st.sampled_from([40, 20]) | VALUES,
                                          "imageHeight": st.sampled_from([20, 40]) | VALUES})


FINITE = st.floats(-1e300, 1e300) | st.sampled_from([0.0, 5.0, 19.5, 39.0, 1e9, -1e9, 1e300, -1e300])
POINT = st.tuples(FINITE, FINITE).map(list)
VALID_SHAPE = st.one_of(
    st.builds(lambda p: {"shape_type": "polygon", "points": p}, st.lists(POINT, min_size=3, max_size=6)),
    st.builds(lambda p: {"shape_type": "rectangle", "points": p}, st.lists(POINT, min_size=2, max_size=2)),
    st.builds(lambda p: {"shape_type": "circle", "points": p}, st.lists(POINT, min_size=2, max_size=2)))
VALID_LABELME = st.fixed_dictionaries({"shapes": st.lists(VALID_SHAPE, max_size=3)},
                                      optional={"imageWidth": st.just(40), "imageHeight": st.just(20)})


def _rectangle_inside(shape: dict) -> tuple[int, int] | None:
    """A pixel a rectangle certainly covers after clipping to the 40x20 image (None: no such pixel)."""
    (x0, y0), (x1, y1) = shape["points"]
    lo_x, hi_x = max(math.ceil(min(x0, x1)) + 1, 0), min(math.floor(max(x0, x1)) - 1, 39)
    lo_y, hi_y = max(math.ceil(min(y0, y1)) + 1, 0), min(math.floor(max(y0, y1)) - 1, 19)
    return ((lo_x + hi_x) // 2, (lo_y + hi_y) // 2) if lo_x <= hi_x and lo_y <= hi_y else None


@_fuzz(200)
@given(doc=st.one_of(VALID_LABELME, VALID_LABELME, LABELME, VALUES),
       raw=st.none() | st.none() | st.none() | st.text(st.sampled_from(list('[]{}":,0123456789.eE-nul ')),
                                                       max_size=60))
def test_labelme_files(tmp_path, doc, raw):
    path = tmp_path / "x.json"
    path.write_text(raw if raw is not None else json.dumps(doc))
    try:
        mask = rasterise(path, read_labelme(path), (40, 20))
    except EdgeadError as e:
        assert _named(str(e), str(path)), str(e)
        event("refused")
        return
    event("clean")
    assert mask.shape == (20, 40) and mask.dtype == bool
    for shape in doc["shapes"] if raw is None else []:  # however far its corners, a rectangle is drawn
        if shape.get("shape_type") == "rectangle" and (px := _rectangle_inside(shape)) is not None:
            assert mask[px[1], px[0]], shape


# -- per-task calibration in a manifest ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory) -> Path:
    from tests.device.test_hardening_device_fuzz import _manifest

    return _manifest(tmp_path_factory.mktemp("manifest")).parent


@_fuzz(120)
@given(names=st.lists(st.sampled_from(["brick", "nut", "7"]), min_size=1, max_size=3, unique=True),
       thresholds=st.lists(st.floats(-10, 10), min_size=3, max_size=3), mutate=st.integers(0, 3), data=st.data())
def test_manifest_task_calibration(manifest_dir, names, thresholds, mutate, data):
    from firmware_sim.manifest import MANIFEST_NAME, load_manifest
    from tests.device.test_hardening_device_fuzz import _mutate

    path = manifest_dir / MANIFEST_NAME
    good = path.read_text()
    per = {n: {"threshold": t, "score_min": t - 1} for n, t in zip(names, thresholds[:len(names)], strict=True)}
    tc = {"tasks": names, "per_task": per}
    for _ in range(mutate):  # none to three values replaced by random JSON, or deleted
        if not isinstance(tc, (dict, list)) or not tc:
            break  # nothing left to mutate
        tc = _mutate(tc, data, drop=True)
    try:
        path.write_text(json.dumps({**json.loads(good), "task_calibration": tc}))
        try:
            m = load_manifest(manifest_dir)
        except UserError as e:
            assert _named(str(e), "task_calibration"), str(e)
            event("refused")
            return
        event("clean")
        for name in m.tasks:  # every listed task has a usable threshold
            assert math.isfinite(float(m.calibration(name)["threshold"]))
    finally:
        path.write_text(good)
