"""Configuration values of the wrong type are a clear error at construction, not a traceback later.

The configuration dataclasses (DetectorConfig, TrainConfig, ReplayConfig) are built from the CLI (click has
converted the text already), from config files and from API keywords (`Detector.fit(epochs="1")`), where
nothing converts. :func:`check_types` compares each field with its own annotation (``int``, ``float``,
``str``, ``bool``, ``X | None``, ``Path``), so the three ways in share one check and one message; fields
with other annotations (tuples, nested dataclasses) are left to their own checks.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Any

from edgead.errors import EdgeadError

MAX_SEED = 2**32 - 1  # numpy's and torch's seeds; the trainer derives seed * 1000 + task from it


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


# annotation text -> (test, how the message names it)
_TESTS = {
    "int": (_is_int, "an integer"),
    "float": (_is_real, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "None": (lambda v: v is None, "None"),
    "Path": (lambda v: isinstance(v, (str, os.PathLike)), "a path"),
}


def _parts(annotation: Any) -> list[str] | None:
    """['int', 'None'] for 'int | None'; None when any part is a type this module does not check."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    parts = [p.strip() for p in text.split("|")]
    return parts if all(p in _TESTS for p in parts) else None


def check_types(obj: Any) -> None:
    """Raise an EdgeadError naming the first field of the dataclass ``obj`` whose value has the wrong type."""
    for f in dataclasses.fields(obj):
        parts = _parts(f.type)
        if parts is None:
            continue
        v = getattr(obj, f.name)
        if not any(_TESTS[p][0](v) for p in parts):
            expected = " or ".join(_TESTS[p][1] for p in parts)
            name = f.metadata.get("name") or f.name  # the option's name as the user gives it (budget)
            raise EdgeadError(f"{name} {v!r}: expected {expected} (got {type(v).__name__})")


def check_seed(seed: int) -> None:
    """A seed numpy and torch both take (0 .. 2^32 - 1)."""
    if not 0 <= seed <= MAX_SEED:
        raise EdgeadError(f"seed {seed}: expected an integer in 0..{MAX_SEED}")
