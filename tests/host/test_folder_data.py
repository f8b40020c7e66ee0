"""Any folders of images as tasks (anomalib's Folder), dataset files, and --max-train."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgead.data.folder import FolderStream, open_stream, read_dataset_file, stream_from_options
from edgead.data.stream import TaskStream
from edgead.errors import EdgeadError
from firmware_sim.preprocess import Preprocess

PRE = Preprocess(image_size=32)


@pytest.fixture(scope="module")
def folders(synth_root, tmp_path_factory) -> Path:
    """synth 'nut' as plain folders: good/, defect/ (<type>_<stem>.png), masks/ (<type>_<stem>_mask.png)."""
    root = tmp_path_factory.mktemp("folders")
    cat = synth_root / "nut"
    shutil.copytree(cat / "train" / "good", root / "good")
    (root / "defect").mkdir()
    (root / "masks").mkdir()
    for d in sorted(p for p in (cat / "test").iterdir() if p.is_dir() and p.name != "good"):
        for img in sorted(d.glob("*.png")):
            shutil.copy(img, root / "defect" / f"{d.name}_{img.name}")
            shutil.copy(cat / "ground_truth" / d.name / f"{img.stem}_mask.png",
                        root / "masks" / f"{d.name}_{img.stem}_mask.png")
    return root


def test_folder_task_splits_are_disjoint_seeded_and_masked(folders):
    spec_file = folders / "ds.yaml"
    spec_file.write_text("name: nutty\nnormal: good\nabnormal: defect\nmask: masks\n")  # relative to the file
    stream = open_stream(spec_file)
    assert isinstance(stream, FolderStream) and stream.names == ["nutty"]
    d = stream.tasks[0].load(PRE, val_fraction=0.25, seed=3)
    n_good = len(list((folders / "good").iterdir()))
    n_bad = len(list((folders / "defect").iterdir()))
    test_good = [p for p, y in zip(d.test.paths, d.test.labels, strict=True) if y == 0]
    # every normal image is in exactly one of train / val / test-good; 20% held out as good test images
    assert len(d.train) + len(d.val) + len(test_good) == n_good
    assert not ({*d.train.paths} & {*d.val.paths} or {*d.train.paths, *d.val.paths} & {*test_good})
    assert len(test_good) == round(0.2 * n_good) and (d.test.labels == 1).sum() == n_bad
    assert d.test.has_masks and all(d.test.masks[d.test.labels == 1].reshape(n_bad, -1).any(axis=1))
    again = open_stream(spec_file).tasks[0].load(PRE, val_fraction=0.25, seed=3)
    assert again.train.paths == d.train.paths and again.test.paths == d.test.paths
    other = open_stream(spec_file).tasks[0].load(PRE, val_fraction=0.25, seed=4)
    assert other.test.paths != d.test.paths


def test_options_write_a_dataset_file_that_reads_back(folders, tmp_path):
    s = stream_from_options(None, None, normal=folders / "good", abnormal=folders / "defect", mask=folders / "masks",
                            out=tmp_path / "run")
    assert (tmp_path / "run" / "dataset.yaml").is_file() and s.root == tmp_path / "run" / "dataset.yaml"
    (spec,) = read_dataset_file(s.root)
    assert spec.normal == (folders / "good").resolve() and spec.mask == (folders / "masks").resolve()
    assert spec.name == folders.name  # good/ names no product: the folder above does (issue 22)
    named = stream_from_options(None, None, normal=folders / "good", abnormal=folders / "defect",
                                out=tmp_path / "run2", name="screws")
    assert [t.name for t in named] == ["screws"] and read_dataset_file(named.root)[0].name == "screws"
    with pytest.raises(EdgeadError, match="--name screws and --tasks nuts both name"):
        stream_from_options(None, "nuts", normal=folders / "good", abnormal=folders / "defect",
                            out=tmp_path / "run3", name="screws")
    with pytest.raises(EdgeadError, match="--name screws: names a --normal/--abnormal folder task"):
        stream_from_options(folders, None, name="screws")


def test_stream_of_folder_tasks_and_task_selection(folders, tmp_path):
    f = tmp_path / "two.yaml"
    f.write_text(f"tasks:\n  - {{name: a, normal: {folders / 'good'}, abnormal: {folders / 'defect'}}}\n"
                 f"  - {{name: b, normal: {folders / 'good'}, abnormal: {folders / 'defect'}}}\n")
    assert open_stream(f).names == ["a", "b"]
    assert open_stream(f, ["b"]).names == ["b"]
    with pytest.raises(EdgeadError, match=r"unknown task\(s\) \['c'\]"):
        open_stream(f, ["c"])


@pytest.mark.parametrize("text, message", [
    ("normal: good\nabnormal: defect\nmasks: masks\n", "unknown key 'masks'"),
    ("abnormal: defect\n", "'normal' .* is required"),
    ("tasks: []\n", "non-empty list"),
    ("tasks: [{normal: good}]\nextra: 1\n", "unknown key 'extra'"),
])
def test_bad_dataset_files_name_the_problem(folders, tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(EdgeadError, match=message):
        read_dataset_file(f)


def test_option_errors(folders, tmp_path):
    with pytest.raises(EdgeadError, match="needs --abnormal"):
        stream_from_options(None, None, normal=folders / "good", out=tmp_path)
    with pytest.raises(EdgeadError, match="--mask belongs to a folder dataset"):
        stream_from_options(folders, None, mask=folders / "masks", out=tmp_path)
    with pytest.raises(EdgeadError, match="either --data or --normal"):
        stream_from_options(folders, None, normal=folders / "good", abnormal=folders / "defect", out=tmp_path)
    with pytest.raises(EdgeadError, match="--abnormal .*nope: folder not found"):
        stream_from_options(None, None, normal=folders / "good", abnormal=folders / "nope", out=tmp_path)


def test_max_train_is_a_seeded_subset(synth_root):
    full = TaskStream(synth_root, ["brick"]).tasks[0].load(PRE, val_fraction=0.0, seed=0)
    a = TaskStream(synth_root, ["brick"], max_train=5).tasks[0].load(PRE, val_fraction=0.0, seed=0)
    b = TaskStream(synth_root, ["brick"], max_train=5).tasks[0].load(PRE, val_fraction=0.0, seed=0)
    c = TaskStream(synth_root, ["brick"], max_train=5).tasks[0].load(PRE, val_fraction=0.0, seed=1)
    assert len(full.train) == 12 and len(a.train) == 5 and a.train.paths == b.train.paths
    assert set(a.train.paths) < set(full.train.paths) and a.train.paths != c.train.paths
    assert a.train.paths == sorted(a.train.paths)  # file order kept
    assert np.array_equal(a.test.images, full.test.images)  # the test split is untouched
    with pytest.raises(EdgeadError, match="--max-train 0"):
        TaskStream(synth_root, ["brick"], max_train=0).tasks[0].load(PRE)


def test_cli_trains_on_folders_and_eval_finds_them_again(folders, tmp_path, monkeypatch, capsys):
    from edgead.cl.evaluate_run import evaluate_run
    from edgead.cli import cli

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    run = tmp_path / "run"
    cli.main(args=["-q", "train", "--normal", str(folders / "good"), "--abnormal", str(folders / "defect"),
                   "--mask", str(folders / "masks"), "--max-train", "6", "--tasks", "nutty", "--image-size", "64",
                   "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25", "--out", str(run)],
             standalone_mode=False)
    res = json.loads((run / "results.json").read_text())
    assert res["tasks"] == ["nutty"] and res["config"]["data_root"] == str(run / "dataset.yaml")
    assert res["config"]["max_train"] == 6 and res["timings"]["per_task"][0]["epoch_seconds"]
    assert res["metrics"]["pixel_auroc"]["final_average"] is not None  # masks were paired
    again = evaluate_run(run)
    assert again["metrics"]["nutty"]["image_auroc"] == pytest.approx(res["metrics"]["image_auroc"]["matrix"][0][0])
    cli.main(args=["data", "show", str(run / "dataset.yaml"), "--out", str(tmp_path / "m.png")],
             standalone_mode=False)
    assert "nutty" in capsys.readouterr().out and (tmp_path / "m.png").is_file()
