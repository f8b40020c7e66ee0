"""Where a .tflite file's bytes go, and a smaller serialisation of the same model (issue #5).

``tflite_size_breakdown`` walks the flatbuffer itself (no interpreter) and assigns every byte of the file to
one category: int8 weight payloads, int32 biases, per-channel / per-tensor scales (float32) and zero points
(int64 in the schema), calibration min/max, tensor names and shapes, operator I/O lists, signature defs,
metadata, the flatbuffer's own tables and offsets, and what is left: alignment padding. The categories add
up to the file size exactly, so a saving can be traced to its source.

``compact_tflite`` rewrites a converter's flatbuffer without touching any value an interpreter computes with:
  - identical vectors are written once and shared. The converter writes a fresh all-zero int64 zero-point
    vector for every per-channel weight and bias (8 bytes a channel, ~19% of the PaSTe head) although a
    handful of distinct lengths occur; a flatbuffer may point several tables at one vector (the format is a
    DAG of offsets, and readers only follow them);
  - internal tensor names keep their layer name only ("head_1/teacher_b14_dw_relu6_1/Relu6;head_1/..."
    becomes "teacher_b14_dw_relu6/Relu6"); the model's inputs and outputs keep theirs, and the runtime
    reads them through the signature, whose names are unchanged.
Buffer data is aligned to 16 bytes (the schema's ``force_align: 16``; the TF 2.21 converter itself only
guarantees 4, and TFLite Micro reads int32 biases in place, where an unaligned word can fault). Metadata
(min_runtime_version, conversion metadata) is kept. Outputs are bit-identical: tests/export/test_export_size.py
checks it with ai-edge-litert (with and without XNNPACK); the same files gave identical outputs in
tflite-runtime 2.14 (.venv-device, scripts/device_tests.sh).
"""

from __future__ import annotations

import re
import struct

import flatbuffers
import numpy as np

from edgead.errors import EdgeadError

# Field slots of the TFLite schema (tensorflow/lite/schema/schema.fbs; append-only, so stable across
# versions).
_MODEL = {"operator_codes": 1, "subgraphs": 2, "description": 3, "buffers": 4, "metadata_buffer": 5,
          "metadata": 6, "signature_defs": 7}
_SUBGRAPH = {"tensors": 0, "inputs": 1, "outputs": 2, "operators": 3, "name": 4}
_TENSOR = {"shape": 0, "type": 1, "buffer": 2, "name": 3, "quantization": 4, "shape_signature": 7}
_QUANT = {"min": 0, "max": 1, "scale": 2, "zero_point": 3, "details": 5}
_OPERATOR = {"opcode_index": 0, "inputs": 1, "outputs": 2, "builtin_options": 4, "custom_options": 5,
             "mutating_variable_inputs": 7, "intermediates": 8, "builtin_options_2": 12}
_OPCODE = {"deprecated_builtin_code": 0, "custom_code": 1, "builtin_code": 3}
_BUFFER = {"data": 0, "offset": 1, "size": 2}
_SIGNATURE = {"inputs": 0, "outputs": 1, "signature_key": 2}
_TENSOR_TYPES = {9: "int8", 2: "int32"}  # TensorType enum values that matter here
# Builtin operators whose input 2 is an int32 bias (BuiltinOperator enum).
_BIAS_OPS = {3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 9: "FULLY_CONNECTED"}

CATEGORIES = (
    "weights_int8", "biases_int32", "other_constants",
    "scales_per_channel", "scales_per_tensor", "zero_points_per_channel", "zero_points_per_tensor", "min_max",
    "tensor_names", "tensor_shapes", "operator_io", "signature_defs", "metadata",
    "flatbuffer_tables", "alignment_padding",
)


