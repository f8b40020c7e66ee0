"""Sweeps: many independent runs (methods x budgets x seeds x streams), serially, in local processes or on Ray.

A sweep is a name and a list of `Run`s. Each run names a function (``"package.module:function"``, importable
wherever the run executes) and the JSON keyword arguments it is called with; it returns a JSON-ready dict.
Everything goes under one output folder:

    OUT/sweep.json          the sweep's name and its runs (what a rerun is compared with)
    OUT/runs/<key>.json     a finished run: its spec and its result
    OUT/runs/<key>.failed.json   a failed run: its spec, the error and the traceback (retried on a rerun)
    OUT/inputs/             optional: what the runs share (generated data, an exported model)

* ``jobs=1`` runs in this process; ``jobs=N`` in N local processes (spawned: no forked torch state);
  ``ray="local"`` starts a Ray of ``jobs`` CPUs here, ``ray="auto"`` or an address joins a running cluster;
  every run is then one Ray task (``pip install 'edgead[cluster]'``; the code and
  data must be reachable from the cluster's workers, e.g. edgead installed there and a shared data path).
* Results are identical whichever way the runs execute: each run sets the same torch thread count
  (``threads``, default 1) before it starts and depends only on its arguments.
* A run that raises is recorded as failed and reported; the others go on.
* Rerunning the same sweep into its folder skips the runs already finished (same key, same spec). A run's
  spec holds the content of the files it reads (``Run.inputs``: a digest of every file's name, size and
  modification time), so a rerun after the data changed runs again instead of republishing old results. A folder
  that holds another sweep (other name or other runs) is refused unless ``resume=True``: then the runs it
  shares with this one (same key and spec) are kept, the rest run, and sweep.json becomes this sweep.
* Progress: one bar for the sweep (runs finished / failed / left, time left).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgead.errors import EdgeadError
from firmware_sim.atomic import atomic_write_json
from firmware_sim.outputs import read_marker, resolve, write_marker

SWEEP_FILE = "sweep.json"
INPUTS = "inputs"  # OUT/inputs/: what the runs share (generated data, an exported model); not a result
SCHEMA = "edgead-sweep/1"
RAY_INSTALL = "pip install 'edgead[cluster]'  (or: pip install ray==2.60.0)"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


@dataclass(frozen=True)
class Run:
    """One run of a sweep: ``key`` names it (a file name), ``fn`` is "module:function", ``kwargs`` its JSON
    arguments."""

    key: str
    fn: str
    kwargs: dict = field(default_factory=dict)
    inputs: tuple[str, ...] = ()  # files and folders the run reads: their content is part of its spec

    def spec(self, digests: dict[str, str] | None = None) -> dict:
        """The run as saved and compared: key, fn, kwargs and, per input, its content digest."""
        spec = json.loads(json.dumps(asdict(self), sort_keys=True))
        spec["inputs"] = {p: (digests or {}).get(p) or content_digest(p) for p in self.inputs}
        return spec


def content_digest(path: str | os.PathLike) -> str:
    """sha256 of the names, sizes and modification times of every file at ``path`` (a file or a folder,
    walked in sorted order, symlinks followed as the runs would read them): changes when any input file is
    added, removed, rewritten or touched; cheap for thousands of images (no file is read)."""
    root = Path(path)
    h = hashlib.sha256()
    if not root.exists():
        return "missing"
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix() if p != root else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n"
                 .encode("utf-8", "surrogateescape"))
    return h.hexdigest()


@dataclass
class SweepResult:
    results: dict[str, dict]  # key -> the run's result, for every finished run (earlier ones included)
    failed: dict[str, str]  # key -> error message
    skipped: list[str]  # keys found finished and not run again

    @property
    def ok(self) -> bool:
        return not self.failed


def execute(spec: dict, threads: int = 1) -> dict:
    """Run one spec where it lands (this process, a pool worker or a Ray worker). Never raises: returns
    {"key", "ok", "result" | "error", "traceback", "seconds"}."""
    t0 = time.perf_counter()
    try:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - a sweep of functions that need no torch
        torch = None
    try:
        module, _, name = spec["fn"].partition(":")
        fn = getattr(importlib.import_module(module), name)
        with _blas_threads(threads):
            result = fn(**spec["kwargs"])
        json.dumps(result)  # a result that cannot be saved is this run's failure, not the sweep's
        return {"key": spec["key"], "ok": True, "result": result, "seconds": time.perf_counter() - t0}
    except BaseException as e:  # noqa: BLE001 - SystemExit from a script's main is a failed run too
        if isinstance(e, KeyboardInterrupt):
            raise
        return {"key": spec["key"], "ok": False, "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(), "seconds": time.perf_counter() - t0}
    finally:
        if torch is not None:
            torch.set_num_threads(before)


def _blas_threads(threads: int):
    """numpy's BLAS/OpenMP pools at ``threads`` too: their sums change with the thread count (Ray sets
    OMP_NUM_THREADS in its workers, a local process inherits the machine's), and so would the last digits."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - comes with scikit-learn (host extra)
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


