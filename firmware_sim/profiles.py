"""Device profiles (a data file users can extend) and whether a model plus its replay buffer fits."""

from __future__ import annotations

import json
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


def load_profiles(extra: str | Path | None = None) -> dict[str, DeviceProfile]:
    """The built-in profiles, plus (overriding by key) those of a user file in the same format."""
    profiles: dict[str, DeviceProfile] = {}
    for path in [BUILTIN] + ([Path(extra)] if extra else []):
        try:
            doc = json.loads(Path(path).read_text())
            entries = doc["profiles"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a device profile file ({e}); expected "
                            '{"profiles": {"name": {"ram_bytes": ..., "flash_bytes": ...}}}') from None
        for key, p in entries.items():
            try:
                profiles[key] = DeviceProfile(key, p.get("label", key), int(p["ram_bytes"]),
                                              int(p.get("reserved_ram_bytes", 0)), int(p["flash_bytes"]),
                                              int(p.get("reserved_flash_bytes", 0)), p)
            except (KeyError, TypeError, ValueError) as e:
                raise UserError(f"{path}: profile {key!r} needs integer ram_bytes and flash_bytes ({e})") from None
    return profiles


def get_profile(key: str, extra: str | Path | None = None) -> DeviceProfile:
    profiles = load_profiles(extra)
    if key not in profiles:
        raise UserError(f"unknown device profile {key!r}: expected one of {', '.join(sorted(profiles))}")
    return profiles[key]
