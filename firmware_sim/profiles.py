"""Device profiles (a data file users can extend) and whether a model plus its replay buffer fits."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from firmware_sim.errors import UserError

BUILTIN = Path(__file__).with_name("profiles.json")


@dataclass(frozen=True)
class DeviceProfile:
    key: str
    label: str
    ram_bytes: int
    reserved_ram_bytes: int
    flash_bytes: int
    reserved_flash_bytes: int
    raw: dict

    @property
    def usable_ram(self) -> int:
        return self.ram_bytes - self.reserved_ram_bytes

    @property
    def usable_flash(self) -> int:
        return self.flash_bytes - self.reserved_flash_bytes

    def fit(self, *, ram_needed: int, flash_needed: int) -> dict:
        """Headroom (bytes, may be negative) and the verdict for RAM and flash."""
        ram_head, flash_head = self.usable_ram - ram_needed, self.usable_flash - flash_needed
        return {"profile": self.key, "label": self.label, "fits": ram_head >= 0 and flash_head >= 0,
                "ram_needed": ram_needed, "ram_available": self.usable_ram, "ram_headroom": ram_head,
                "flash_needed": flash_needed, "flash_available": self.usable_flash, "flash_headroom": flash_head}


_EXPECTED = '{"profiles": {"name": {"ram_bytes": ..., "flash_bytes": ...}}}'
MAX_BYTES = 2**60  # an exabyte: beyond any device, far below where arithmetic on sizes could misbehave


def _bytes(p: dict, field: str, where: str, default: int | None = None) -> int:
    """A byte count: an integer (or a float with an integer value, as JSON writers emit 4e9) in 0..MAX_BYTES."""
    v = p.get(field, default)
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_BYTES:
        raise UserError(f"{where}: field {field!r} is {v!r}: expected a whole number of bytes in 0..{MAX_BYTES}")
    return v


def _profile(key: str, p, path: Path) -> DeviceProfile:
    where = f"{path}: profile {key!r}"
    if not isinstance(p, dict):
        raise UserError(f"{where} is a JSON {type(p).__name__}: expected an object with ram_bytes and flash_bytes")
    label = p.get("label", key)
    if not isinstance(label, str):
        raise UserError(f"{where}: field 'label' is {label!r}: expected a string")
    ram, flash = _bytes(p, "ram_bytes", where), _bytes(p, "flash_bytes", where)
    ram_res, flash_res = _bytes(p, "reserved_ram_bytes", where, 0), _bytes(p, "reserved_flash_bytes", where, 0)
    if ram_res > ram or flash_res > flash:
        raise UserError(f"{where}: reserved bytes exceed the total (RAM {ram_res} of {ram}, flash {flash_res} of "
                        f"{flash})")
    return DeviceProfile(key, label, ram, ram_res, flash, flash_res, p)


def load_profiles(extra: str | Path | None = None) -> dict[str, DeviceProfile]:
    """The built-in profiles, plus (overriding by key) those of a user file in the same format.

    Every field is type- and range-checked; a UserError names the file, the profile and the field.
    """
    profiles: dict[str, DeviceProfile] = {}
    for path in [BUILTIN] + ([Path(extra)] if extra else []):
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise UserError(f"{path}: not a device profile file ({e}); expected {_EXPECTED}") from None
        entries = doc.get("profiles") if isinstance(doc, dict) else None
        if not isinstance(entries, dict):
            what = f"a JSON {type(doc).__name__}" if not isinstance(doc, dict) else \
                f"'profiles' is {type(entries).__name__}"
            raise UserError(f"{path}: not a device profile file ({what}); expected {_EXPECTED}")
        for key, p in entries.items():
            profiles[key] = _profile(key, p, path)
    return profiles


def get_profile(key: str, extra: str | Path | None = None) -> DeviceProfile:
    profiles = load_profiles(extra)
    if key not in profiles:
        raise UserError(f"unknown device profile {key!r}: expected one of {', '.join(sorted(profiles))}")
    return profiles[key]
