"""Fuzzing the three device readers (issue 14): replay buffer files, artifact manifests and device profile
files. Random byte flips, truncations, appended bytes and JSON mutations give a clean load or a UserError,
never another exception; a buffer never yields fewer intact records than there are undamaged ones, and its
dropped count is the number of damaged sample records. Bounded example counts keep it to a few seconds."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_sim.errors import UserError
from firmware_sim.manifest import MANIFEST_NAME, load_manifest, write_manifest
from firmware_sim.manifest_check import DTYPE_RANGES
from firmware_sim.profiles import BUILTIN, load_profiles
from firmware_sim.replay_buffer import FILE_HEADER_SIZE, RECORD_OVERHEAD, TASK_RECORD_SIZE, ReplayBuffer

SHAPE = (4, 8, 8)
# EDGEAD_FUZZ_EXAMPLES=N: a deeper, randomised run (the default is a fixed, fast sample).
_DEEP = int(os.environ.get("EDGEAD_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_DEEP or 120, deadline=None, derandomize=not _DEEP,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _buffer() -> tuple[bytes, list[tuple[int, int, int | None]]]:
    """A two-task int8-device buffer file and its records' (start, end, sample id or None for a task record)."""
    buf = ReplayBuffer(100_000, "int8-device", seed=1, latent_shape=SHAPE)
    for i in range(12):
        q = np.random.default_rng(i).integers(-128, 128, SHAPE, dtype=np.int8)
        buf.add_quantized(i // 6, q, 0.05, -2, sample_id=i, timestamp=1.7e9 + i)
    spans, pos = [], FILE_HEADER_SIZE
    for task in buf.tasks:
        spans.append((pos, pos + TASK_RECORD_SIZE, None))
        pos += TASK_RECORD_SIZE
        for r in buf.records(task):
            spans.append((pos, pos + r.nbytes, r.sample_id))
            pos += r.nbytes
    return buf.to_bytes(), spans


GOOD, SPANS = _buffer()
SAMPLES = {sid: GOOD[s:e] for s, e, sid in SPANS if sid is not None}


def _load(path: Path):
    try:
        return ReplayBuffer.load(path)
    except UserError:
        return None


def _check_records(loaded: ReplayBuffer) -> set[int]:
    ids = set()
    for r in loaded.records():  # whatever was recovered is byte for byte what was written
        assert r.sample_id in SAMPLES and SAMPLES[r.sample_id][RECORD_OVERHEAD - 4:-4] == r.data
        ids.add(r.sample_id)
    return ids


@FUZZ
@given(record_flips=st.lists(st.tuples(st.integers(FILE_HEADER_SIZE, len(GOOD) - 1), st.integers(0, 7)),
                             max_size=6),
       header_flip=st.none() | st.tuples(st.integers(0, FILE_HEADER_SIZE - 1), st.integers(0, 7)))
def test_buffer_byte_flips(tmp_path, record_flips, header_flip):
    data = bytearray(GOOD)
    flips = record_flips + ([header_flip] if header_flip else [])
    for pos, bit in flips:
        data[pos] ^= 1 << bit
    path = tmp_path / "b.bin"
    path.write_bytes(bytes(data))
    loaded, report = ReplayBuffer.load(path)  # one header flip at most: always readable
    hit = {sid for s, e, sid in SPANS if sid is not None and any(s <= p < e and data[p] != GOOD[p] for p, _ in flips)}
    undamaged = set(SAMPLES) - hit
    ids = _check_records(loaded)
    assert ids == undamaged
    assert report.dropped == len(hit) and report.evicted == 0 and report.kept == len(ids)


@FUZZ
@given(cut=st.integers(0, len(GOOD)), tail=st.binary(max_size=300))
def test_buffer_truncation_and_appended_bytes(tmp_path, cut, tail):
    path = tmp_path / "b.bin"
    path.write_bytes(GOOD[:cut] + tail)
    result = _load(path)
    whole = {sid for s, e, sid in SPANS if sid is not None and e <= cut}
    if result is None:
        assert cut < FILE_HEADER_SIZE  # only a file without its header may be refused
        return
    loaded, report = result
    assert whole <= _check_records(loaded)
    cut_in = [(s, sid) for s, e, sid in SPANS if s < cut < e]
    if not tail and cut_in and cut_in[0][1] is not None:  # a sample cut short: one record lost
        assert report.dropped == 1
    elif not tail and (not cut_in or cut - cut_in[0][0] > 8):  # at a boundary, or in a recognisable task record
        assert report.dropped == 0
    if cut == len(GOOD):  # appended bytes after intact records lose nothing
        assert report.dropped == 0 and len(loaded) == len(SAMPLES)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8)


