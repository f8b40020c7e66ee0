"""STFPM and PaSTe as one teacher-student detector.

STFPM (Wang et al. 2021): a frozen pretrained teacher and a random student of the same architecture.
PaSTe (Barusco et al. 2024): the first stages (0..bootstrap) are one shared, frozen trunk; only the
stages bootstrap+1..max(levels) exist twice (teacher tail, student tail). STFPM is the special case with
an empty trunk, so one class serves both and every path (training, replay, export) works on the
trunk's output, the "latent" (for STFPM the latent is the normalised image itself).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from edgead.errors import EdgeadError
from edgead.field_types import check_types
from edgead.models.anomaly_map import anomaly_map, image_score, st_loss
from edgead.models.backbones.registry import get_backbone_spec
from edgead.options import option, parse_levels
from firmware_sim.anomaly_map import LEGACY_SCORE, ScorePost
from firmware_sim.manifest_check import MAX_SIZE, MIN_SIZE

MODELS = ("stfpm", "paste")
# The score post-processing of new models (docs/model-selection.md): the mean of the top 1 % of pixels, chosen
# on DEV halves of six real categories by benchmarks/bench_postprocess.py (decisions_postprocess_real6_s0.json).
DEFAULT_SCORE = "topk:0.01"


@dataclass(frozen=True)
class DetectorConfig:
    # Each field is also an option of `edgead train` and `Detector(...)` (edgead.options).
    model: str = option("paste", choices=MODELS, help="paste (shared frozen trunk) or stfpm.")
    backbone: str = option("mcunet-in3", help="mcunet-in3, mobilenet_v2 or resnet18.")
    levels: tuple[int, ...] = option((6, 10, 14), parse=parse_levels, default_text="the backbone's",
                                     help="Feature levels (stage indices), e.g. 6,10,14.")
    bootstrap: int | None = option(5, default_text="the backbone's",  # None for STFPM
                                   help="Last shared stage (PaSTe).")
    image_size: int = option(256, help="Square model input size in pixels.")
    pretrained: bool = option(True, flag="no-pretrained", help="ImageNet teacher (--no-pretrained: random "
                              "teacher, experiments only).")
    # How a map becomes the image score (firmware_sim.anomaly_map.ScorePost): the device applies what the
    # manifest records, so a threshold calibrated on the host holds there. Older checkpoints read as "max".
    score: str = option(DEFAULT_SCORE, help="Score post-processing: max, topk:F (mean of the top fraction F of "
                        "pixels), blur:S,max or blur:S,topk:F (Gaussian blur of sigma S pixels first).")

    def __post_init__(self) -> None:
        check_types(self)  # Detector(image_size="64"): refused at construction, before anything is written
        if not MIN_SIZE <= self.image_size <= MAX_SIZE:  # the sizes the device's preprocessing takes
            raise EdgeadError(f"image_size {self.image_size}: expected an integer in {MIN_SIZE}..{MAX_SIZE}")
        object.__setattr__(self, "levels", tuple(int(v) for v in self.levels))
        object.__setattr__(self, "score", str(ScorePost.parse(self.score)))  # one spelling, or a clear error
        if self.model not in MODELS:
            raise EdgeadError(f"unknown model {self.model!r}: expected one of {', '.join(MODELS)}")
        spec = get_backbone_spec(self.backbone)
        if not self.levels or sorted(set(self.levels)) != list(self.levels):
            raise EdgeadError(f"levels {list(self.levels)}: expected distinct stage indices in increasing order")
        if self.levels[0] < 0 or self.levels[-1] >= spec.num_stages:
            raise EdgeadError(f"levels {list(self.levels)} out of range for {self.backbone}: "
                              f"stage indices go from 0 to {spec.num_stages - 1}")
        if self.model == "stfpm":
            object.__setattr__(self, "bootstrap", None)
        else:
            if self.bootstrap is None:
                raise EdgeadError("PaSTe needs a bootstrap stage (--bootstrap N)")
            if not 0 <= self.bootstrap < self.levels[0]:
                raise EdgeadError(f"bootstrap {self.bootstrap}: expected 0 <= bootstrap < first level "
                                  f"{self.levels[0]} (the shared trunk must end before the first feature level)")

    @classmethod
    def defaults(cls, model: str, backbone: str, **kw) -> DetectorConfig:
        spec = get_backbone_spec(backbone)
        kw = {k: v for k, v in kw.items() if v is not None}
        kw.setdefault("levels", spec.default_levels)
        if model == "paste":
            kw.setdefault("bootstrap", spec.default_bootstrap if spec.default_bootstrap is not None
                          else kw["levels"][0] - 1)
        return cls(model=model, backbone=backbone, **kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DetectorConfig:
        d = {"score": LEGACY_SCORE, **d}  # saved before score post-processing existed: scored by the maximum
        try:
            return cls(**{k: (tuple(v) if k == "levels" else v) for k, v in d.items()})
        except TypeError as e:
            raise EdgeadError(f"detector configuration {d} is invalid ({e})") from None

    @property
    def first_tail_stage(self) -> int:
        return 0 if self.bootstrap is None else self.bootstrap + 1


class Stages(nn.Module):
    """A run of consecutive backbone stages that returns the outputs at the requested levels."""

    def __init__(self, stages: list[nn.Module], first_index: int):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.first_index = first_index

    def forward(self, x: torch.Tensor, levels: tuple[int, ...] = ()) -> list[torch.Tensor]:
        out = []
        for i, stage in enumerate(self.stages, start=self.first_index):
            x = stage(x)
            if i in levels:
                out.append(x)
        return out if levels else [x]


def _reinit(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
            m.reset_running_stats()


# The statistics every calibration has (what a device reads); the fields after them say how it was made.
CALIBRATION_STATS = ("threshold", "score_mean", "score_std", "score_min", "score_max", "quantile", "n_images")


@dataclass
class Calibration:
    """Deployment statistics fitted on held-out normal images (never on the test set), and how they were made.

    Checkpoints and results written before the typed fields kept them in one ``extra`` dict: `from_dict` reads
    both forms. ``extra`` holds what tools add beyond these fields (`edgead calibrate`'s labelled/history).
    """

    threshold: float = float("nan")  # image score above which an image is called anomalous
    score_mean: float = float("nan")
    score_std: float = float("nan")
    score_min: float = float("nan")
    score_max: float = float("nan")  # for min-max normalisation of maps and scores
    quantile: float = 0.99
    n_images: int = 0
    threshold_rule: str | None = None  # the rule that set ``threshold`` (edgead.engine.thresholds)
    pixel_threshold: float | None = None  # 99.9th percentile of the held-out normals' pixel scores
    legacy_threshold: float | None = None  # the legacy rule's threshold from the same scores (research only)
    far_achievable: float | None = None  # far:A rules: the false-alarm rate these normals certify
    fit_threshold: float | None = None  # recalibrated: the threshold as fitted right after the task
    drift_ratio: float | None = None  # recalibrated: anchor score now / at calibration (None: unknown)
    rule: str | None = None  # a task-agnostic calibration: how it combines the tasks' ones
    per_task: dict = field(default_factory=dict)  # a task-agnostic calibration: each task's, by name
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """From asdict() of either form: typed keys, or the older ``extra`` dict holding them."""
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        extra = dict(d.get("extra") or {})
        moved = {k: extra.pop(k) for k in list(extra) if k in names}
        return cls(**{**moved, **{k: v for k, v in d.items() if k in names}}, extra=extra)

    def described(self) -> dict:
        """How the calibration was made, in one dict (no statistics, no per-task table): the typed fields that
        are set and the tools' ``extra``, as the manifest's ``calibration.extra`` has always carried them."""
        typed = {k: v for k, v in asdict(self).items()
                 if k not in (*CALIBRATION_STATS, "per_task", "extra") and v is not None}
        return {**typed, **self.extra}


class TeacherStudent(nn.Module):
    def __init__(self, config: DetectorConfig, *, weights: str | None = None, download: bool = True,
                 load_teacher: bool = True):
        """load_teacher=False builds the architecture only (a checkpoint then supplies every weight)."""
        super().__init__()
        from edgead.models.weights import build_backbone

        self.config = config
        if load_teacher:
            teacher = build_backbone(config.backbone, pretrained=config.pretrained, weights=weights,
                                     download=download)
        else:
            teacher = get_backbone_spec(config.backbone).build()
        stages = teacher.stages()
        last = config.levels[-1]
        b = config.first_tail_stage
        self.trunk = Stages(stages[:b], 0) if b > 0 else None
        self.teacher_tail = Stages(stages[b:last + 1], b)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            student_tail = copy.deepcopy(self.teacher_tail)
        _reinit(student_tail)
        self.student_tail = student_tail
        for p in self.frozen_parameters():
            p.requires_grad_(False)
        self.calibration = Calibration()
        self.eval()

    # -- what is frozen and what learns -------------------------------------------------------
    def frozen_parameters(self):
        if self.trunk is not None:
            yield from self.trunk.parameters()
        yield from self.teacher_tail.parameters()

    def train(self, mode: bool = True) -> TeacherStudent:
        super().train(mode)
        # The teacher (and shared trunk) keep their ImageNet BatchNorm statistics.
        if self.trunk is not None:
            self.trunk.eval()
        self.teacher_tail.eval()
        return self

    # -- the forward paths --------------------------------------------------------------------
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch -> trunk output (the tensor compressed replay stores). Identity for STFPM."""
        if self.trunk is None:
            return x
        with torch.no_grad():
            return self.trunk(x)[0]

    def teacher_features(self, z: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.teacher_tail(z, self.config.levels)

    def student_features(self, z: torch.Tensor) -> list[torch.Tensor]:
        return self.student_tail(z, self.config.levels)

    def loss_from_latent(self, z: torch.Tensor, t_feats: list[torch.Tensor] | None = None) -> torch.Tensor:
        t = t_feats if t_feats is not None else self.teacher_features(z)
        return st_loss(t, self.student_features(z))

    @torch.no_grad()
    def predict_latent(self, z: torch.Tensor, out_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent batch -> (anomaly maps (N, S, S), image scores (N,)), post-processed as config.score says."""
        amap = anomaly_map(self.teacher_features(z), self.student_features(z), out_size or self.config.image_size)
        return self.post_process(amap)

    def post_process(self, amap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw anomaly maps (N, S, S) -> (maps, image scores (N,)) as config.score says (subclasses share it)."""
        post = ScorePost.parse(self.config.score)
        if post == ScorePost():  # the plain maximum: stay in torch (training's selection checks call this)
            return amap, image_score(amap)
        # Anything else runs the device's numpy code, so host and device scores come from one function.
        m, sc = post(amap.detach().cpu().numpy())
        return torch.from_numpy(m).to(amap.device), torch.from_numpy(sc).to(amap.device)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predict_latent(self.latent(x), x.shape[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predict(x)

    def latent_shape(self) -> tuple[int, int, int]:
        with torch.no_grad():
            z = self.latent(torch.zeros(1, 3, self.config.image_size, self.config.image_size))
        return tuple(z.shape[1:])
