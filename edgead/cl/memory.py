"""Replay memories for the host trainer, within a byte budget (or a sample count).

`ImageMemory` keeps raw uint8 images at the training resolution (the classic replay). `LatentMemory`
keeps the frozen trunk's latents in the device's own buffer format (firmware_sim.replay_buffer), encoded
by a codec, so a buffer collected on a device and one built here are the same file. Both share the
budget equally among the tasks seen and choose which samples stay with a seeded policy; the choice after
task i depends only on (seed, i), so a resumed run picks the same samples as an uninterrupted one.

Neither knows how many tasks will come. Before each task the learner calls ``reshare`` with the budget of
that moment (it shrinks as calibration anchors accumulate, grows when a later version raises it): the
records already kept are evicted fairly to the new equal shares, and a latent memory whose share no longer
holds its records' crop re-crops every record (a seeded sub-crop, re-encoded) so that the buffer keeps one
record shape. A sixth product arriving months later is handled exactly like the second.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from edgead.cl.crops import MIN_CROP_SIDE, random_crop, record_bytes
from edgead.engine.tensors import compute_latents, compute_teacher_features, to_input
from edgead.engine.trainer import ReplaySource
from edgead.errors import EdgeadError
from firmware_sim.atomic import atomic_write
from firmware_sim.codecs import Codec, get_codec
from firmware_sim.quantization import quantize
from firmware_sim.replay_buffer import FILE_HEADER_SIZE, MAX_NAME_BYTES, TASK_RECORD_SIZE, ReplayBuffer


class ReplayMemory(Protocol):
    """What the continual runner needs of a replay memory (images or latents).

    ``update`` takes task ``task_index``'s training images after the task is trained (the budget is then
    shared equally by the tasks seen); ``source`` gives what the trainer replays (None while empty);
    ``nbytes`` is every byte stored, the "additional memory" of results.json, and ``budget_bytes`` the most it
    may grow to; ``save``/``load`` write and read ``file_suffix`` files atomically, for the checkpoint after
    each task and for resume (``load`` reports damaged records and stops unless ``skip_bad``).
    """

    kind: str
    file_suffix: str

    def update(self, task_index: int, model, images: np.ndarray, pre) -> None: ...

    def reshare(self, task_index: int, budget_bytes: int | None, crop_side: int = 0) -> None: ...

    def holdings(self) -> dict[int, dict]: ...

    def __len__(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    @property
    def budget_bytes(self) -> int: ...

    def samples_per_task(self) -> dict[int, int]: ...

    def source(self) -> ReplaySource | None: ...

    def save(self, path: Path) -> None: ...

    def load(self, path: Path, *, skip_bad: bool = False, log=print) -> None: ...


class ImageMemory:
    """Raw uint8 training images at the training resolution (classic replay).

    Args:
        image_size: the square training resolution; one sample is image_size^2 x 3 bytes.
        budget_bytes: the memory's size in bytes, or None to keep ``memory_size`` samples.
        memory_size: samples in all when there is no byte budget.
        seed: the seeded choice of samples (depends on (seed, task) only).
    """

    kind = "images"
    file_suffix = "npz"

    def __init__(self, image_size: int, *, budget_bytes: int | None, memory_size: int | None, seed: int):
        self.sample_bytes = image_size * image_size * 3
        if budget_bytes is not None and budget_bytes < self.sample_bytes:
            raise EdgeadError(f"replay budget {budget_bytes:,} B is smaller than one {image_size}x{image_size} RGB "
                              f"image ({self.sample_bytes:,} B)")
        self.capacity = budget_bytes // self.sample_bytes if budget_bytes is not None else memory_size
        self.seed = seed
        self.per_task: dict[int, np.ndarray] = {}

    def reshare(self, task_index: int, budget_bytes: int | None, crop_side: int = 0) -> None:
        """The byte budget of this moment (None: keep the sample count); images are never cropped."""
        if budget_bytes is not None:
            self.capacity = max(budget_bytes, 0) // self.sample_bytes
            self._evict(task_index)

    def update(self, task_index: int, model, images: np.ndarray, pre) -> None:
        self.per_task[task_index] = images
        self._evict(task_index)

    def _evict(self, task_index: int) -> None:
        """Every task down to its equal share of the capacity, a seeded choice per (seed, task, kept task)."""
        quota = self.capacity // max(len(self.per_task), 1)
        for t, imgs in self.per_task.items():
            if len(imgs) > quota:
                keep = np.sort(np.random.default_rng([self.seed, task_index, t]).permutation(len(imgs))[:quota])
                self.per_task[t] = imgs[keep]

    def holdings(self) -> dict[int, dict]:
        """Per task index: samples and bytes kept, and the share of the budget they fill."""
        budget = max(self.budget_bytes, 1)
        return {t: {"samples": len(v), "bytes": int(len(v) * self.sample_bytes), "crop": None,
                    "share_of_budget": len(v) * self.sample_bytes / budget} for t, v in self.per_task.items()}

    def __len__(self) -> int:
        return sum(len(v) for v in self.per_task.values())

    @property
    def nbytes(self) -> int:
        return len(self) * self.sample_bytes

    def samples_per_task(self) -> dict[int, int]:
        return {t: len(v) for t, v in self.per_task.items()}

    def source(self):
        return _ImageSource(np.concatenate(list(self.per_task.values()))) if len(self) else None

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, tasks=np.array(sorted(self.per_task), np.int64),
                 **{f"t{t}": v for t, v in self.per_task.items()})
        atomic_write(path, lambda f: f.write(buf.getvalue()))

    @property
    def budget_bytes(self) -> int:
        """The most bytes the memory can hold (what one saved memory file may take)."""
        return self.capacity * self.sample_bytes

    def load(self, path: Path, *, skip_bad: bool = False, log=print) -> None:
        """Restore a saved memory; an unreadable file is an EdgeadError naming it (an .npz has no records to
        salvage, so ``skip_bad`` does not apply)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                self.per_task = {int(t): z[f"t{int(t)}"] for t in z["tasks"]}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise EdgeadError(f"{path}: replay memory unreadable ({type(e).__name__}: {e}); "
                              "cannot resume from it") from None


