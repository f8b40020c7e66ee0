"""How chatty the host is: one verbosity for every command, progress bars, and quiet TensorFlow / LiteRT.

`edgead -v ...` shows TensorFlow / absl INFO lines and Python warnings as they are; the default hides the
C++ INFO chatter ("Created TensorFlow Lite XNNPACK delegate for CPU.") and library warnings that tell a user
nothing actionable; `edgead -q ...` also hides progress bars. The environment variables are read by
TensorFlow and LiteRT when their native libraries load, so `configure` must run before those imports (the
CLI calls it in the group callback, before any subcommand module is imported).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

QUIET, NORMAL, VERBOSE = -1, 0, 1
T = TypeVar("T")

_level = NORMAL


def level() -> int:
    """The current verbosity: QUIET (-1), NORMAL (0) or VERBOSE (1)."""
    return _level


def configure(verbosity: int = NORMAL) -> None:
    """Apply a verbosity to logging, warnings and the native libraries' log levels.

    Args:
        verbosity: QUIET, NORMAL or VERBOSE (values outside are clipped).
    """
    global _level
    _level = max(QUIET, min(VERBOSE, int(verbosity)))
    if _level >= VERBOSE:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("edgead").setLevel(logging.DEBUG)
        warnings.resetwarnings()
        warnings.simplefilter("default")
        return
    # 3 hides INFO, WARNING and ERROR lines of TensorFlow's C++ logging (TFLite/LiteRT's XNNPACK notice included);
    # real failures still reach the user as Python exceptions.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # Third-party deprecation and user warnings are noise to someone running a command; ours (EdgeadWarning-style
    # messages from edgead/export/firmware_sim, e.g. "skipped 3 unreadable files") stay visible.
    warnings.filterwarnings("ignore")
    for module in ("edgead", "firmware_sim", "benchmarks", "__main__"):  # the exporter is edgead.export
        warnings.filterwarnings("default", module=module + r"(\..*)?$")


def progress_disabled() -> bool | None:
    """tqdm's `disable`: True when quiet; None lets tqdm hide the bar when stderr is not a terminal."""
    return True if _level <= QUIET else None


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """`items` with a progress bar on stderr (none when quiet or when stderr is not a terminal).

    Args:
        items: what to iterate over.
        desc: the bar's label.
        total: number of items when `items` has no len().
        unit: what one item is called.

    Returns:
        An iterator over `items`.
    """
    from tqdm.auto import tqdm

    return iter(tqdm(items, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr,
                     disable=progress_disabled()))
