"""Replay memories for the host trainer, within a byte budget (or a sample count).

`ImageMemory` keeps raw uint8 images at the training resolution (the classic replay). `LatentMemory`
keeps the frozen trunk's latents in the device's own buffer format (firmware_sim.replay_buffer), encoded
by a codec, so a buffer collected on a device and one built here are the same file. Both share the
budget equally among the tasks seen and choose which samples stay with a seeded policy; the choice after
task i depends only on (seed, i), so a resumed run picks the same samples as an uninterrupted one.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch

from edgead.engine.tensors import compute_latents, compute_teacher_features, to_input
from edgead.errors import EdgeadError
from firmware_sim.atomic import atomic_write
from firmware_sim.codecs import get_codec
from firmware_sim.replay_buffer import FILE_HEADER_SIZE, RECORD_OVERHEAD, TASK_RECORD_SIZE, ReplayBuffer


class ImageMemory:
    kind = "images"

    def __init__(self, image_size: int, *, budget_bytes: int | None, memory_size: int | None, seed: int):
        self.sample_bytes = image_size * image_size * 3
        if budget_bytes is not None and budget_bytes < self.sample_bytes:
            raise EdgeadError(f"replay budget {budget_bytes:,} B is smaller than one {image_size}x{image_size} RGB "
                              f"image ({self.sample_bytes:,} B)")
        self.capacity = budget_bytes // self.sample_bytes if budget_bytes is not None else memory_size
        self.seed = seed
        self.per_task: dict[int, np.ndarray] = {}

    def update(self, task_index: int, model, images: np.ndarray, pre) -> None:
        self.per_task[task_index] = images
        quota = self.capacity // len(self.per_task)
        for t, imgs in self.per_task.items():
            if len(imgs) > quota:
                keep = np.sort(np.random.default_rng([self.seed, task_index, t]).permutation(len(imgs))[:quota])
                self.per_task[t] = imgs[keep]

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
    kind = "latents"

    def __init__(self, codec: str, latent_shape: tuple[int, ...], *, budget_bytes: int | None,
                 memory_size: int | None, seed: int, policy: str = "random", max_tasks: int = 1):
        self.codec_spec = codec
        self.seed, self.policy = seed, policy
        self.memory_size = memory_size if budget_bytes is None else None
        self.task_offset = 0
        if budget_bytes is None:
            # A sample count: size the byte budget so that each task gets its share of records.
            per = RECORD_OVERHEAD + get_codec(codec).bytes_per_sample(tuple(latent_shape))
            budget_bytes = FILE_HEADER_SIZE + max_tasks * TASK_RECORD_SIZE + memory_size * per
        self.buffer = ReplayBuffer(budget_bytes, codec, seed=seed, policy=policy, latent_shape=latent_shape)
        self.device = None

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
        buf, report = ReplayBuffer.load(path, budget_bytes)
        if report.dropped:
            import warnings

            warnings.warn(f"{path}: dropped {report.dropped} damaged record(s)", stacklevel=2)
        mem = cls.__new__(cls)
        mem.codec_spec, mem.seed, mem.policy, mem.buffer = buf.codec.spec, seed, buf.policy, buf
        mem.device, mem.memory_size = None, None
        # Tasks the device already holds keep their ids; this run's tasks are numbered after them.
        mem.task_offset = max(buf.tasks, default=-1) + 1
        return mem

    def update(self, task_index: int, model, images: np.ndarray, pre) -> None:
        self.buffer.reseed(task_index)  # the selection depends on (seed, task) only
        if self.device is not None:
            q, scale, zp = self.device.trunk_latents(images)
            items = [self.buffer.codec.encode_quantized(x, scale, zp) for x in q]
        elif self.buffer.codec.name == "int8-device":
            items = self._as_device_int8(compute_latents(model, images, pre).cpu().numpy())
        else:
            items = list(compute_latents(model, images, pre).cpu().numpy())
        self.buffer.fit_task(task_index + self.task_offset, items, sample_ids=range(len(items)),
                             policy=self.policy)
        if self.memory_size is not None:  # a count, shared equally like ImageMemory's, whatever the codec
            self.buffer.cap_records(self.memory_size // len(self.buffer.tasks))

    def _as_device_int8(self, z: np.ndarray) -> list:
        """A buffer that came from a device holds the trunk's own int8 output; host latents of a new task are
        quantised with the same parameters, so the buffer stays one format with one scale."""
        first = next(self.buffer.records(), None)
        if first is None:
            raise EdgeadError("a device buffer with no records carries no quantisation parameters to extend it")
        e = first.encoded
        scale, zp = e.arrays["scale"], e.arrays["zero_point"]
        shape = (-1, 1, 1) if np.size(scale) > 1 else ()
        s, p = np.reshape(scale, shape), np.reshape(zp, shape)
        return [self.buffer.codec.encode_quantized(np.clip(np.rint(x / s) + p, -128, 127).astype(np.int8), scale, zp)
                for x in z]

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
            log(f"warning: {what}; resuming with the intact records only (--skip-bad)")
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