def _paths(obj, prefix=()):
    """Every (path to a value) in a JSON document."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _mutate(doc, data, drop: bool = False):
    """``doc`` with one value (chosen by hypothesis) replaced by a random JSON value, or deleted."""
    doc = json.loads(json.dumps(doc))
    paths = [p for p in _paths(doc) if p]
    path = data.draw(st.sampled_from(paths))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if drop and isinstance(parent, dict) and data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON_VALUES)
    return doc


def _meta_bytes() -> dict:
    import struct

    n = struct.unpack_from("<I", GOOD, 12)[0]
    return json.loads(GOOD[16:16 + n])


@FUZZ
@given(data=st.data())
def test_buffer_header_json_mutations(tmp_path, data):
    from firmware_sim.buffer_header import pack_header

    meta = _mutate(_meta_bytes(), data, drop=True)
    try:
        head = pack_header(meta)  # a header whose CRCs are valid: the JSON itself is what is fuzzed
    except (UserError, ValueError):
        return  # not writable (non-finite numbers, too long): nothing to read
    path = tmp_path / "b.bin"
    path.write_bytes(head + GOOD[FILE_HEADER_SIZE:])
    result = _load(path)
    if result is not None:
        loaded, report = result
        assert report.kept + report.evicted + report.dropped >= 0 and loaded.nbytes <= loaded.budget_bytes


# -- manifests -----------------------------------------------------------------------------------------------
def _manifest(tmp: Path) -> Path:
    (tmp / "trunk.int8.tflite").write_bytes(b"model bytes" * 10)
    graph = {"file": "trunk.int8.tflite",
             "inputs": [{"name": "image", "shape": [1, 16, 16, 3], "dtype": "int8", "layout": "NHWC",
                         "quantization": {"scale": [1.0], "zero_point": [-128], "axis": None}}],
             "outputs": [{"name": "latent", "shape": [1, 2, 2, 4], "dtype": "int8", "layout": "NHWC",
                          "quantization": {"scale": [0.05], "zero_point": [3], "axis": None}}]}
    write_manifest(tmp, {
        "model": "paste", "backbone": "mcunet-in3", "levels": [6, 10, 14],
        "input": {"image_size": 16, "preprocess": {"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3},
                  "quantization": {"tflite-int8": {"scale": [1.0], "zero_point": [-128], "axis": None}}},
        "latent": {"shape_chw": [4, 2, 2], "quantization": {"tflite-int8": {"scale": [0.05], "zero_point": [3],
                                                                            "axis": None}}},
        "formats": {"tflite-int8": {"graphs": {"trunk": graph}}},
        "calibration": {"threshold": 0.5, "score_min": 0.1, "score_max": 0.9},
        "cost": {"peak_activation_bytes_int8": 1000}, "tools": {"numpy": "2"}}, ["trunk.int8.tflite"])
    return tmp / MANIFEST_NAME


def _read_manifest(root: Path) -> None:
    """Load and touch every property the device uses; only UserError may come out."""
    try:
        m = load_manifest(root)
    except UserError:
        return
    assert math.isfinite(m.threshold) and 16 <= m.image_size <= 4096
    assert m.preprocess.image_size == m.image_size and all(isinstance(lv, int) for lv in m.levels)
    for fmt in m.formats:
        for name in m.data["formats"][fmt]["graphs"]:
            assert m.graph_path(fmt, name).is_file()
    try:
        lat = m.latent()
    except UserError:
        return
    lo, hi = DTYPE_RANGES.get(lat["dtype"], (-2**31, 2**31 - 1))
    assert lat["quantization"] is None or all(lo <= z <= hi for z in lat["quantization"]["zero_point"])


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory) -> Path:
    return _manifest(tmp_path_factory.mktemp("manifest")).parent


@FUZZ
@given(data=st.data())
def test_manifest_json_mutations(manifest_dir, data):
    path = manifest_dir / MANIFEST_NAME
    good = path.read_text()
    try:
        path.write_text(json.dumps(_mutate(json.loads(good), data, drop=True)))
        _read_manifest(manifest_dir)
    finally:
        path.write_text(good)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 10_000))
def test_manifest_byte_flips_and_truncation(manifest_dir, flips, cut):
    path = manifest_dir / MANIFEST_NAME
    good = path.read_bytes()
    data = bytearray(good)
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    try:
        path.write_bytes(bytes(data[:cut] if cut is not None else data))
        _read_manifest(manifest_dir)
    finally:
        path.write_bytes(good)


# -- device profiles -----------------------------------------------------------------------------------------
PROFILES = json.loads(BUILTIN.read_text())


@FUZZ
@given(data=st.data())
def test_profile_json_mutations(tmp_path, data):
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps(_mutate(PROFILES, data, drop=True)))
    try:
        profiles = load_profiles(path)
    except UserError:
        return
    for p in profiles.values():
        assert isinstance(p.ram_bytes, int) and isinstance(p.flash_bytes, int) and p.usable_ram >= 0
        assert isinstance(p.label, str) and p.fit(ram_needed=1, flash_needed=1)["profile"] == p.key


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 10_000))
def test_profile_byte_flips(tmp_path, flips, cut):
    data = bytearray(BUILTIN.read_bytes())
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    path = tmp_path / "profiles.json"
    path.write_bytes(bytes(data[:cut] if cut is not None else data))
    try:
        load_profiles(path)
    except UserError:
        pass
