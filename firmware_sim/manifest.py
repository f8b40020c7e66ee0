"""The artifact manifest (ART_DIR/manifest.json): written by `edgead export`, read and checked by the device.

One implementation for both sides, numpy- and stdlib-only. It says what each file is (model, backbone, levels,
input size and preprocessing with the input quantisation; every graph's inputs and outputs with names, shapes,
dtypes and quantisation parameters, the trunk latent's in particular for the replay buffer), the deployment
threshold and score statistics, parameter counts and MACs, the tool versions, and every file's size and
sha256; ``task_calibration`` holds each task's own threshold and score statistics (the top-level
``calibration`` is the task-agnostic one, for images of any task). ``load_manifest`` refuses a manifest of another schema version and any file that is missing or whose
size or hash differs, naming the file, so a device never runs a model other than the one that was checked.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_sim.anomaly_map import LEGACY_SCORE, ScorePost
from firmware_sim.atomic import atomic_write_json
from firmware_sim.digest import sha256_file
from firmware_sim.errors import UserError
from firmware_sim.manifest_check import check_fields
from firmware_sim.preprocess import Preprocess

SCHEMA = "edgead-artifacts"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("schema", "schema_version", "model", "backbone", "levels", "input", "formats", "files",
                 "calibration", "tools")


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _check_name(name: str) -> None:
    # Files are plain names inside ART_DIR: a manifest must not point a device anywhere else.
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") \
            or name == MANIFEST_NAME:
        raise UserError(f"manifest lists file {name!r}: expected a plain file name inside the artifact folder")


@dataclass
class Manifest:
    root: Path
    data: dict[str, Any]

    @property
    def model(self) -> str:
        return self.data["model"]

    @property
    def backbone(self) -> str:
        return self.data["backbone"]

    @property
    def levels(self) -> list[int]:
        return list(self.data["levels"])

    @property
    def image_size(self) -> int:
        return int(self.data["input"]["image_size"])

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.data["input"]["preprocess"])

    @property
    def score_post(self) -> ScorePost:
        """How maps become scores (blur, max / top-k mean); manifests written before it was recorded: max."""
        return ScorePost.parse((self.data.get("anomaly_map") or {}).get("score") or LEGACY_SCORE)

    @property
    def threshold(self) -> float:
        return float(self.data["calibration"]["threshold"])

    @property
    def tasks(self) -> list[str]:
        """Names of the tasks with their own threshold (empty for an export without per-task calibration)."""
        return list((self.data.get("task_calibration") or {}).get("tasks", []))

    def calibration(self, task: str | None = None) -> dict[str, Any]:
        """Threshold and score statistics: the task-agnostic ones, or task ``task``'s own (UserError listing
        the tasks for a name this artifact does not know)."""
        if task is None:
            return self.data["calibration"]
        per = (self.data.get("task_calibration") or {}).get("per_task") or {}
        if task not in per:
            have = ", ".join(per) if per else "none (exported without per-task thresholds)"
            raise UserError(f"--task {task!r}: not a task of {self.root / MANIFEST_NAME}; its tasks: {have}")
        return per[task]

    @property
    def formats(self) -> list[str]:
        return list(self.data["formats"])

    def graph(self, fmt: str, name: str) -> dict[str, Any]:
        """A graph's entry: file, inputs and outputs (each with name, shape, dtype, layout, quantization)."""
        try:
            return self.data["formats"][fmt]["graphs"][name]
        except KeyError:
            have = {f: sorted(v.get("graphs", {})) for f, v in self.data["formats"].items()}
            raise UserError(f"{self.root / MANIFEST_NAME}: no graph {name!r} in format {fmt!r} (has {have})") from None

    def graph_path(self, fmt: str, name: str) -> Path:
        return self.root / self.graph(fmt, name)["file"]

    def latent(self, fmt: str = "tflite-int8") -> dict[str, Any]:
        """The trunk's latent output entry (shape, dtype, layout, scale, zero point) for the replay buffer."""
        for out in self.graph(fmt, "trunk")["outputs"]:
            if out["name"] == "latent":
                return out
        raise UserError(f"{self.root / MANIFEST_NAME}: trunk of {fmt!r} has no 'latent' output")


def verify_files(root: Path, files: dict[str, Any]) -> None:
    for name, rec in files.items():
        _check_name(name)
        path = root / name
        if not path.is_file():
            raise UserError(f"{path}: listed in the manifest but missing")
        size = path.stat().st_size
        if size != rec.get("size"):
            raise UserError(f"{path}: size {size} B differs from the manifest's {rec.get('size')} B "
                            f"(the file was changed or truncated)")
        if sha256_file(path) != rec.get("sha256"):
            raise UserError(f"{path}: sha256 differs from the manifest's (the file was changed)")


def validate(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UserError(f"{where}: not a manifest (expected a JSON object)")
    if data.get("schema") != SCHEMA:
        raise UserError(f"{where}: not an edgead artifact manifest (schema {data.get('schema')!r}, "
                        f"expected {SCHEMA!r})")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise UserError(f"{where}: manifest schema version {version!r} is not supported (this runtime reads "
                        f"version {SCHEMA_VERSION}{'; upgrade edgead' if newer else ''})")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise UserError(f"{where}: manifest lacks {missing}")
    if not isinstance(data["files"], dict):
        raise UserError(f"{where}: 'files' must map file names to size and sha256")
    for name in data["files"]:
        _check_name(name)
    check_fields(data, where)
    for fmt, entry in data["formats"].items():
        for gname, g in entry.get("graphs", {}).items():
            if g.get("file") not in data["files"]:
                raise UserError(f"{where}: graph {fmt}/{gname} names file {g.get('file')!r}, which is not listed "
                                f"in 'files'")
            weights = g.get("weights")  # an OpenVINO IR's .bin beside its .xml
            if weights is not None and weights not in data["files"]:
                raise UserError(f"{where}: graph {fmt}/{gname} names weights file {weights!r}, which is not listed "
                                f"in 'files'")
            tpu = g.get("edgetpu") or {}  # the Edge TPU-compiled copy, recorded beside the original
            for extra in (tpu.get("file"), tpu.get("log")):
                if extra is not None and extra not in data["files"]:
                    raise UserError(f"{where}: graph {fmt}/{gname} names Edge TPU file {extra!r}, which is not "
                                    f"listed in 'files'")
    return data


def load_manifest(art_dir: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read ART_DIR/manifest.json, check its schema, and (verify=True) every file's size and sha256."""
    root = Path(art_dir)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{path}: no manifest (not an edgead artifact folder, or an unfinished export)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{path}: manifest is not valid JSON ({e})") from None
    data = validate(data, str(path))
    if verify:
        verify_files(root, data["files"])
    return Manifest(root, data)


def write_manifest(art_dir: str | os.PathLike, data: dict[str, Any], files: list[str]) -> Path:
    """Record size and sha256 of ``files`` (names inside art_dir) and write the manifest atomically."""
    root = Path(art_dir)
    for name in files:
        _check_name(name)
    out = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **data,
           "files": {name: file_record(root / name) for name in sorted(files)}}
    validate(out, str(root / MANIFEST_NAME))
    return atomic_write_json(root / MANIFEST_NAME, out)
