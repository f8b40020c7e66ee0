"""Any folders of images as tasks, as anomalib's Folder: normal images, abnormal images, optional masks.

From the command line: `--normal DIR --abnormal DIR [--mask DIR] [--normal-test DIR]` (one task), or
`--data FILE.yaml`, a small dataset file naming the folders of one task or of a stream of tasks:

    name: screws              # one task
    normal: screws/good       # relative paths are relative to this file
    abnormal: screws/defect
    mask: screws/masks        # optional: <stem>.png or <stem>_mask.png per abnormal image

    tasks:                    # or several tasks, in order
      - {name: screws, normal: screws/good, abnormal: screws/defect}
      - {name: nuts, normal: nuts/good, abnormal: nuts/defect, normal_test: nuts/test-good}

Without `normal_test`, a seeded 20% of the normal images (anomalib Folder's default test split ratio) is held
out as the good test images; the held-out validation normals come from the rest, as for MVTec AD.

One folder cannot hold two roles: the same (resolved) folder given as `normal` and `abnormal`, `mask` and
`abnormal` (every image would be found as its own mask) or `normal` and `normal_test` (the training images
would be the good test images) is refused. Nested folders are allowed: folders are read one level deep, so
`good/` and `good/defect/` share no file. A file that shows up in two roles anyway (a copy, a link) is
warned about when the folders are scanned (`edgead.data.layout`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from edgead.data.layout import CategoryIndex, scan_folder
from edgead.data.loading import load_entries
from edgead.data.stream import TaskData, TaskSequence, TaskStream, few, split_validation, subsample
from edgead.errors import EdgeadError
from firmware_sim.preprocess import Preprocess

TEST_FRACTION = 0.2
SPEC_KEYS = ("name", "normal", "abnormal", "mask", "normal_test")
ROLES = ("normal", "abnormal", "mask", "normal_test")  # the folder keys, in the order errors name them
DATASET_SUFFIXES = (".yaml", ".yml")
# Why two roles in one folder give wrong results without a word.
_SAME_FOLDER = {
    ("normal", "abnormal"): "the model would train on the abnormal images and be tested on them",
    ("abnormal", "mask"): "every abnormal image would be found as its own mask",
    ("normal", "normal_test"): "the good test images would be the training images",
}


def _kind(v: object) -> str:
    names = {list: "a list", dict: "a mapping", bool: "a bool", int: "an int", float: "a float"}
    return names.get(type(v), f"a {type(v).__name__}")


def check_roles(spec: FolderSpec, where: str | None = None, *, flags: bool = False) -> None:
    """Refuse one resolved folder in two roles of a task (see the module docstring), naming both."""
    def shown(k: str) -> str:
        return f"--{k.replace('_', '-')}" if flags else k

    for i, a in enumerate(ROLES):
        for b in ROLES[i + 1:]:
            pa, pb = getattr(spec, a), getattr(spec, b)
            if pa is not None and pb is not None and pa == pb:
                why = _SAME_FOLDER.get((a, b), "one folder cannot hold two roles")
                raise EdgeadError(f"{where + ': ' if where else ''}{shown(a)} {pa} and {shown(b)} {pb} are the "
                                  f"same folder ({why}); expected separate folders")


# Folder names that say what the images are, not which product: a task is then named after the folder above.
GENERIC_FOLDER_NAMES = ("good", "normal", "ok", "train", "images", "normals")


def default_task_name(normal: Path) -> str:
    """A folder task's name when none is given: `screws/good` -> screws (two products' `good/` folders would
    otherwise collide), `screws_ok_images` -> itself."""
    p = Path(normal).expanduser().resolve()
    return p.parent.name if p.name.lower() in GENERIC_FOLDER_NAMES and p.parent.name else p.name


@dataclass(frozen=True)
class FolderSpec:
    """The folders of one task. `abnormal` is needed to evaluate; `mask` enables pixel metrics."""

    name: str
    normal: Path
    abnormal: Path | None = None
    mask: Path | None = None
    normal_test: Path | None = None

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k in SPEC_KEYS if (v := getattr(self, k)) is not None}

    @classmethod
    def from_dict(cls, d: dict, base: Path, where: str, *, flags: bool = False) -> FolderSpec:
        """A task from a dataset file's mapping (or the options, ``flags``: errors then name `--normal` etc.);
        relative folders are taken from `base` and every folder is resolved (links, `..`)."""
        if not isinstance(d, dict):
            raise EdgeadError(f"{where}: expected a mapping with keys {', '.join(SPEC_KEYS)}, got {_kind(d)}")
        unknown = [k for k in d if k not in SPEC_KEYS]
        if unknown:
            raise EdgeadError(f"{where}: unknown key {str(unknown[0])[:80]!r} (expected {', '.join(SPEC_KEYS)})")
        name = d.get("name")
        if name is not None and (isinstance(name, bool) or not isinstance(name, (str, int))):
            raise EdgeadError(f"{where}: 'name' is {_kind(name)}; expected a task name (text)")
        for k in ROLES:
            v = d.get(k)
            if v is not None and not isinstance(v, (str, Path)):
                raise EdgeadError(f"{where}: '{k}' is {_kind(v)}; expected a folder path (quote a folder named "
                                  "like a number)")
        if not d.get("normal"):
            raise EdgeadError(f"{where}: 'normal' (the folder of normal images) is required")

        def path(k: str) -> Path | None:
            v = d.get(k)
            if v is None:
                return None
            try:
                return (base / Path(str(v)).expanduser()).resolve()
            except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a NUL byte, no such user (~x)
                raise EdgeadError(f"{where}: '{k}' {str(v)[:200]!r} is not a usable path ({e})") from None

        normal = path("normal")
        spec = cls(str(d.get("name") or default_task_name(normal)), normal, path("abnormal"), path("mask"),
                   path("normal_test"))
        check_roles(spec, None if flags else where, flags=flags)
        return spec


@dataclass(frozen=True)
class FolderTask:
    """One task of a folder dataset; the same interface as `edgead.data.stream.Task`."""

    index: int
    spec: FolderSpec
    max_train: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def index_files(self, skip_bad: bool = False) -> CategoryIndex:
        s = self.spec
        return scan_folder(s.normal, s.abnormal, s.mask, normal_test_dir=s.normal_test, name=s.name,
                           skip_bad=skip_bad)

    def load(self, pre: Preprocess, *, val_fraction: float = 0.1, seed: int = 0,
             skip_bad: bool = False) -> TaskData:
        """Decode train (normal), held-out validation normals and test images at the training resolution.

        Args:
            pre: the preprocessing (image size) of the detector.
            val_fraction: share of the training normals held out for thresholds and model selection.
            seed: seeds the test split (when no normal_test folder), --max-train and the validation split.
            skip_bad: skip unreadable files with a warning instead of stopping.

        Returns:
            TaskData(train, val, test).
        """
        if self.spec.abnormal is None:
            raise EdgeadError(f"task {self.name}: no abnormal folder; evaluation needs abnormal images "
                              "(--abnormal DIR, or 'abnormal:' in the dataset file)")
        idx = self.index_files(skip_bad)
        train, test = idx.train, idx.test
        if self.spec.normal_test is None:  # hold out good test images from the normals, seeded
            if len(train) < 3:
                raise EdgeadError(f"{self.spec.normal}: {len(train)} normal image(s); at least 3 are needed to "
                                  "hold out good test images (or give a normal_test folder)")
            keep, held = split_validation(len(train), TEST_FRACTION, seed, key=self.name + "/test")
            test = [train[i] for i in held] + test
            train = [train[i] for i in keep]
        # Name the folder that came up empty before anything is decoded (an empty list says nothing).
        if not any(e.label == 1 for e in test):
            raise EdgeadError(f"task {self.name}: no abnormal images in {self.spec.abnormal}; evaluation needs "
                              "some (.png, .jpg, .bmp, .tif or .webp files)")
        if not any(e.label == 0 for e in test):
            raise EdgeadError(f"task {self.name}: no good test images in {self.spec.normal_test}; evaluation "
                              "needs some (or leave normal_test out to hold out 20% of the normals)")
        normals = load_entries(subsample(train, self.max_train, seed, self.name), pre, skip_bad=skip_bad,
                               desc=f"{self.name} train")
        tr, va = split_validation(len(normals), val_fraction, seed, key=self.name)
        test_split = load_entries(test, pre, skip_bad=skip_bad, desc=f"{self.name} test")
        if not (test_split.labels == 1).any() or not (test_split.labels == 0).any():
            raise EdgeadError(f"task {self.name}: needs both good and abnormal test images for evaluation")
        return TaskData(normals.subset(tr), normals.subset(va), test_split)


class FolderStream(TaskSequence):
    """Folder tasks in order; `root` is the dataset file that describes them (recorded by runs)."""

    def __init__(self, specs: list[FolderSpec], root: str | Path, names: list[str] | None = None,
                 max_train: int | None = None):
        self.root = Path(root)
        self.max_train = max_train
        by_name = {s.name: s for s in specs}
        if len(by_name) != len(specs):
            twice = sorted(n for n, k in Counter(s.name for s in specs).items() if k > 1)
            raise EdgeadError(f"{self.root}: two tasks share a name ({few(twice)}); name them apart")
        if names is not None:
            missing = [n for n in names if n not in by_name]
            if missing:
                raise EdgeadError(f"unknown task(s) {few(missing)} in {self.root}; available: {few(list(by_name))}")
            specs = [by_name[n] for n in names]
        self.tasks = [FolderTask(i, s, max_train) for i, s in enumerate(specs)]



def is_dataset_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in DATASET_SUFFIXES


def read_dataset_file(path: str | Path) -> list[FolderSpec]:
    """The task folders named by a dataset file (see the module docstring for its form)."""
    from edgead.yaml_file import load_yaml

    path = Path(path)
    doc = load_yaml(path, "dataset file")
    if not isinstance(doc, dict):
        raise EdgeadError(f"{path}: expected a mapping (normal:, abnormal:, ... or tasks: [...])")
    base = path.resolve().parent
    if "tasks" in doc:
        extra = [k for k in doc if k != "tasks"]
        if extra:
            raise EdgeadError(f"{path}: unknown key {extra[0]!r} beside 'tasks' (put it inside a task)")
        if not isinstance(doc["tasks"], list) or not doc["tasks"]:
            raise EdgeadError(f"{path}: 'tasks' must be a non-empty list of task mappings")
        return [FolderSpec.from_dict(d, base, f"{path} tasks[{i}]") for i, d in enumerate(doc["tasks"])]
    return [FolderSpec.from_dict(doc, base, str(path))]


def write_dataset_file(path: str | Path, specs: list[FolderSpec]) -> Path:
    """Write a dataset file (absolute paths) that `read_dataset_file` reads back to the same specs."""
    from edgead.yaml_file import dump_yaml
    from firmware_sim.atomic import atomic_write_bytes

    doc = specs[0].to_dict() if len(specs) == 1 else {"tasks": [s.to_dict() for s in specs]}
    return atomic_write_bytes(path, dump_yaml(doc).encode())


def open_stream(data: str | Path, tasks: list[str] | tuple[str, ...] | None = None,
                max_train: int | None = None) -> TaskStream | FolderStream:
    """A task stream from an MVTec AD root folder or from a dataset file (.yaml).

    Args:
        data: dataset root in MVTec AD layout, or a dataset file naming image folders.
        tasks: task names in order (default: all, the MVTec thesis order first).
        max_train: at most this many normal training images per task (seeded), for quick trials.

    Returns:
        A stream whose `.tasks` each `load()` train / validation / test splits.
    """
    if is_dataset_file(data):
        return FolderStream(read_dataset_file(data), data, list(tasks) if tasks else None, max_train)
    return TaskStream(data, tasks, max_train)


def stream_from_options(data: str | Path | None, tasks: str | None, *, normal: str | Path | None = None,
                        abnormal: str | Path | None = None, mask: str | Path | None = None,
                        normal_test: str | Path | None = None, max_train: int | None = None,
                        out: str | Path | None = None, name: str | None = None) -> TaskStream | FolderStream:
    """The stream named by the CLI's data options: `--data ROOT|FILE.yaml [--tasks a,b]`, or one folder task
    `--normal DIR --abnormal DIR [--mask DIR] [--normal-test DIR]`, written as OUT/dataset.yaml so that
    eval, export and resume find the same folders. `name` names the folder task (default: --tasks' one value,
    else the normal folder's name, or its parent's for a generic name such as good/).

    Returns:
        A TaskStream (MVTec AD layout) or a FolderStream.
    """
    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    folder_opts = {"abnormal": abnormal, "mask": mask, "normal_test": normal_test}
    if normal is None:
        given = [k for k, v in folder_opts.items() if v is not None]
        if given:
            raise EdgeadError(f"--{given[0].replace('_', '-')} belongs to a folder dataset: give --normal DIR too")
        if name is not None:
            raise EdgeadError(f"--name {name}: names a --normal/--abnormal folder task; the tasks of --data are "
                              "named by their folders (choose them with --tasks)")
        if data is None:
            raise EdgeadError("no data: give --data ROOT (MVTec AD layout) or a dataset .yaml file, or "
                              "--normal DIR --abnormal DIR [--mask DIR]")
        return open_stream(Path(data).expanduser().resolve(), names, max_train)  # runs record an absolute root
    if data is not None:
        raise EdgeadError("give either --data or --normal/--abnormal/--mask, not both")
    if abnormal is None:
        raise EdgeadError("--normal needs --abnormal DIR too: evaluation needs abnormal images")
    if name is not None and names and names != [name]:
        raise EdgeadError(f"--name {name} and --tasks {tasks} both name the folder task: give one")
    name = name if name is not None else names[0] if names and len(names) == 1 else None
    if names and len(names) > 1:
        raise EdgeadError(f"--tasks {tasks}: a --normal/--abnormal dataset is one task; name it with one value")
    spec = FolderSpec.from_dict({"name": name, "normal": str(normal),
                                 **{k: str(v) for k, v in folder_opts.items() if v is not None}},
                                Path.cwd(), "--normal/--abnormal", flags=True)
    for key in ("normal", "abnormal", "mask", "normal_test"):
        p = getattr(spec, key)
        if p is not None and not p.is_dir():
            raise EdgeadError(f"--{key.replace('_', '-')} {p}: folder not found")
    if out is None:
        raise EdgeadError("internal: a folder dataset from options needs the run folder to record it in")
    path = write_dataset_file(Path(out) / "dataset.yaml", [spec])
    return FolderStream([spec], path, None, max_train)
