"""What a continual run replays: the strategy, its memory and where that memory comes from.

A `ReplayConfig` is validated once, where it is built, and the codec spec is parsed once into a codec object.
The fraction of each batch that is replayed stays in `TrainConfig.replay_ratio` (it is part of the training
loop, and results.json records it under `config.train`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgead.cl.crops import MIN_CROP_SIDE, auto_crop_side
from edgead.errors import EdgeadError
from edgead.field_types import check_types
from edgead.options import option
from firmware_sim.codecs import Codec, get_codec
from firmware_sim.replay_buffer import POLICIES
from firmware_sim.sizes import parse_size

# The continual-learning strategies, in the order the CLI and the docs list them.
STRATEGIES = ("finetune", "joint", "replay", "compressed-replay")
# How earlier tasks' thresholds follow later updates (edgead.cl.calibration, edgead.cl.calibration_set).
RECALIBRATIONS = ("anchors", "refit")


@dataclass(frozen=True)
class ReplayConfig:
    """A strategy and its replay memory.

    Args:
        strategy: one of STRATEGIES. ``replay`` keeps raw images, ``compressed-replay`` the frozen trunk's
            latents encoded by ``codec`` (PaSTe only), ``joint`` retrains on every task seen (upper bound),
            ``finetune`` keeps nothing.
        codec: latent codec spec for compressed-replay (fp32, fp16, int8-tensor, int8-channel, int4-channel,
            pca[:VAR[:DTYPE]], int8-device); None means fp32.
        budget_bytes: the replay memory's size in bytes (everything stored counts); None: use memory_size.
        memory_size: replay samples in all (shared equally by the tasks) when there is no byte budget.
        policy: which samples stay when a task's share shrinks (random or coverage).
        device_buffer: start from a replay buffer file collected on a device (compressed-replay).
        device_trunk: keep latents as a device does, from this PaSTe export's int8 TFLite trunk (int8-device).
        calibration_anchors: held-out normals per task kept (int8 latent crops, never replayed; inside the
            byte budget when there is one) to recalibrate earlier tasks' thresholds after each later update;
            0 keeps each task's threshold as fitted.
        latent_crop: compressed-replay with a byte budget: ``auto`` keeps whole latents when one fits in every
            task's share and otherwise the largest square crop that does (edgead.cl.crops); ``none`` always
            keeps whole latents (a task whose share is below one keeps nothing); a number keeps crops of that
            side (latent cells).
        recalibrate: how earlier tasks' thresholds follow later updates: ``anchors`` scales each by its anchors'
            drift (inside the budget); ``refit`` keeps every held-out normal's trunk latent (host memory,
            outside the budget) and re-applies the threshold rule to them (edgead.cl.calibration_set).
    """

    # Each field is also an option of `edgead train` and `Detector.fit` (edgead.options).
    strategy: str = option("finetune", choices=STRATEGIES, help="What the model keeps from earlier tasks: "
                           "nothing (finetune), every task's data (joint), images (replay) or trunk latents "
                           "(compressed-replay, PaSTe).")
    codec: str | None = option(None, help="Latent codec for compressed-replay: fp32, fp16, int8-tensor, "
                               "int8-channel, int4-channel, pca[:VAR] (default fp32).")
    budget_bytes: int | None = option(None, name="budget", parse=parse_size,
                                      help="Replay memory in bytes: 2.46MB, 500kB, 1.5MiB, 100000B.")
    memory_size: int = option(100, help="Replay samples when no --budget.")
    policy: str = option("random", choices=POLICIES, help="Which samples stay when a task's share shrinks.")
    device_buffer: Path | None = option(None, parse=Path,
                                        help="Start compressed replay from a buffer collected on a device.")
    device_trunk: Path | None = option(None, parse=Path, help="Keep latents as a device does: this PaSTe "
                                       "export's int8 TFLite trunk output (--codec int8-device).")
    calibration_anchors: int = option(1, help="Held-out normals kept per task (inside the budget) to recalibrate "
                                      "earlier tasks' thresholds after each update; 0: keep them as fitted.")
    latent_crop: str | int = option("auto", help="compressed-replay with --budget: auto keeps whole latents "
                              "when one fits in every task's share, else the largest square crop that does; "
                              "none: whole only; N: crops of N latent cells.")
    recalibrate: str = option("anchors", choices=RECALIBRATIONS, help="How earlier tasks' thresholds follow "
                              "each update: anchors (their anchors' drift, inside the budget) or refit (the "
                              "threshold rule re-applied to every held-out normal's stored trunk latent: host "
                              "memory, about 0.9 MB per product, outside the budget).")
    codec_obj: Codec | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_types(self)  # fit(memory_size="5"): a clear error naming the keyword, not a TypeError below
        if self.strategy not in STRATEGIES:
            raise EdgeadError(f"unknown strategy {self.strategy!r}: expected one of {', '.join(STRATEGIES)}")
        if self.codec is not None and self.strategy != "compressed-replay":
            raise EdgeadError(f"--codec {self.codec} applies only to --strategy compressed-replay "
                              f"(not {self.strategy})")
        if self.policy not in POLICIES:
            raise EdgeadError(f"replay policy {self.policy!r}: expected one of {', '.join(POLICIES)}")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise EdgeadError(f"replay budget {self.budget_bytes} B: expected a positive number of bytes")
        if self.budget_bytes is None and (self.memory_size is None or self.memory_size < 1):
            raise EdgeadError(f"--memory-size {self.memory_size}: expected at least 1 sample")
        if self.calibration_anchors < 0:
            raise EdgeadError(f"calibration anchors {self.calibration_anchors}: expected 0 or more per task")
        crop = str(self.latent_crop).strip().lower()
        if crop not in ("auto", "none") and not (crop.isdigit() and int(crop) >= MIN_CROP_SIDE):
            raise EdgeadError(f"--latent-crop {self.latent_crop}: expected auto, none or a crop side of at least "
                              f"{MIN_CROP_SIDE} latent cells")
        object.__setattr__(self, "latent_crop", crop)
        if self.recalibrate not in RECALIBRATIONS:
            raise EdgeadError(f"--recalibrate {self.recalibrate!r}: expected one of {', '.join(RECALIBRATIONS)}")
        if self.device_buffer is not None and self.strategy != "compressed-replay":
            raise EdgeadError("--device-buffer needs --strategy compressed-replay")
        if self.strategy == "compressed-replay":
            # An unknown codec fails here, before any weights load or training starts.
            object.__setattr__(self, "codec_obj", get_codec(self.codec or "fp32"))
        if self.codec == "int8-device" and self.device_buffer is None and self.device_trunk is None:
            raise EdgeadError("--codec int8-device stores a device trunk's own int8 output: give --device-trunk "
                              "ART (a PaSTe tflite-int8 export) or --device-buffer FILE")
        if self.device_trunk is not None and self.codec != "int8-device":
            raise EdgeadError(f"--device-trunk keeps the exported trunk's int8 output: it needs --codec "
                              f"int8-device (not {self.codec})")

    @classmethod
    def from_options(cls, strategy: str = "finetune", codec: str | None = None, budget: str | int | None = None,
                     memory_size: int = 100, policy: str = "random", device_buffer: Path | str | None = None,
                     device_trunk: Path | str | None = None, calibration_anchors: int = 1,
                     latent_crop: str | int = "auto", recalibrate: str = "anchors") -> ReplayConfig:
        """From command-line style values: ``budget`` as text such as 2.46MB, 500kB or 100000B."""
        budget_bytes = parse_size(budget) if isinstance(budget, str) else budget
        return cls(strategy, codec, budget_bytes, memory_size, policy,
                   None if device_buffer is None else Path(device_buffer),
                   None if device_trunk is None else Path(device_trunk), calibration_anchors, str(latent_crop),
                   recalibrate)

    def crop_side(self, latent_shape: tuple[int, ...], budget_bytes: int | None, n_tasks: int,
                  names: Sequence[str] = ()) -> int:
        """The latent crop side the memory uses (0: whole latents) for a replay budget (anchors left out);
        ``names``: the tasks' product names, whose bytes their task records carry within their shares."""
        if self.strategy != "compressed-replay" or self.device_buffer is not None or self.latent_crop == "none":
            return 0
        if self.latent_crop != "auto":
            return int(self.latent_crop)
        if budget_bytes is None:  # a sample count sizes the buffer for whole latents
            return 0
        name_bytes = max((len(n.encode("utf-8")) for n in names), default=0)
        side = auto_crop_side(self.codec_obj, tuple(latent_shape), budget_bytes, n_tasks, name_bytes)
        return 0 if side is None else side  # None: nothing fits; the buffer says so with the sizes

    @property
    def keeps_memory(self) -> bool:
        return self.strategy in ("replay", "compressed-replay")

    def check_detector(self, model: str) -> None:
        """The strategy must suit the detector: latents exist only where a trunk is shared (PaSTe)."""
        if self.strategy == "compressed-replay" and model != "paste":
            raise EdgeadError("compressed-replay stores the shared trunk's latents and needs --model paste")

    def to_dict(self) -> dict:
        """The replay part of results.json's `config` (the keys and values it has always had; the number of
        calibration anchors is recorded by run_stream only when it is not the default)."""
        return {"strategy": self.strategy, "codec": self.codec, "budget_bytes": self.budget_bytes,
                "memory_size": None if self.budget_bytes is not None else self.memory_size,
                "policy": self.policy,
                "device_buffer": None if self.device_buffer is None else str(self.device_buffer),
                "device_trunk": None if self.device_trunk is None else str(self.device_trunk)}

    @classmethod
    def from_dict(cls, d: dict) -> ReplayConfig:
        """Inverse of to_dict (for a run's recorded configuration)."""
        return cls(d["strategy"], d.get("codec"), d.get("budget_bytes"), d.get("memory_size") or 100,
                   d.get("policy", "random"), None if d.get("device_buffer") is None else Path(d["device_buffer"]),
                   None if d.get("device_trunk") is None else Path(d["device_trunk"]),
                   d.get("calibration_anchors", 1), d.get("latent_crop", "auto"), d.get("recalibrate", "anchors"))