class _ImageSource:
    """Replayed images go through the frozen trunk and teacher on every draw: that is their cost."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def prepare(self, model, pre, device: str) -> None:
        self.model, self.pre, self.device = model, pre, device

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: np.ndarray):
        return self.model.latent(to_input(self.images[idx], self.pre, self.device)), None


class LatentMemory:
    """The frozen trunk's latents in the device's replay buffer format (firmware_sim.replay_buffer).

    Build one with `LatentMemory.new` (an empty buffer for a codec and a budget) or `LatentMemory.from_file`
    (a buffer collected on a device); both go through this constructor.

    Args:
        buffer: the replay buffer that holds the records.
        seed: the seeded choice of samples.
        memory_size: a sample count shared equally by the tasks (None: the buffer's byte budget rules).
        task_offset: this run's task i is stored as task i + task_offset (a device buffer's own tasks first).
    """

    kind = "latents"
    file_suffix = "edgeadrb"

    def __init__(self, buffer: ReplayBuffer, *, seed: int, memory_size: int | None = None, task_offset: int = 0,
                 crop_side: int = 0):
        self.buffer = buffer
        self.codec_spec, self.policy = buffer.codec.spec, buffer.policy
        self.seed, self.memory_size, self.task_offset = seed, memory_size, task_offset
        self.crop_side = crop_side  # 0: whole latents; else square crops of this side (edgead.cl.crops)
        self.device = None

    @classmethod
    def new(cls, codec: str | Codec, latent_shape: tuple[int, ...], *, budget_bytes: int | None, memory_size: int | None,
            seed: int, policy: str = "random", crop_side: int = 0) -> LatentMemory:
        """An empty memory of ``budget_bytes`` (or room for ``memory_size`` records of ``codec``), holding
        whole latents or, with ``crop_side``, square crops of them."""
        latent_shape = tuple(latent_shape)
        if crop_side:
            if not MIN_CROP_SIDE <= crop_side <= min(latent_shape[-2:]):
                raise EdgeadError(f"latent crop {crop_side}: expected {MIN_CROP_SIDE}..{min(latent_shape[-2:])} "
                                  f"cells for latents of {latent_shape[-2]} x {latent_shape[-1]}")
            latent_shape = (latent_shape[0], crop_side, crop_side)
        if budget_bytes is None:
            # A sample count: room for memory_size records, each in a task of its own at worst (the count is
            # then shared equally by cap_records), whatever the number of tasks still to come. A task's name
            # counts in its share: room for the longest name too, or one record per task no longer fits.
            codec = get_codec(codec) if isinstance(codec, str) else codec
            budget_bytes = FILE_HEADER_SIZE + memory_size * (TASK_RECORD_SIZE + MAX_NAME_BYTES
                                                             + record_bytes(codec, latent_shape))
        else:
            memory_size = None
        buffer = ReplayBuffer(budget_bytes, codec, seed=seed, policy=policy, latent_shape=latent_shape)
        return cls(buffer, seed=seed, memory_size=memory_size, crop_side=crop_side)

    def use_device_trunk(self, artifact_dir: Path, latent_shape: tuple[int, ...], image_size: int) -> None:
        """Collect latents as a device does: the export's int8 TFLite trunk, run by firmware_sim, stored byte
        for byte (codec int8-device). The trunk is frozen, so one export serves every later task."""
        from firmware_sim.device import Device

        if self.buffer.codec.name != "int8-device":
            raise EdgeadError(f"--device-trunk stores the trunk's own int8 output: use --codec int8-device "
                              f"(not {self.codec_spec})")
        dev = Device(artifact_dir, format="tflite-int8")
        shape = tuple(dev.manifest.data.get("latent", {}).get("shape_chw", ()))
        if shape != tuple(latent_shape) or dev.manifest.image_size != image_size:
            raise EdgeadError(f"{artifact_dir}: its trunk gives latents {shape} at {dev.manifest.image_size} px; "
                              f"this run needs {tuple(latent_shape)} at {image_size} px (same backbone, "
                              "bootstrap level and image size)")
        self.device = dev

    @classmethod
    def from_file(cls, path: Path, seed: int, budget_bytes: int | None = None) -> LatentMemory:
        """A memory that starts from a device's buffer file; its tasks keep their ids and this run's tasks
        are numbered after them."""
        buf, report = ReplayBuffer.load(path, budget_bytes)
        if report.dropped or report.evicted:  # never a silent loss: damaged, or over the budget (evicted)
            import warnings

            warnings.warn(f"{path}: dropped {report.dropped} damaged record(s), evicted {report.evicted} that "
                          f"the budget cannot hold; kept {report.kept}", stacklevel=2)
        return cls(buf, seed=seed, task_offset=max(buf.tasks, default=-1) + 1)

    def reshare(self, task_index: int, budget_bytes: int | None, crop_side: int = 0) -> None:
        """The budget and record crop of this moment: records are evicted fairly to the new equal shares, and
        re-cropped when ``crop_side`` is smaller than theirs (0: whole latents). A crop never grows back: the
        records of one buffer keep one shape. Seeded by (seed, task_index), like ``update``."""
        side = self.crop_side if crop_side == 0 or (self.crop_side and crop_side >= self.crop_side) else crop_side
        budget = self.buffer.budget_bytes if budget_bytes is None else budget_bytes
        if budget == self.buffer.budget_bytes and side == self.crop_side:
            return
        old, self.crop_side = self.buffer, side
        shape = tuple(old.shape) if side == 0 or old.shape is None else (old.shape[0], side, side)
        self.buffer = ReplayBuffer(budget, old.codec, seed=self.seed, policy=self.policy, latent_shape=shape)
        self.buffer.reseed(task_index, 13)
        rng = np.random.default_rng([self.seed, task_index, 17])
        names = old.task_names()
        for t in old.tasks:
            records = list(old.records(t))
            if t in names:
                self.buffer.name_task(t, names[t])
            self.buffer.fit_task(t, [self._recrop(r.encoded, shape, rng) for r in records],
                                 sample_ids=[r.sample_id for r in records], policy=self.policy)

    def name_tasks(self, names: list[str]) -> None:
        """Name every task of this run in the buffer by its product name (how a device and the host agree which
        product a task is); a task a device buffer brought keeps the name it has."""
        have = self.buffer.task_names()
        for t in self.buffer.tasks:
            i = t - self.task_offset
            if t not in have and 0 <= i < len(names):
                self.buffer.name_task(t, names[i])

    @staticmethod
    def decode(encoded) -> np.ndarray:
        return get_codec(encoded.codec).decode(encoded)

    def merge(self, task_index: int, encoded: list) -> int:
        """Add latents kept elsewhere (a device's buffer) to task ``task_index``'s share, cropped and encoded as
        this memory keeps them; the share's seeded selection decides what stays. Returns the records kept."""
        self.buffer.reseed(task_index, 19)
        rng = np.random.default_rng([self.seed, task_index, 23])
        shape = tuple(self.buffer.shape)
        items = [self._recrop(e, shape, rng) for e in encoded]
        start = self.buffer.stats()["offered_per_task"].get(task_index + self.task_offset, 0)
        return self.buffer.fit_task(task_index + self.task_offset, items, sample_ids=range(start, start + len(items)),
                                    policy=self.policy)

    def _recrop(self, encoded, shape: tuple[int, ...], rng: np.random.Generator):
        """A record as a record of ``shape`` in this buffer's codec: itself when it already is one, else a
        seeded sub-crop, encoded again (int8-device keeps the trunk's own scale and zero point)."""
        codec = self.buffer.codec
        if tuple(encoded.shape) == tuple(shape) and encoded.codec == codec.name:
            return encoded
        x = self.decode(encoded)
        if tuple(x.shape) != tuple(shape):
            x = random_crop(x, shape[-1], rng)
        if codec.name == "int8-device" and encoded.codec == "int8-device":
            scale, zp = encoded.arrays["scale"], encoded.arrays["zero_point"]
            return codec.encode_quantized(quantize(x, scale, zp, -128, 127, axis=0).astype(np.int8), scale, zp)
        return codec.encode(x)

    def holdings(self) -> dict[int, dict]:
        """Per task (keyed as samples_per_task): samples and bytes kept, record crop, share of the budget."""
        stats, budget = self.buffer.stats(), max(self.buffer.budget_bytes, 1)
        crop = list(self.buffer.shape) if self.crop_side and self.buffer.shape else None
        return {t - self.task_offset: {"samples": stats["records_per_task"][t], "bytes": stats["bytes_per_task"][t],
                                       "crop": crop, "share_of_budget": stats["bytes_per_task"][t] / budget}
                for t in self.buffer.tasks}

    def update(self, task_index: int, model, images: np.ndarray, pre) -> None:
        self.buffer.reseed(task_index)  # the selection depends on (seed, task) only
        if self.device is not None:
            q, scale, zp = self.device.trunk_latents(images)
            items = [self.buffer.codec.encode_quantized(x, scale, zp) for x in self._crops(q, task_index)]
        elif self.buffer.codec.name == "int8-device":
            items = self._as_device_int8(self._crops(compute_latents(model, images, pre).cpu().numpy(), task_index))
        else:
            items = self._crops(compute_latents(model, images, pre).cpu().numpy(), task_index)
        self.buffer.fit_task(task_index + self.task_offset, items, sample_ids=range(len(items)),
                             policy=self.policy)
        if self.memory_size is not None:  # a count, shared equally like ImageMemory's, whatever the codec
            self.buffer.cap_records(self.memory_size // len(self.buffer.tasks))

    def _crops(self, z: np.ndarray, task_index: int) -> list[np.ndarray]:
        """Each latent whole, or one seeded random crop of it (its position depends on (seed, task) only)."""
        if not self.crop_side:
            return list(z)
        rng = np.random.default_rng([self.seed, task_index, 11])
        return [random_crop(x, self.crop_side, rng) for x in z]

    def _as_device_int8(self, z: list[np.ndarray]) -> list:
        """A buffer that came from a device holds the trunk's own int8 output; host latents of a new task are
        quantised with the same parameters, so the buffer stays one format with one scale."""
        first = next(self.buffer.records(), None)
        if first is None:
            raise EdgeadError("a device buffer with no records carries no quantisation parameters to extend it")
        e = first.encoded
        scale, zp = e.arrays["scale"], e.arrays["zero_point"]
        return [self.buffer.codec.encode_quantized(quantize(x, scale, zp, -128, 127, axis=0).astype(np.int8),
                                                   scale, zp) for x in z]

    def __len__(self) -> int:
        return len(self.buffer)

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes

    def samples_per_task(self) -> dict[int, int]:
        """Keyed by this run's task index; tasks that came from a device buffer get negative keys."""
        return {t - self.task_offset: sum(1 for _ in self.buffer.records(t)) for t in self.buffer.tasks}

    def source(self):
        if not len(self.buffer):
            return None
        return _LatentSource(np.stack([r.decode() for r in self.buffer.records()]).astype(np.float32))

    def save(self, path: Path) -> None:
        self.buffer.save(path)

    @property
    def budget_bytes(self) -> int:
        """The buffer's byte budget (what one saved buffer file may take)."""
        return self.buffer.budget_bytes

    def load(self, path: Path, *, skip_bad: bool = False, log=print) -> None:
        """Restore a saved buffer. Damaged records stop the load with an EdgeadError naming the file and what
        was lost, unless ``skip_bad``: then the intact records are kept and the loss is logged as a warning."""
        buffer, report = ReplayBuffer.load(path)
        if report.dropped:
            first = report.errors[0].removeprefix(f"{path}: ") if report.errors else "unknown"
            what = (f"{path}: {report.dropped} damaged replay record(s) dropped, {report.kept} intact "
                    f"(first: {first})")
            if not skip_bad:
                raise EdgeadError(f"{what}; resuming would replay fewer samples than the run saved. Pass "
                                  "--skip-bad to resume with the intact records only")
            # a data-loss warning: through warnings, which -q (a silent log) does not hide
            warnings.warn(f"{what}; resuming with the intact records only (--skip-bad)", stacklevel=2)
        self.buffer = buffer


class _LatentSource:
    """Stored latents are decoded once per task; their teacher features are computed once too."""

    def __init__(self, latents: np.ndarray):
        self.latents = torch.from_numpy(latents)

    def prepare(self, model, pre, device: str) -> None:
        self.latents = self.latents.to(device).contiguous(memory_format=torch.channels_last)  # as the trainer's
        self.teacher = compute_teacher_features(model, self.latents)

    def __len__(self) -> int:
        return len(self.latents)

    def batch(self, idx: np.ndarray):
        return self.latents[idx], [f[idx] for f in self.teacher]
