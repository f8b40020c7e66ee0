"""Config files for `edgead train`, `export` and `bench`: YAML with the commands' own option names.

    # train.yaml                       (edgead train --config train.yaml --out runs/a)
    data: /data/mvtec
    tasks: hazelnut,bottle
    strategy: compressed-replay
    codec: int8-channel
    budget: 500kB
    epochs: 10

Keys are the long option names, with `-` or `_` (`image-size` or `image_size`). Options given on the
command line override the file. An unknown key is an error naming it, and so is a value the option cannot
take (a list where a number goes, a mapping, `1.5` epochs): values are checked with the option's own type
before click sees them, so the error names the key and the file. A list for a text option (`tasks: [a, b]`)
is joined with commas, as `config_to_argv` does for the benchmark scripts. Every training run records the
values it used as RUN/config.yaml; `edgead train --config RUN/config.yaml --out NEW` repeats that run.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgead.errors import EdgeadError
from firmware_sim.atomic import atomic_write_bytes

RUN_CONFIG_NAME = "config.yaml"
# Options that say where or how to write, not what to compute: never recorded.
NOT_RECORDED = ("out", "config", "resume", "quiet", "force")


def read_config(path: str | Path) -> dict:
    """A config file's mapping with keys in option-name form (`image_size`).

    Args:
        path: a YAML file holding one mapping of option names to values.

    Returns:
        dict of key -> value (keys with `-` turned into `_`).
    """
    from edgead.yaml_file import load_yaml

    path = Path(path)
    doc = load_yaml(path, "--config")
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise EdgeadError(f"--config {path}: expected a mapping of option names to values, got {type(doc).__name__}")
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def _short(v: object, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _kind(v: object) -> str:
    names = {list: "a list", dict: "a mapping", bool: "a bool", int: "an int", float: "a float", str: "text"}
    return names.get(type(v), f"a {type(v).__name__}")


def _expected(p: click.Parameter) -> str:
    t = p.type
    if isinstance(t, click.Choice):
        return "one of " + ", ".join(map(str, t.choices))
    if isinstance(t, click.types.BoolParamType):
        return "true or false"
    if isinstance(t, click.types.IntParamType):
        return "a whole number"
    if isinstance(t, click.types.FloatParamType):
        return "a number"
    if isinstance(t, click.Path):
        return "a path"
    return "a single value"


def _scalar(v: object) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def checked_value(ctx: click.Context, p: click.Parameter, key: str, value: object, shown: str) -> object:
    """A config file's value for option `p`, checked with the option's own type (click's conversion), so a
    bad value is an error naming `key` and the file `shown` rather than a traceback inside click.

    Returns:
        the value to use as the option's default (a list of text joined with commas for a text option).
    """
    if isinstance(value, dict) or (isinstance(value, list) and not all(_scalar(x) for x in value)):
        raise EdgeadError(f"{shown}: key {key!r} is {_kind(value)}; expected {_expected(p)}")
    if isinstance(value, list) and not (p.multiple or p.nargs != 1):
        if not isinstance(p.type, click.types.StringParamType):
            raise EdgeadError(f"{shown}: key {key!r} is a list; expected {_expected(p)}")
        value = ",".join(str(x) for x in value)
    items = value if isinstance(value, list) else [value]
    for x in items:
        if x is None:
            continue
        whole = isinstance(p.type, click.types.IntParamType)
        if (whole or isinstance(p.type, click.types.FloatParamType)) and isinstance(x, bool):
            raise EdgeadError(f"{shown}: key {key!r} = {_short(x)}; expected {_expected(p)}")
        if isinstance(p.type, click.types.BoolParamType) and not isinstance(x, (bool, str)):
            raise EdgeadError(f"{shown}: key {key!r} = {_short(x)}; expected {_expected(p)}")
        if whole and isinstance(x, float) and not (x == x and abs(x) != float("inf") and x == int(x)):
            raise EdgeadError(f"{shown}: key {key!r} = {_short(x)}; expected {_expected(p)}")
        try:
            p.type.convert(x, p, ctx)
        except click.BadParameter as e:
            raise EdgeadError(f"{shown}: key {key!r} = {_short(x)}: {_short(e.format_message(), 200)}") from None
        except (TypeError, ValueError, OverflowError, AttributeError) as e:  # click's bool type: 1 .strip()
            raise EdgeadError(f"{shown}: key {key!r} = {_short(x)}: {_short(str(e), 200)}; expected "
                              f"{_expected(p)}") from None
    return value


def _option_names(command: click.Command) -> dict[str, str]:
    """key -> parameter name: each option's long name (`data` for `--data`, dest `root`) and its dest."""
    out = {}
    for p in command.params:
        if not isinstance(p, click.Option) or p.name in ("config", "help"):
            continue
        out[p.name] = p.name
        for opt in p.opts:
            if opt.startswith("--"):
                out[opt[2:].replace("-", "_")] = p.name
    return out


def _key(p: click.Parameter) -> str:
    """The key a parameter is recorded under: its first long option name (`data` for `--data`)."""
    return next((o[2:].replace("-", "_") for o in p.opts if o.startswith("--")), p.name)


def _load_into_context(ctx: click.Context, param: click.Parameter, value) -> None:
    if value is None:
        return
    doc = read_config(value)
    names = _option_names(ctx.command)
    unknown = [k for k in doc if k not in names]
    if unknown:
        keys = sorted({_key(p).replace("_", "-") for p in ctx.command.params if p.name in names.values()})
        names_path, c = [], ctx
        while c.parent is not None:  # the subcommand path below the program's own name
            names_path.insert(0, c.info_name)
            c = c.parent
        raise EdgeadError(f"--config {value}: unknown key {_short(unknown[0])} for `edgead {' '.join(names_path)}` "
                          f"(expected one of: {', '.join(keys)})")
    params = {p.name: p for p in ctx.command.params}
    doc = {k: checked_value(ctx, params[names[k]], k, v, f"--config {value}") for k, v in doc.items()}
    ctx.default_map = {**(ctx.default_map or {}), **{names[k]: v for k, v in doc.items()}}


def config_option(f):
    """A click `--config FILE.yaml` option whose values become the command's defaults (flags override)."""
    return click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        is_eager=True, expose_value=False, callback=_load_into_context,
                        help="YAML file of option values (keys as the long option names); flags override it.")(f)


