"""Shared helpers for the benchmark scripts: machine info, atomic JSON/CSV writing, table printing."""

from __future__ import annotations

import csv
import io
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

from firmware_sim.atomic import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def out_json(out: Path | None, name: str) -> Path:
    """Where a single-JSON benchmark writes: `--out` as every benchmark takes it (a folder, then NAME in it)
    or an explicit .json path; default benchmarks/results/NAME."""
    if out is None:
        return RESULTS / name
    out = Path(out)
    return out if out.suffix.lower() == ".json" else out / name


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return info


def header(argv: list[str] | None = None) -> dict:
    """The command, date and machine to put at the top of every results file."""
    args = sys.argv[1:] if argv is None else argv
    return {"command": " ".join(shlex.quote(a) for a in [f"python {Path(sys.argv[0]).as_posix()}", *args]),
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info()}


def write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_json(path, obj)


def write_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r.get(k)) for k in cols})
    return atomic_write_text(path, buf.getvalue())


def _cell(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.{digits}f}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


def print_table(rows: list[dict], cols: list[str], *, digits: int = 3, out=None) -> str:
    out = out or sys.stdout
    cells = [[fmt(r.get(c), digits) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    text = "\n".join(lines)
    print(text, file=out, flush=True)
    return text


def check(name: str, ok: bool, detail: str) -> dict:
    print(f"{'PASS' if ok else 'FAIL'}: {name} ({detail})", flush=True)
    return {"check": name, "pass": bool(ok), "detail": detail}


def run_as_script(main) -> None:
    """`python benchmarks/X.py`: run ``main`` and exit as the CLIs do: 2 with `error: ...` for bad input
    (a main that raises or returns a message), 0 when it returns 0, None or a result dict."""
    try:
        code = main()
    except SystemExit as e:  # argparse's --help (0) and usage errors (2), or SystemExit("error: ...")
        code = e.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
