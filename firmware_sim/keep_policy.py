"""Which frames a device keeps in its replay buffer (`run --keep normal|all|margin:X`).

The host replays every buffered latent as a normal sample, so a frame the device itself called anomalous must
not enter the buffer: the default ``normal`` keeps only frames decided normal. ``margin:X`` (0 < X <= 1) keeps
only frames scoring below X times the threshold, leaving out the borderline normals too. ``all`` keeps every
frame (the behaviour before the policy existed; for collecting data to label by hand).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_sim.errors import UserError

KEEP_CHOICES = "normal, all or margin:X with 0 < X <= 1 (e.g. margin:0.8)"
ANOMALOUS, ABOVE_MARGIN = "decided anomalous", "score above the margin"


@dataclass(frozen=True)
class KeepPolicy:
    kind: str = "normal"  # normal | all | margin
    margin: float | None = None

    @classmethod
    def parse(cls, text: str | KeepPolicy | None) -> KeepPolicy:
        if isinstance(text, KeepPolicy):
            return text
        if text is None:
            return cls()
        value = str(text).strip().lower()
        if value in ("normal", "all"):
            return cls(value)
        if value.startswith("margin:"):
            try:
                x = float(value.split(":", 1)[1])
            except ValueError:
                x = math.nan
            if math.isfinite(x) and 0 < x <= 1:
                return cls("margin", x)
        raise UserError(f"--keep {text!r}: expected {KEEP_CHOICES}")

    def refuses(self, score: float, threshold: float) -> str | None:
        """Why a frame with ``score`` is not kept (None: it is kept). A frame is decided anomalous when its
        score is above the threshold, as the device decides."""
        if self.kind == "all":
            return None
        if self.kind == "normal":
            return ANOMALOUS if score > threshold else None
        if score > threshold:
            return ANOMALOUS
        return None if score < self.margin * threshold else ABOVE_MARGIN

    def __str__(self) -> str:
        return f"margin:{self.margin:g}" if self.kind == "margin" else self.kind