def _check_runs(runs: list[Run]) -> None:
    seen = set()
    for r in runs:
        if not _KEY.match(r.key):
            raise EdgeadError(f"sweep run key {r.key!r}: expected letters, digits and _ . = + - only")
        if r.key in seen:
            raise EdgeadError(f"sweep run key {r.key!r} appears twice")
        if ":" not in r.fn:
            raise EdgeadError(f"sweep run {r.key}: fn {r.fn!r} should be 'package.module:function'")
        seen.add(r.key)


def _shape(specs) -> list | None:
    """A sweep's runs without their input digests: the same sweep over changed data is still this sweep (its
    runs whose inputs changed run again)."""
    if not isinstance(specs, list):
        return None
    return [{k: v for k, v in s.items() if k != "inputs"} if isinstance(s, dict) else s for s in specs]


def _prepare_folder(out: Path, name: str, runs: list[Run], specs: dict[str, dict],
                    resume: bool) -> dict[str, dict]:
    """Check OUT against this sweep; return the finished runs that can be kept (key -> result)."""
    me = {"schema": SCHEMA, "name": name, "runs": [specs[r.key] for r in runs]}
    path = out / SWEEP_FILE
    if out.exists() and not out.is_dir():
        raise EdgeadError(f"sweep output {out}: exists and is not a folder")
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise EdgeadError(f"{path}: not a readable sweep file ({e}); choose another output folder") from None
        if (old.get("name"), _shape(old.get("runs"))) != (me["name"], _shape(me["runs"])) and not resume:
            raise EdgeadError(f"sweep output {out} holds another sweep ({old.get('name')!r}, "
                              f"{len(old.get('runs', []))} runs); pass --resume to reuse its finished runs that "
                              f"match this sweep, or choose another output folder")
    elif out.is_dir() and any(p.name != INPUTS for p in out.iterdir()) and not resume:
        raise EdgeadError(f"sweep output {out}: not empty and holds no {SWEEP_FILE}; choose another folder "
                          f"(or pass --resume)")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if read_marker(out) != "bench":
        write_marker(out, "bench")  # firmware_sim.outputs: a folder this tool wrote, of kind bench
    atomic_write_json(path, me)
    kept = {}
    for r in runs:
        f = out / "runs" / f"{r.key}.json"
        if f.is_file():
            try:
                saved = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # a damaged result file: run it again
            if saved.get("spec") == specs[r.key]:  # same arguments and same input content
                kept[r.key] = saved["result"]
    return kept


