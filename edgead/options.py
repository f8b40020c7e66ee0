"""One definition of every user option: the fields of the configuration dataclasses.

A setting that a user can choose (`edgead train --lr`, `Detector.fit(lr=...)`, `edgead export --io`) is a
field of one of the dataclasses `DetectorConfig`, `TrainConfig`, `ReplayConfig` or `ExportOptions`, declared
with `option(...)`: its default, its help text, its choices and bounds live there and nowhere else. The CLI
(`edgead.cli.options.dataclass_options`) turns the fields into click options, the API (`edgead.api`) accepts
them as keywords, and `tests/cli/test_option_parity.py` checks that both sides offer the same names. To add an
option: add a field with `option(...)` to the right dataclass, then use it where the dataclass is consumed.

This module imports neither click nor torch: the dataclasses import it on the device-free host path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass
from typing import Any

from edgead.errors import EdgeadError


def parse_levels(text: str | None) -> tuple[int, ...] | None:
    """'6,10,14' -> (6, 10, 14); None stays None (the backbone's default levels)."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EdgeadError(f"levels {text!r}: expected comma-separated stage indices such as 6,10,14") from None


def option(default: Any = MISSING, *, help: str, factory: Callable[[], Any] | Any = MISSING, name: str | None = None,
           choices: Iterable[str] | None = None, min: float | None = None, max: float | None = None,
           parse: Callable[[Any], Any] | None = None, flag: str | None = None, default_text: str | None = None,
           nested: bool = False, cli: bool = True, cli_name: str | None = None) -> Any:
    """A dataclass field that is also a user option.

    Args:
        default: the default value (or `factory` for a mutable one).
        help: one or two sentences for `--help` and the API's docstring.
        name: the option's name as a user writes it (API keyword; CLI `--name` with `-` for `_`); default the
            field's name.
        choices: the allowed values (a click.Choice on the CLI).
        min, max: inclusive bounds, checked by `check_bounds` (the CLI reports them in the help).
        parse: turns a text value (from the CLI or a config file) into the field's type, e.g. "500kB" -> bytes.
        flag: for a bool field, the CLI flag that sets the opposite of the default (`no-pretrained`,
            `quiet`); without it a bool is `--name` (an on/off flag).
        default_text: how `--help` shows the default when the field's value is a placeholder (None meaning
            "the backbone's").
        nested: the field holds another option dataclass whose fields are options of their own (flattened).
        cli: False for a field that only the API sets.
        cli_name: the CLI's name when it differs from the API's (`--format` for `formats=[...]`).
    """
    meta = {"help": help, "name": name, "choices": None if choices is None else tuple(choices), "min": min,
            "max": max, "parse": parse, "flag": flag, "default_text": default_text, "nested": nested, "cli": cli,
            "cli_name": cli_name, "option": True}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Spec:
    """One user option, as the CLI and the API see it."""

    name: str  # user-facing name: the API keyword
    attr: str  # the dataclass attribute
    owner: type  # the dataclass that holds it
    path: tuple[str, ...]  # attributes from the top dataclass to this field (nested options)
    default: Any
    help: str
    choices: tuple[str, ...] | None
    min: float | None
    max: float | None
    parse: Callable[[Any], Any] | None
    flag: str | None
    default_text: str | None
    cli: bool
    type: Any  # the field's annotation (text under `from __future__ import annotations`)
    alias: str | None = None  # the CLI's name when it differs from the API's


    @property
    def cli_name(self) -> str:
        """The CLI's long option: `--image-size`, or the flag for an inverted bool (`--no-pretrained`)."""
        return "--" + (self.flag or self.alias or self.name).replace("_", "-")

    @property
    def param(self) -> str:
        """The click parameter name (the API name, or the flag's for an inverted bool)."""
        return (self.flag or self.alias or self.name).replace("-", "_")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def specs(cls: type, _path: tuple[str, ...] = ()) -> list[Spec]:
    """Every option of the dataclass `cls`, in field order (nested option dataclasses flattened)."""
    out: list[Spec] = []
    for f in dataclasses.fields(cls):
        m = f.metadata
        if not m.get("option"):
            continue
        if m["nested"]:
            out += specs(type(_default(f)), (*_path, f.name))
            continue
        out.append(Spec(m["name"] or f.name, f.name, cls, (*_path, f.name), _default(f), m["help"], m["choices"],
                        m["min"], m["max"], m["parse"], m["flag"], m["default_text"], m["cli"], f.type,
                        m.get("cli_name")))
    return out


def names(*classes: type) -> list[str]:
    """The option names of these dataclasses (API keywords)."""
    return [s.name for cls in classes for s in specs(cls)]


def check_bounds(obj: Any) -> None:
    """Raise a clear EdgeadError for a value outside its field's `min`/`max`/`choices` (call in __post_init__)."""
    for s in specs(type(obj)):
        if len(s.path) != 1:
            continue  # a nested dataclass checks its own fields
        v = getattr(obj, s.attr)
        if v is None:
            continue
        if s.choices is not None and v not in s.choices:
            raise EdgeadError(f"{s.name} {v!r}: expected one of {', '.join(s.choices)}")
        if s.min is not None and v < s.min:
            raise EdgeadError(f"{s.name} {v}: expected >= {s.min}")
        if s.max is not None and v > s.max:
            raise EdgeadError(f"{s.name} {v}: expected <= {s.max}")


def take(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The constructor keywords of `cls` from user-named `values` (removed from `values`).

    Text values are parsed with the option's `parse` (so "500kB" works from the CLI and the API alike);
    nested option dataclasses are built from their flattened options. Options not given keep their defaults.
    """
    kw: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for s in specs(cls):
        if s.name not in values:
            continue
        v = values.pop(s.name)
        if s.parse is not None and v is not None and isinstance(v, str):
            v = s.parse(v)
        if len(s.path) == 1:
            kw[s.attr] = v
        else:
            nested.setdefault(s.path[0], {})[s.attr] = v
    for attr, sub in nested.items():
        f = next(f for f in dataclasses.fields(cls) if f.name == attr)
        kw[attr] = dataclasses.replace(_default(f), **sub)
    return kw


def check_known(values: dict[str, Any], allowed: Iterable[str], what: str) -> None:
    """An EdgeadError naming an unknown keyword and listing the known ones."""
    allowed = list(allowed)
    unknown = [k for k in values if k not in allowed]
    if unknown:
        raise EdgeadError(f"{what}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                          f"(expected: {', '.join(sorted(allowed))})")


def doc_table(*classes: type) -> str:
    """The options of these dataclasses as docstring lines: `name (default): help`."""
    lines = []
    for cls in classes:
        for s in specs(cls):
            d = s.default_text or repr(s.default)
            lines.append(f"    {s.name} ({d}): {s.help}")
    return "\n".join(lines)


def add_arguments(parser: Any, cls: type, *option_names: str) -> None:
    """argparse options for the named fields of `cls`, for the benchmark scripts: the field's default, help and
    choices, so a script shares edgead's definition instead of repeating it (text values of fields with a
    parser stay text; build the dataclass with `take`)."""
    by_name = {s.name: s for s in specs(cls)}
    for n in option_names:
        s = by_name[n]
        kind = str if s.parse is not None or isinstance(s.default, str) else type(s.default)
        kw: dict[str, Any] = {"default": s.default, "help": s.help}
        if isinstance(s.default, bool):
            kw = {"action": "store_false" if s.flag else "store_true", "dest": s.name, "help": s.help}
        elif s.choices is not None:
            kw["choices"] = s.choices
        elif s.default is not None:
            kw["type"] = kind
        parser.add_argument(s.cli_name, **kw)
