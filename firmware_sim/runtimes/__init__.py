"""The device runtimes: one small class per interpreter, all behind the ``Runner`` protocol.

A runtime is one file in this folder holding one class with ``name``, ``formats`` (the export formats it
runs), ``requirements`` (its pip lines for a bundle), ``layout``, ``module``, ``inputs``/``outputs`` (per
tensor name: shape, dtype, layout, quantisation),
``arena_bytes()`` and ``__call__(**inputs) -> {output name: array}``, opened with
``Runtime.open(model_file, threads=..., delegates=..., xnnpack=...)``. Adding an interpreter is that file and one
line in ``RUNTIMES``; ``runtime_for``/``open_runner`` (and so the device, the exporter's fidelity check and
``device profile``) pick it up from there. Each class imports its interpreter only when a model is opened, so
importing this table costs nothing and a device without onnxruntime or openvino still runs TFLite.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from firmware_sim.errors import UserError
from firmware_sim.runtimes.litert import TFLiteRunner
from firmware_sim.runtimes.onnxruntime import OnnxRunner
from firmware_sim.runtimes.openvino import OpenVinoRunner


@runtime_checkable
class Runner(Protocol):
    """One loaded graph: named inputs and outputs, called with arrays, returning arrays by output name."""

    name: str  # the runtime's short name (litert, onnxruntime, openvino)
    formats: tuple[str, ...]  # the export formats it runs
    requirements: tuple[str, ...]  # pip lines a device bundle needs for it (firmware_sim.requirements)
    layout: str  # NHWC | NCHW: the image input's layout
    module: str  # the Python module that runs it (reported by `profile`)
    inputs: dict[str, dict]  # name -> {name, shape, dtype, layout, quantization}
    outputs: dict[str, dict]

    def arena_bytes(self) -> int | None: ...

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]: ...


# The table: one line per runtime. Order = preference when an artifact holds several formats.
RUNTIMES: tuple[type, ...] = (TFLiteRunner, OnnxRunner, OpenVinoRunner)


def formats() -> list[str]:
    """Every format some runtime runs, in the table's order."""
    return [f for rt in RUNTIMES for f in rt.formats]


def runtime_for(fmt: str) -> type:
    """The runtime class that runs export format ``fmt``."""
    for rt in RUNTIMES:
        if fmt in rt.formats:
            return rt
    raise UserError(f"format {fmt!r}: no runtime runs it (known formats: {', '.join(formats())})")


def open_runner(fmt: str, model: str | os.PathLike | bytes, threads: int | None = None,
                delegates: Sequence | None = None, xnnpack: bool = True) -> Runner:
    """Load one graph file of format ``fmt`` with its runtime. ``delegates``: TFLite only (the Edge TPU);
    ``xnnpack``: TFLite only (False = the built-in kernels without the default XNNPACK delegate)."""
    return runtime_for(fmt).open(model, threads=threads, delegates=delegates, xnnpack=xnnpack)


__all__ = ["RUNTIMES", "OnnxRunner", "OpenVinoRunner", "Runner", "TFLiteRunner", "formats", "open_runner",
           "runtime_for"]
