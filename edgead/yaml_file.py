"""Reading the YAML files users write (config files, dataset files) with errors that name the file."""

from __future__ import annotations

from pathlib import Path

from edgead.errors import EdgeadError


def load_yaml(path: str | Path, label: str = "") -> object:
    """The parsed content of a YAML file (safe loader: plain data only; None for an empty file).

    Args:
        path: the file.
        label: what to call it in errors, e.g. "--config" (errors read "--config PATH: ...").
    """
    import yaml

    path = Path(path)
    shown = f"{label} {path}".strip()
    if not path.is_file():
        raise EdgeadError(f"{shown}: file not found")
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeadError(f"{shown}: not readable ({e})") from None
    except yaml.YAMLError as e:
        raise EdgeadError(f"{shown}: not valid YAML ({e})") from None
