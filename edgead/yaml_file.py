"""Reading the YAML files users write (config files, dataset files) with errors that name the file.

The files are small and plain, so the reader is strict where YAML is dangerous: aliases (`*name`) are refused
(nine levels of nine aliases is a 400-byte file that expands to 387 million items in whoever walks it), nesting
is capped at `MAX_DEPTH` (100,000 `[` would exhaust Python's stack), files are capped at `MAX_BYTES`, and
error messages are cut to `MAX_MESSAGE` characters.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from edgead.errors import EdgeadError

MAX_BYTES = 1024 * 1024  # a config or dataset file is a few hundred bytes
MAX_DEPTH = 32  # mappings and lists inside each other; real files use 3
MAX_MESSAGE = 400  # characters of a parser message quoted in an error


class _Refused(Exception):
    """A construct the reader does not accept (an alias, nesting too deep); the message says which and where."""


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader (plain data only, no Python tags) without aliases and with bounded nesting."""

    _depth = 0

    def compose_node(self, parent, index):  # PyYAML calls this once per node
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"line {event.start_mark.line + 1}: YAML alias *{str(event.anchor)[:40]} is not "
                           "accepted (aliases can expand a small file into gigabytes); write the value out")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(f"line {mark.line + 1}: lists and mappings nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _PlainDumper(yaml.SafeDumper):
    """SafeDumper that writes a repeated object out again instead of as an alias, which the reader refuses."""

    def ignore_aliases(self, data) -> bool:
        return True


def dump_yaml(doc: object) -> str:
    """YAML text for a file edgead writes (run config, dataset file): keys in order, no aliases, so
    `load_yaml` always reads it back."""
    return yaml.dump(doc, Dumper=_PlainDumper, sort_keys=False)


def _short(text: str, n: int = MAX_MESSAGE) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def load_yaml(path: str | Path, label: str = "") -> object:
    """The parsed content of a YAML file (plain data only; None for an empty file).

    Args:
        path: the file.
        label: what to call it in errors, e.g. "--config" (errors read "--config PATH: ...").

    Raises:
        EdgeadError naming the file: missing, unreadable, over `MAX_BYTES`, not YAML, an alias, too deep.
    """
    path = Path(path)
    shown = f"{label} {path}".strip()
    if not path.is_file():
        raise EdgeadError(f"{shown}: file not found")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise EdgeadError(f"{shown}: {size} bytes, larger than the {MAX_BYTES} a config or dataset file may "
                              "hold; expected a small YAML file")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeadError(f"{shown}: not readable ({_short(str(e))})") from None
    try:
        return yaml.load(text, Loader=StrictLoader)  # StrictLoader is a SafeLoader
    except _Refused as e:
        raise EdgeadError(f"{shown}: {e}") from None
    except RecursionError:  # a backstop: MAX_DEPTH stops nesting long before Python's limit
        raise EdgeadError(f"{shown}: nested too deeply to read (more than {MAX_DEPTH} levels)") from None
    except yaml.YAMLError as e:
        raise EdgeadError(f"{shown}: not valid YAML ({_short(str(e))})") from None