class _Reader:
    """Just enough of the flatbuffer wire format to locate every table, vector and string in a file."""

    def __init__(self, data: bytes):
        self.data = data

    def u32(self, pos: int) -> int:
        return struct.unpack_from("<I", self.data, pos)[0]

    def table_extent(self, pos: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(table bytes, vtable bytes) as half-open ranges."""
        vt = pos - struct.unpack_from("<i", self.data, pos)[0]
        vt_size, obj_size = struct.unpack_from("<HH", self.data, vt)
        return (pos, pos + obj_size), (vt, vt + vt_size)

    def field(self, table: int, slot: int) -> int | None:
        """Absolute position of a field's inline value, or None when absent."""
        vt = table - struct.unpack_from("<i", self.data, table)[0]
        vt_size = struct.unpack_from("<H", self.data, vt)[0]
        entry = 4 + 2 * slot
        if entry >= vt_size:
            return None
        off = struct.unpack_from("<H", self.data, vt + entry)[0]
        return table + off if off else None

    def scalar(self, table: int, slot: int, fmt: str, default: int = 0) -> int:
        p = self.field(table, slot)
        return default if p is None else struct.unpack_from("<" + fmt, self.data, p)[0]

    def ref(self, table: int, slot: int) -> int | None:
        """Target of an offset field (a table, vector or string)."""
        p = self.field(table, slot)
        return None if p is None else p + self.u32(p)

    def vector(self, table: int, slot: int, elem_size: int) -> tuple[int, int, int] | None:
        """(start of the length prefix, end, element count) of a vector or string field."""
        v = self.ref(table, slot)
        if v is None:
            return None
        n = self.u32(v)
        return v, v + 4 + n * elem_size, n

    def tables(self, table: int, slot: int) -> list[int]:
        """Positions of the tables in a vector-of-tables field."""
        v = self.ref(table, slot)
        if v is None:
            return []
        return [v + 4 + 4 * i + self.u32(v + 4 + 4 * i) for i in range(self.u32(v))]

    def ints(self, table: int, slot: int) -> list[int]:
        rng = self.vector(table, slot, 4)
        return [] if rng is None else list(struct.unpack_from(f"<{rng[2]}i", self.data, rng[0] + 4))


class _Ledger:
    """One category per byte; a byte written twice keeps its first category (shared vectors count once)."""

    def __init__(self, size: int):
        self.owner = np.full(size, -1, np.int16)

    def mark(self, rng: tuple[int, ...] | None, category: str, string: bool = False) -> None:
        if rng is None:
            return
        lo, hi = rng[0], rng[1] + (1 if string else 0)  # a string's terminating NUL belongs to it
        seg = self.owner[lo:hi]
        seg[seg < 0] = CATEGORIES.index(category)

    def table(self, r: _Reader, pos: int, category: str = "flatbuffer_tables") -> None:
        body, vtable = r.table_extent(pos)
        self.mark(body, category)
        self.mark(vtable, category)

    def totals(self) -> dict[str, int]:
        counts = np.bincount(self.owner[self.owner >= 0], minlength=len(CATEGORIES))
        out = {c: int(counts[i]) for i, c in enumerate(CATEGORIES)}
        out["alignment_padding"] += int((self.owner < 0).sum())
        return out


def _buffer_roles(r: _Reader, model: int) -> dict[int, str]:
    """Buffer index -> what it holds, from the tensors and operators that use it."""
    codes = []
    for oc in r.tables(model, _MODEL["operator_codes"]):
        codes.append(max(r.scalar(oc, _OPCODE["deprecated_builtin_code"], "b"),
                         r.scalar(oc, _OPCODE["builtin_code"], "i")))
    roles: dict[int, str] = {}
    for sg in r.tables(model, _MODEL["subgraphs"]):
        tensors = r.tables(sg, _SUBGRAPH["tensors"])
        biases = set()
        for op in r.tables(sg, _SUBGRAPH["operators"]):
            ins = r.ints(op, _OPERATOR["inputs"])
            code = codes[r.scalar(op, _OPERATOR["opcode_index"], "I")]
            if code in _BIAS_OPS and len(ins) > 2 and ins[2] >= 0:
                biases.add(ins[2])
        for i, t in enumerate(tensors):
            buf = r.scalar(t, _TENSOR["buffer"], "I")
            if buf == 0:  # buffer 0 is the empty sentinel: activations
                continue
            kind = _TENSOR_TYPES.get(r.scalar(t, _TENSOR["type"], "b"))
            roles[buf] = ("weights_int8" if kind == "int8"
                          else "biases_int32" if kind == "int32" and i in biases else "other_constants")
    for md in r.tables(model, _MODEL["metadata"]):
        roles[r.scalar(md, 1, "I")] = "metadata"
    return roles


def tflite_size_breakdown(flatbuffer: bytes) -> dict[str, int]:
    """Bytes of a .tflite file per category (see CATEGORIES); the values add up to ``len(flatbuffer)``.

    Each vector counts with its 4-byte length prefix, each string with its NUL. ``alignment_padding`` is every
    byte no table, vector or string covers (buffer data and int64 vectors are aligned)."""
    return _walk(bytes(flatbuffer)).totals()


def padding_bytes(flatbuffer: bytes) -> np.ndarray:
    """The bytes counted as alignment padding (all zero unless the walk missed a structure: a test checks)."""
    data = bytes(flatbuffer)
    return np.frombuffer(data, np.uint8)[_walk(data).owner < 0]


def _walk(data: bytes) -> _Ledger:
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise EdgeadError(f"not a TFLite flatbuffer ({len(data)} bytes, file identifier {data[4:8]!r}, "
                          f"expected b'TFL3')")
    r, led = _Reader(data), _Ledger(len(data))
    led.mark((0, 8), "flatbuffer_tables")  # root offset + file identifier
    model = r.u32(0)
    led.table(r, model)
    roles = _buffer_roles(r, model)
    for slot in ("operator_codes", "subgraphs", "buffers", "metadata", "signature_defs"):
        led.mark(r.vector(model, _MODEL[slot], 4), "signature_defs" if slot == "signature_defs" else
                 "metadata" if slot == "metadata" else "flatbuffer_tables")
    for oc in r.tables(model, _MODEL["operator_codes"]):
        led.table(r, oc)
        led.mark(r.vector(oc, _OPCODE["custom_code"], 1), "flatbuffer_tables", string=True)
    for sg in r.tables(model, _MODEL["subgraphs"]):
        led.table(r, sg)
        led.mark(r.vector(sg, _SUBGRAPH["name"], 1), "tensor_names", string=True)
        led.mark(r.vector(sg, _SUBGRAPH["tensors"], 4), "flatbuffer_tables")
        led.mark(r.vector(sg, _SUBGRAPH["operators"], 4), "flatbuffer_tables")
        for slot in ("inputs", "outputs"):
            led.mark(r.vector(sg, _SUBGRAPH[slot], 4), "operator_io")
        for t in r.tables(sg, _SUBGRAPH["tensors"]):
            led.table(r, t)
            led.mark(r.vector(t, _TENSOR["name"], 1), "tensor_names", string=True)
            led.mark(r.vector(t, _TENSOR["shape"], 4), "tensor_shapes")
            led.mark(r.vector(t, _TENSOR["shape_signature"], 4), "tensor_shapes")
            q = r.ref(t, _TENSOR["quantization"])
            if q is None:
                continue
            led.table(r, q)
            for slot, size, name in (("scale", 4, "scales"), ("zero_point", 8, "zero_points")):
                rng = r.vector(q, _QUANT[slot], size)
                if rng is not None:
                    led.mark(rng, f"{name}_per_channel" if rng[2] > 1 else f"{name}_per_tensor")
            led.mark(r.vector(q, _QUANT["min"], 4), "min_max")
            led.mark(r.vector(q, _QUANT["max"], 4), "min_max")
            details = r.ref(q, _QUANT["details"])
            if details is not None:
                led.table(r, details)
        for op in r.tables(sg, _SUBGRAPH["operators"]):
            led.table(r, op)
            for slot, size in (("inputs", 4), ("outputs", 4), ("intermediates", 4),
                               ("mutating_variable_inputs", 1)):
                led.mark(r.vector(op, _OPERATOR[slot], size), "operator_io")
            led.mark(r.vector(op, _OPERATOR["custom_options"], 1), "flatbuffer_tables")
            for slot in ("builtin_options", "builtin_options_2"):
                opts = r.ref(op, _OPERATOR[slot])
                if opts is not None:
                    led.table(r, opts)
    for i, b in enumerate(r.tables(model, _MODEL["buffers"])):
        led.table(r, b)
        role = roles.get(i, "other_constants")
        led.mark(r.vector(b, _BUFFER["data"], 1), role)
        offset, size = r.scalar(b, _BUFFER["offset"], "Q"), r.scalar(b, _BUFFER["size"], "Q")
        if offset > 1:  # data stored after the flatbuffer (models over 2 GB)
            led.mark((offset, offset + size), role)
    led.mark(r.vector(model, _MODEL["description"], 1), "metadata", string=True)
    led.mark(r.vector(model, _MODEL["metadata_buffer"], 4), "metadata")
    for md in r.tables(model, _MODEL["metadata"]):
        led.table(r, md, "metadata")
        led.mark(r.vector(md, 0, 1), "metadata", string=True)
    for sd in r.tables(model, _MODEL["signature_defs"]):
        led.table(r, sd, "signature_defs")
        led.mark(r.vector(sd, _SIGNATURE["signature_key"], 1), "signature_defs", string=True)
        for slot in ("inputs", "outputs"):
            led.mark(r.vector(sd, _SIGNATURE[slot], 4), "signature_defs")
            for tm in r.tables(sd, _SIGNATURE[slot]):
                led.table(r, tm, "signature_defs")
                led.mark(r.vector(tm, 0, 1), "signature_defs", string=True)
    return led


class _SharingBuilder(flatbuffers.Builder):
    """A flatbuffers.Builder that writes each distinct vector and string once and hands out the same offset
    for every later copy; [ubyte] vectors (buffer data) are aligned to 16 bytes as the schema asks."""

    def __init__(self, initial_size: int):
        super().__init__(initial_size)
        self._shared: dict[tuple, int] = {}

    def CreateNumpyVector(self, x):  # noqa: N802 (flatbuffers' name, called by the generated Pack code)
        key = ("v", x.dtype.str, x.tobytes())
        if key not in self._shared:
            self._shared[key] = (self._aligned_bytes(x.tobytes(), 16) if x.dtype.itemsize == 1
                                 else super().CreateNumpyVector(x))
        return self._shared[key]

    def CreateString(self, s, encoding="utf-8", errors="strict"):  # noqa: N802
        key = ("s", s if isinstance(s, bytes) else s.encode(encoding, errors))
        if key not in self._shared:
            self._shared[key] = super().CreateString(s, encoding, errors)
        return self._shared[key]

    def _aligned_bytes(self, payload: bytes, alignment: int) -> int:
        self.StartVector(1, len(payload), alignment)
        self.head = self.head - len(payload)
        self.Bytes[self.head:self.head + len(payload)] = payload
        self.vectorNumElems = len(payload)
        return self.EndVector()


def short_tensor_name(name: str, scope: str | None = None) -> str:
    """The layer part of a converter tensor name: the first of the fused names (';'-separated), without the
    Keras model scope (``scope``, e.g. 'head_1') and the call-count suffixes ('_1/') Keras adds."""
    first = name.split(";")[0]
    if scope and first.startswith(scope + "/"):
        first = first[len(scope) + 1:]
    return re.sub(r"_\d+(?=/)", "", first)


def _model_scope(names: list[str]) -> str | None:
    """The first path component most internal names share (the Keras model's scope), if a majority do."""
    firsts = [n.split(";")[0].split("/")[0] for n in names if "/" in n.split(";")[0]]
    if not firsts:
        return None
    top = max(set(firsts), key=firsts.count)
    return top if firsts.count(top) > len(names) / 2 else None


def _shorten_names(model) -> None:
    for sg in model.subgraphs:
        keep = set(sg.inputs) | set(sg.outputs)
        names = {i: t.name.decode() if isinstance(t.name, bytes) else str(t.name)
                 for i, t in enumerate(sg.tensors) if i not in keep and t.name is not None}
        scope = _model_scope(list(names.values()))
        used = {sg.tensors[i].name for i in keep}
        for i, old in names.items():
            base = short_tensor_name(old, scope)
            name, n = base, 1
            while name.encode() in used:  # TFLite does not need unique names, but people reading them do
                n += 1
                name = f"{base}_{n}"
            used.add(name.encode())
            sg.tensors[i].name = name.encode()


def buffer_data_offsets(flatbuffer: bytes) -> list[int]:
    """File offset of each non-empty buffer's first data byte."""
    data = bytes(flatbuffer)
    r = _Reader(data)
    out = []
    for b in r.tables(r.u32(0), _MODEL["buffers"]):
        rng = r.vector(b, _BUFFER["data"], 1)
        if rng is not None and rng[2] > 0:
            out.append(rng[0] + 4)
    return out


def pack_model(model) -> bytes:
    """Serialise a flatbuffer_utils ModelT with shared vectors/strings and 16-byte aligned buffer data
    (flatbuffer_utils.convert_object_to_bytearray aligns [ubyte] data to 1 byte only)."""
    builder = _SharingBuilder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def compact_tflite(flatbuffer: bytes, short_names: bool = True) -> bytes:
    """The same model in fewer bytes: shared identical vectors and strings, and (``short_names``) shorter
    internal tensor names. Every value an interpreter reads (weights, biases, quantisation, shapes, graph,
    signature, metadata) is unchanged: checked here by reading the result back."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(bytearray(flatbuffer))
    if any(b.offset > 1 for b in model.buffers):
        raise EdgeadError("compact_tflite: buffers stored outside the flatbuffer (models over 2 GB) are not "
                          "supported")
    if short_names:
        _shorten_names(model)
    out = pack_model(model)
    # Same values, whatever the layout: both trees serialised the plain way must be byte-identical.
    back = fbu.read_model_from_bytearray(bytearray(out))
    if fbu.convert_object_to_bytearray(back) != fbu.convert_object_to_bytearray(model):
        raise EdgeadError("internal: the compacted TFLite model does not read back to the same values")
    return out
