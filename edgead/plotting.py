"""Matplotlib, the way every picture in edgead is drawn: lazily imported, headless, saved atomically."""

from __future__ import annotations

import io
from pathlib import Path

from firmware_sim.atomic import atomic_write_bytes


def pyplot():
    # Imported lazily (and forced to Agg) so `edgead --help` stays fast and headless machines work.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, dpi: int = 110) -> Path:
    # Rendered to memory first so the PNG lands atomically: a killed run never leaves half a picture.
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
