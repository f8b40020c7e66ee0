"""Byte sizes as people write them ("2.46MB", "64KiB") and back.

Decimal units are powers of 10 (the thesis's "MB" is 10^6 B); binary units carry an "i" (KiB = 2^10).
Bare "k"/"M"/"G" are refused on purpose: tools disagree on whether "500K" means 500,000 or 512,000 B.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from firmware_sim.errors import UserError

# Lower-cased unit -> bytes. Case is folded because "kb", "KB" and "kB" all mean 10^3 in practice.
_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
# The largest size accepted anywhere (2^48 B = 281 TB): beyond any device's flash, and what a replay buffer
# header may state, so a size that parses is one every reader accepts (and int arithmetic never overflows).
MAX_SIZE = 2**48
ACCEPTED_UNITS = "B, kB, MB, GB, TB (powers of 10), KiB, MiB, GiB, TiB (powers of 2); a bare number is bytes"

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes in ``text`` ("2.46MB" -> 2_460_000, "1.5MiB" -> 1_572_864), rounded down to whole bytes; at most
    MAX_SIZE."""
    n = _parse(text)
    if n > MAX_SIZE:
        raise UserError(f"size {_brief(text)} is {_magnitude(n)}: expected at most {format_size(MAX_SIZE)} (2^48 B)")
    return n


def _brief(text: str | int) -> str:
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:36] + "...'"


def _magnitude(n: int) -> str:
    """A possibly astronomical byte count, briefly ("about 1e+400 B")."""
    digits = len(str(n))
    return f"{n:,} B" if digits <= 20 else f"about 1e+{digits - 1} B"


def _parse(text: str | int) -> int:
    if isinstance(text, bool):
        raise UserError(f"size {text!r}: expected a number of bytes or a string such as '2.46MB'")
    if isinstance(text, int):
        if text < 0:
            raise UserError(f"size {text!r} is negative: expected a size of 0 bytes or more")
        return text
    if not isinstance(text, str):
        raise UserError(f"size {text!r}: expected a string such as '2.46MB' or '64KiB'")
    stripped = text.strip()
    if not stripped:
        raise UserError(f"size {text!r} is empty: expected a number with a unit, e.g. '2.46MB'; units: {ACCEPTED_UNITS}")
    if stripped.startswith("-"):
        raise UserError(f"size {text!r} is negative: expected a size of 0 bytes or more")
    match = _SIZE_RE.match(stripped)
    if match is None:
        raise UserError(f"size {text!r} is not a number with a unit, e.g. '2.46MB'; units: {ACCEPTED_UNITS}")
    number, exponent, unit = match.groups()
    multiplier = _UNITS.get(unit.lower())
    if multiplier is None:
        raise UserError(f"size {text!r}: unknown unit {unit!r}; accepted units: {ACCEPTED_UNITS}")
    if exponent is not None and int(exponent) > 30:  # 10^30 B is far past MAX_SIZE: no need to build the number
        raise UserError(f"size {_brief(text)} is about 1e+{int(exponent)} B: expected at most {format_size(MAX_SIZE)} "
                        "(2^48 B)")
    try:
        # Decimal keeps "2.46MB" exact (2.46 * 1e6 in binary floating point is 2460000.0000000005).
        value = Decimal(number) * (Decimal(10) ** int(exponent or 0)) * multiplier
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise UserError(f"size {text!r} is not a valid number") from exc
    return int(value)  # int() truncates: a budget is never rounded up past what the user allowed


def format_size(n: int) -> str:
    """``2457600`` -> ``"2.46 MB (2,457,600 B)"``: the decimal unit people compare with, plus the exact count."""
    n = int(n)
    if abs(n) < 1000:
        return f"{n:,} B"
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {unit} ({n:,} B)"
    raise AssertionError("unreachable")  # pragma: no cover
