"""The dataset converters of `edgead data convert NAME SRC OUT`, by name.

Each entry names the module and function (imported only when used) and the options it takes besides
src, out, seed, overwrite and skip_bad. Every converter returns the category folders it wrote; each holds a
dataset.json (counts, source, license, the command) next to the MVTec AD layout.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from edgead.errors import EdgeadError


@dataclass(frozen=True)
class Converter:
    module: str
    function: str
    options: tuple[str, ...] = ()  # keyword options besides src, out, seed, overwrite, skip_bad


CONVERTERS = {
    "magnetic-tile": Converter("edgead.data.magnetic_tile", "convert_magnetic_tile", ("test_fraction",)),
    "battery-weld": Converter("edgead.data.battery_weld", "convert_battery_weld", ("variant",)),
    "bsdata": Converter("edgead.data.bsdata", "convert_bsdata", ("test_fraction",)),
    "mpdd-metal-plate": Converter("edgead.data.mpdd", "convert_mpdd_metal_plate", ("test_fraction",)),
    "elpv": Converter("edgead.data.elpv", "convert_elpv", ("test_fraction", "uncertain")),
}


def convert(name: str, src: str | Path, out: str | Path, *, seed: int = 0, overwrite: bool = False,
            skip_bad: bool = False, **options) -> list[Path]:
    """Run converter `name`; options left as None take the converter's default. ``skip_bad``: leave
    unreadable images out (counted in dataset.json) instead of stopping at the first.

    Returns:
        the category folders written under `out`.
    """
    if name not in CONVERTERS:
        raise EdgeadError(f"dataset {name!r}: expected one of {', '.join(CONVERTERS)}")
    conv = CONVERTERS[name]
    given = {k: v for k, v in options.items() if v is not None}
    wrong = sorted(set(given) - set(conv.options))
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise EdgeadError(f"{flags}: not an option of {name} (it takes: "
                          f"{', '.join('--' + k.replace('_', '-') for k in conv.options) or 'none'})")
    fn = getattr(importlib.import_module(conv.module), conv.function)
    result = fn(src, out, seed=seed, overwrite=overwrite, skip_bad=skip_bad, **given)
    return list(result) if isinstance(result, list) else [result]