def _plain(v):
    if isinstance(v, Path):
        return str(v.expanduser().resolve())  # absolute, so the file works from any working directory
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def context_values(ctx: click.Context) -> dict:
    """The option values a command runs with (after the config file and flags), keyed as in config files."""
    return {_key(p): ctx.params[p.name] for p in ctx.command.params if p.name in ctx.params}


def unknown_keys(command: click.Command, values: dict) -> list[str]:
    """Keys of `values` that are not options of `command` (empty when a config file would load)."""
    names = _option_names(command)
    return [k for k in values if k.replace("-", "_") not in names]


def record_config(out: str | Path, values: dict, command: str = "train") -> Path:
    """Write the option values a run used as OUT/config.yaml (atomic), loadable by `--config`.

    Args:
        out: the run folder.
        values: option values keyed as in config files (`context_values(ctx)` for a click command).
        command: the edgead subcommand, for the header comment.

    Returns:
        The path written.
    """
    from edgead.yaml_file import dump_yaml

    doc = {k: _plain(v) for k, v in values.items() if k not in NOT_RECORDED}
    text = (f"# The options of this run: `edgead {command} --config {RUN_CONFIG_NAME} --out NEW` repeats it.\n"
            + dump_yaml(doc))
    return atomic_write_bytes(Path(out) / RUN_CONFIG_NAME, text.encode())


def config_to_argv(path: str | Path) -> list[str]:
    """A config file as argparse arguments (`--key value`; true flags alone; false and null left out), for
    the benchmark scripts; arguments after these on the command line win (argparse keeps the last value).

    Args:
        path: the YAML config file.

    Returns:
        The argument list.
    """
    argv: list[str] = []
    for k, v in read_config(path).items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, dict) or (isinstance(v, list) and not all(_scalar(x) for x in v)):
            raise EdgeadError(f"--config {path}: key {k!r} is {_kind(v)}; expected a value or a list of values")
        if v is None or v is False:
            continue
        if v is True:
            argv.append(flag)
        elif isinstance(v, list):
            argv += [flag, ",".join(str(x) for x in v)]
        else:
            argv += [flag, str(v)]
    return argv


def split_config_arg(argv: list[str]) -> list[str]:
    """`[..., "--config", FILE, ...]` -> the file's options (`config_to_argv`) followed by the other arguments,
    so that argparse, which keeps the last value given, lets the command line override the file."""
    for i, a in enumerate(argv):
        if a == "--config" or a.startswith("--config="):
            if a == "--config" and i + 1 >= len(argv):
                raise EdgeadError("--config needs a FILE.yaml")
            path, rest = (argv[i + 1], argv[:i] + argv[i + 2:]) if a == "--config" else \
                (a.split("=", 1)[1], argv[:i] + argv[i + 1:])
            return config_to_argv(path) + split_config_arg(rest)
    return argv