class _Bar:
    """One progress line for the sweep: finished / failed / left and the time left."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.failed, self.t0 = total, done, 0, time.perf_counter()
        self.start_done = done
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, desc="sweep", unit="run", dynamic_ncols=True)
            self._post()

    def _post(self) -> None:
        if self.bar is not None:
            left = self.total - self.done - self.failed
            self.bar.set_postfix_str(f"finished {self.done}, failed {self.failed}, left {left}")

    def step(self, ok: bool) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if self.bar is not None:
            self.bar.update(1)
            self._post()

    def write(self, log: Callable[[str], None], msg: str) -> None:
        """A message above the bar (not through it)."""
        if self.bar is not None:
            self.bar.clear()
        log(msg)
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _serial(specs: list[dict], threads: int) -> Iterable[dict]:
    for s in specs:
        yield execute(s, threads)


def _processes(specs: list[dict], threads: int, jobs: int) -> Iterable[dict]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(execute, s, threads) for s in specs]
        for f in as_completed(futures):
            yield f.result()


def require_ray():
    """The ray module, or an EdgeadError with the install command."""
    try:
        import ray
    except ImportError:
        raise EdgeadError(f"--ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def _ray(specs: list[dict], threads: int, address: str, local_cpus: int) -> Iterable[dict]:
    ray = require_ray()
    started = not ray.is_initialized()
    if started and address == "local":
        # A Ray of `local_cpus` CPUs on this machine; the driver's import path travels to its workers, so a
        # checkout run with PYTHONPATH works too.
        path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), os.getcwd(), *sys.path) if p)
        ray.init(num_cpus=local_cpus, runtime_env={"env_vars": {"PYTHONPATH": path}}, log_to_driver=False,
                 include_dashboard=False)
    elif started:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise EdgeadError(f"--ray {address}: no Ray cluster reachable there ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); start one (`ray start --head`) or "
                              f"use --ray local") from None
    try:
        task = ray.remote(num_cpus=threads, max_retries=0)(execute)
        pending = [task.remote(s, threads) for s in specs]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started:
            ray.shutdown()


def run_sweep(name: str, runs: list[Run], out: str | os.PathLike, *, jobs: int = 1, ray: str | None = None,
              threads: int = 1, resume: bool = False, progress: bool = True,
              log: Callable[[str], None] = print) -> SweepResult:
    """Run every run not finished yet; returns all finished results (earlier ones too) and the failures.

    Args:
        name: the sweep's name (a folder holding another name is another sweep).
        runs: the runs; keys unique.
        out: the sweep's output folder.
        jobs: local processes (1: in this process); with ``ray="local"`` the CPUs of the local Ray.
        ray: None, "local" (start a Ray on this machine), "auto" (the running cluster) or a cluster address
            ("ray://host:10001", "host:6379").
        threads: torch threads per run (the same in every mode, so results match).
        resume: reuse a folder that holds another sweep's results (its runs matching this sweep's are kept).
    """
    runs = list(runs)
    _check_runs(runs)
    if jobs < 1:
        raise EdgeadError(f"--jobs {jobs}: expected 1 or more")
    if threads < 1:
        raise EdgeadError(f"threads per run {threads}: expected 1 or more")
    if ray is not None:
        require_ray()  # before touching the output folder
    out = resolve(out)  # x/nosub/.. is x from the first check on (firmware_sim.outputs); a sweep never replaces it
    digests = {p: content_digest(p) for p in dict.fromkeys(p for r in runs for p in r.inputs)}  # once per path
    all_specs = {r.key: r.spec(digests) for r in runs}
    results = _prepare_folder(out, name, runs, all_specs, resume)
    todo = [all_specs[r.key] for r in runs if r.key not in results]
    skipped = [r.key for r in runs if r.key in results]
    if skipped:
        log(f"sweep {name}: {len(skipped)} of {len(runs)} runs already finished in {out}; running {len(todo)}")
    for spec in todo:  # a failure recorded by an earlier attempt is retried now
        (out / "runs" / f"{spec['key']}.failed.json").unlink(missing_ok=True)
    failed: dict[str, str] = {}
    bar = _Bar(len(runs), len(skipped), progress)
    if ray is not None:
        stream = _ray(todo, threads, ray, max(jobs, threads))
    elif jobs > 1 and len(todo) > 1:
        stream = _processes(todo, threads, jobs)
    else:
        stream = _serial(todo, threads)
    specs = {s["key"]: s for s in todo}
    try:
        for rec in stream:
            key = rec["key"]
            if rec["ok"]:
                atomic_write_json(out / "runs" / f"{key}.json", {"spec": specs[key], "result": rec["result"],
                                                                 "seconds": rec["seconds"]})
                results[key] = rec["result"]
            else:
                atomic_write_json(out / "runs" / f"{key}.failed.json", {"spec": specs[key], **rec})
                failed[key] = rec["error"]
                bar.write(log, f"run {key} failed: {rec['error'].splitlines()[0]} (details in "
                               f"{out / 'runs' / (key + '.failed.json')})")
            bar.step(rec["ok"])
    finally:
        bar.close()
    order = {r.key: i for i, r in enumerate(runs)}
    results = dict(sorted(results.items(), key=lambda kv: order[kv[0]]))
    log(f"sweep {name}: {len(results)} finished, {len(failed)} failed, {len(skipped)} reused")
    return SweepResult(results, failed, skipped)
