"""Latent codecs: how one frozen-trunk output (C, H, W float32) is stored in the replay buffer.

Codec specs (``get_codec``):

- ``fp32``          the latent as-is.
- ``fp16``          half precision; values beyond +-65504 are refused rather than turned into inf.
- ``int8-tensor``   the thesis's baseline: one scale = (max - min) / 255 and one zero point per sample.
- ``int8-channel``  the same per channel. This latent is a BatchNorm output without activation, so channel
                    ranges differ widely and some exclude 0; the zero point is therefore NOT clamped to the
                    int8 range (stored as int32) so every channel keeps its full 256 levels (docs/memory.md).
- ``int4-channel``  per channel with 16 levels, two values per byte (low nibble first).
- ``pca[:V[:DT]]``  per-sample PCA of the (H*W, C) matrix keeping the fewest components whose explained
                    variance reaches V (default 0.98, as the thesis); stores that sample's mean (C), components
                    (k, C) and coefficients (H*W, k) in DT = fp16 (default: halves the bytes at an error far
                    below the truncation's) or fp32 (the thesis's storage). Its size depends on the data.
- ``int8-device``   the trunk's own int8 output of a TFLite model, stored byte for byte with the model's
                    scale and zero point (``encode_quantized``): no second quantisation on the device.

Every affine integer codec decodes as ``x = scale * (q - zero_point)`` with float32 scale and int32 zero point.

Byte accounting lives in one place: ``EncodedLatent.nbytes`` is the length of ``to_bytes()``, i.e. every array
(payload, scales, zero points, PCA bases) plus the few bytes that make the record self-describing.
``Codec.bytes_per_sample`` is computed by that same function.

Serialised layout (little-endian): u8 version | u8 n + codec name | u8 ndim + u32 dims | u8 n_arrays |
per array: u8 n + name, u8 dtype code, u8 ndim, u32 dims, raw data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from firmware_sim.errors import UserError
from firmware_sim.quantization import dequantize, minmax_params, quantize

_FORMAT_VERSION = 1
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<i1"), 2: np.dtype("<u1"), 3: np.dtype("<i2"), 4: np.dtype("<i4"),
    5: np.dtype("<f2"), 6: np.dtype("<f4"), 7: np.dtype("<f8"), 8: np.dtype("<u2"),
}
_DTYPE_CODES = {dt: code for code, dt in _DTYPES.items()}


@dataclass
class EncodedLatent:
    """One encoded sample: the codec family name, the latent's (C, H, W) shape and the stored arrays."""

    codec: str
    shape: tuple[int, ...]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Every byte this sample occupies when stored: arrays plus self-describing metadata."""
        size = 1 + 1 + len(self.codec) + 1 + 4 * len(self.shape) + 1
        for name, arr in self.arrays.items():
            size += 1 + len(name) + 1 + 1 + 4 * arr.ndim + arr.nbytes
        return size

    def array_nbytes(self) -> dict[str, int]:
        """Bytes per stored array (the payload/overhead split that reports show)."""
        return {name: int(arr.nbytes) for name, arr in self.arrays.items()}

    def to_bytes(self) -> bytes:
        parts = [struct.pack("<BB", _FORMAT_VERSION, len(self.codec)), self.codec.encode("ascii"),
                 struct.pack(f"<B{len(self.shape)}I", len(self.shape), *self.shape),
                 struct.pack("<B", len(self.arrays))]
        for name, arr in self.arrays.items():
            code = _DTYPE_CODES.get(arr.dtype.newbyteorder("<"))
            if code is None:
                raise UserError(f"encoded latent array {name!r} has unsupported dtype {arr.dtype}")
            parts += [struct.pack("<B", len(name)), name.encode("ascii"),
                      struct.pack(f"<BB{arr.ndim}I", code, arr.ndim, *arr.shape),
                      np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes()]
        data = b"".join(parts)
        assert len(data) == self.nbytes, "byte accounting and serialisation disagree"
        return data

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> EncodedLatent:
        """Parse ``to_bytes()`` output; anything malformed raises UserError (never reads past the end)."""
        view = memoryview(data).cast("B")
        pos = 0

        def take(n: int) -> memoryview:
            nonlocal pos
            if n < 0 or pos + n > len(view):
                raise UserError(f"encoded latent is truncated or malformed (needs {n} bytes at offset {pos})")
            chunk = view[pos:pos + n]
            pos += n
            return chunk

        def text() -> str:
            raw = bytes(take(take(1)[0]))
            try:
                return raw.decode("ascii")
            except UnicodeDecodeError as exc:
                raise UserError("encoded latent has a non-ASCII name") from exc

        def dims() -> tuple[int, ...]:
            ndim = take(1)[0]
            return tuple(struct.unpack(f"<{ndim}I", take(4 * ndim)))

        version = take(1)[0]
        if version != _FORMAT_VERSION:
            raise UserError(f"encoded latent has format version {version}; this reader knows {_FORMAT_VERSION}")
        codec, shape = text(), dims()
        arrays: dict[str, np.ndarray] = {}
        for _ in range(take(1)[0]):
            name = text()
            code = take(1)[0]
            if code not in _DTYPES:
                raise UserError(f"encoded latent array {name!r} has unknown dtype code {code}")
            arr_shape = dims()
            count = int(np.prod(arr_shape, dtype=np.int64))
            raw = take(count * _DTYPES[code].itemsize)
            arrays[name] = np.frombuffer(raw, dtype=_DTYPES[code], count=count).reshape(arr_shape)
        if pos != len(view):
            raise UserError(f"encoded latent has {len(view) - pos} unexpected trailing bytes")
        return cls(codec=codec, shape=shape, arrays=arrays)


def _check_latent(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3:
        raise UserError(f"latent has shape {x.shape}: expected one sample shaped (C, H, W)")
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"latent has dtype {x.dtype}: expected float32 (use encode_quantized for int8)")
    if not np.isfinite(x).all():
        raise UserError("latent contains NaN or inf values: expected finite numbers")
    return x


class Codec:
    """Encodes one (C, H, W) float32 latent; ``fixed_size`` says whether ``bytes_per_sample`` is exact."""

    name = ""
    fixed_size = True
    description = ""

    @property
    def spec(self) -> str:
        """The canonical spec string, accepted back by ``get_codec``."""
        return self.name

    def encode(self, x: np.ndarray) -> EncodedLatent:
        raise NotImplementedError

    def decode(self, e: EncodedLatent) -> np.ndarray:
        raise NotImplementedError

    def _layout(self, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """Empty arrays shaped as ``encode`` stores them (the largest case for data-dependent codecs)."""
        raise NotImplementedError

    def bytes_per_sample(self, shape: tuple[int, ...]) -> int:
        """Stored bytes of one sample: exact when ``fixed_size``, else an upper bound (see ``pca``)."""
        shape = tuple(int(d) for d in shape)
        return EncodedLatent(self.name, shape, self._layout(shape)).nbytes

    def _arrays(self, e: EncodedLatent, *names: str) -> list[np.ndarray]:
        if e.codec != self.name:
            raise UserError(f"encoded latent was written by codec {e.codec!r}, not {self.name!r}")
        missing = [n for n in names if n not in e.arrays]
        if missing:
            raise UserError(f"encoded {self.name} latent lacks arrays {missing}")
        return [e.arrays[n] for n in names]


class FloatCodec(Codec):
    def __init__(self, name: str, dtype: str) -> None:
        self.name, self.dtype = name, np.dtype(dtype)
        self.description = f"{name}: the latent stored as {self.dtype.name} (C, H, W)"

    def encode(self, x: np.ndarray) -> EncodedLatent:
        x = _check_latent(x)
        if self.dtype == np.float16 and np.abs(x).max(initial=0.0) > np.finfo(np.float16).max:
            raise UserError(f"latent max |x| = {np.abs(x).max():.4g} overflows fp16 (max 65504): use fp32 or int8")
        return EncodedLatent(self.name, x.shape, {"payload": x.astype(self.dtype)})

    def decode(self, e: EncodedLatent) -> np.ndarray:
        (payload,) = self._arrays(e, "payload")
        return payload.astype(np.float32).reshape(e.shape)

    def _layout(self, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        return {"payload": np.empty(shape, self.dtype)}


class AffineCodec(Codec):
    """Min/max asymmetric integer quantisation, per tensor or per channel, 8 or 4 bits."""

    def __init__(self, name: str, bits: int, per_channel: bool) -> None:
        self.name, self.bits, self.per_channel = name, bits, per_channel
        self.qmin, self.qmax = (-128, 127) if bits == 8 else (0, 15)
        where = "per channel" if per_channel else "per tensor"
        packing = "int8" if bits == 8 else "uint4, two per byte, low nibble first"
        self.description = (f"{name}: {packing}, x = scale * (q - zero_point), scale float32 and "
                            f"zero_point int32 (unclamped) {where}, from each sample's min/max")

    def encode(self, x: np.ndarray) -> EncodedLatent:
        x = _check_latent(x)
        groups = x.reshape(x.shape[0] if self.per_channel else 1, -1).astype(np.float64)
        scale, zero_point = minmax_params(groups, self.qmin, self.qmax)
        q = quantize(groups, scale, zero_point, self.qmin, self.qmax, axis=0)
        zero_point = zero_point.astype(np.int32)
        if self.bits == 8:
            payload = q.astype(np.int8).reshape(x.shape)
        else:
            flat = q.astype(np.uint8).ravel()
            if flat.size % 2:
                flat = np.append(flat, np.uint8(0))
            payload = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
        return EncodedLatent(self.name, x.shape, {"payload": payload, "scale": scale, "zero_point": zero_point})

    def decode(self, e: EncodedLatent) -> np.ndarray:
        payload, scale, zero_point = self._arrays(e, "payload", "scale", "zero_point")
        count = int(np.prod(e.shape))
        if self.bits == 8:
            q = payload.reshape(-1)
        else:
            q = np.empty(payload.size * 2, np.uint8)
            q[0::2], q[1::2] = payload & 0x0F, payload >> 4
            q = q[:count]
        if q.size != count or scale.size not in (1, e.shape[0]) or zero_point.size != scale.size:
            raise UserError(f"encoded {self.name} latent has inconsistent array sizes for shape {e.shape}")
        return dequantize(q.reshape(scale.size, -1), scale, zero_point, axis=0).reshape(e.shape)

    def _layout(self, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        groups = shape[0] if self.per_channel else 1
        count = int(np.prod(shape))
        payload = np.empty(shape, np.int8) if self.bits == 8 else np.empty((count + 1) // 2, np.uint8)
        return {"payload": payload, "scale": np.empty(groups, np.float32),
                "zero_point": np.empty(groups, np.int32)}


class DeviceInt8Codec(AffineCodec):
    """The TFLite trunk's int8 output kept as-is with the model's (per-tensor or per-channel) scale/zero point."""

    def __init__(self) -> None:
        super().__init__("int8-device", 8, per_channel=False)
        self.description = ("int8-device: the trunk's own int8 output, unchanged; x = scale * (q - zero_point) "
                            "with the model's float32 scale and int32 zero point")

    def encode(self, x: np.ndarray) -> EncodedLatent:
        raise UserError("codec int8-device stores the trunk's int8 output: call encode_quantized(q, scale, "
                        "zero_point) (or ReplayBuffer.add_quantized); for float latents use int8-channel")

    def encode_quantized(self, q: np.ndarray, scale: float | np.ndarray,
                         zero_point: int | np.ndarray) -> EncodedLatent:
        q = np.asarray(q)
        if q.dtype != np.int8 or q.ndim != 3:
            raise UserError(f"int8-device latent has dtype {q.dtype} and shape {q.shape}: expected int8 (C, H, W)")
        scale_arr = np.atleast_1d(np.asarray(scale, dtype=np.float32)).ravel()
        zp_arr = np.atleast_1d(np.asarray(zero_point)).ravel()
        if scale_arr.size not in (1, q.shape[0]) or zp_arr.size != scale_arr.size:
            raise UserError(f"int8-device scale/zero point have {scale_arr.size}/{zp_arr.size} values: expected "
                            f"1 (per tensor) or {q.shape[0]} (per channel) each")
        if not (np.isfinite(scale_arr).all() and (scale_arr > 0).all()):
            raise UserError(f"int8-device scale {scale_arr} must be finite and positive")
        return EncodedLatent(self.name, q.shape, {"payload": np.ascontiguousarray(q), "scale": scale_arr,
                                                   "zero_point": zp_arr.astype(np.int32)})


class PcaCodec(Codec):
    """Per-sample PCA of the (H*W, C) matrix; ``bytes_per_sample`` is the upper bound with all components."""

    name = "pca"
    fixed_size = False

    def __init__(self, variance: float = 0.98, dtype: str = "fp16") -> None:
        if not 0.0 < variance <= 1.0:
            raise UserError(f"pca variance {variance} must be in (0, 1], e.g. pca:0.98")
        if dtype not in ("fp16", "fp32"):
            raise UserError(f"pca storage dtype {dtype!r}: expected fp16 or fp32, e.g. pca:0.98:fp32")
        self.variance, self.dtype_name = variance, dtype
        self.dtype = np.dtype(np.float16 if dtype == "fp16" else np.float32)
        self.description = (f"pca: per-sample PCA of the (H*W, C) matrix to {variance:g} explained variance; "
                            f"mean (C), components (k, C), coefficients (H*W, k) in {dtype}")

    @property
    def spec(self) -> str:
        return f"pca:{self.variance:g}:{self.dtype_name}"

    def encode(self, x: np.ndarray) -> EncodedLatent:
        x = _check_latent(x)
        c = x.shape[0]
        rows = x.reshape(c, -1).T.astype(np.float64)  # (H*W, C): one row per spatial position
        mean = rows.mean(axis=0)
        _, sv, vt = np.linalg.svd(rows - mean, full_matrices=False)
        energy = sv**2
        total = energy.sum()
        k = 0 if total <= 0 else int(np.searchsorted(np.cumsum(energy) / total, self.variance - 1e-12) + 1)
        k = min(k, len(sv))
        components = vt[:k]
        coefficients = (rows - mean) @ components.T
        arrays = {"mean": mean, "components": components, "coefficients": coefficients}
        if self.dtype == np.float16 and max(np.abs(a).max(initial=0.0) for a in arrays.values()) > 65504:
            raise UserError("pca values overflow fp16 (max 65504): use pca:<variance>:fp32")
        return EncodedLatent(self.name, x.shape, {n: a.astype(self.dtype) for n, a in arrays.items()})

    def decode(self, e: EncodedLatent) -> np.ndarray:
        mean, components, coefficients = self._arrays(e, "mean", "components", "coefficients")
        c = e.shape[0]
        n = int(np.prod(e.shape[1:]))
        if mean.shape != (c,) or components.shape[1:] != (c,) or coefficients.shape != (n, components.shape[0]):
            raise UserError(f"encoded pca latent has inconsistent array shapes for shape {e.shape}")
        rows = coefficients.astype(np.float32) @ components.astype(np.float32) + mean.astype(np.float32)
        return np.ascontiguousarray(rows.T).reshape(e.shape)

    def _layout(self, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        c, n = shape[0], int(np.prod(shape[1:]))
        k = min(c, n)  # the most components a sample can keep: the bound used for budgets
        return {"mean": np.empty(c, self.dtype), "components": np.empty((k, c), self.dtype),
                "coefficients": np.empty((n, k), self.dtype)}


CODEC_NAMES = ("fp32", "fp16", "int8-tensor", "int8-channel", "int4-channel", "pca", "int8-device")


def get_codec(spec: str) -> Codec:
    """``"int8-channel"``, ``"pca:0.95"``, ``"pca:0.98:fp32"`` ... -> a Codec."""
    if not isinstance(spec, str):
        raise UserError(f"codec {spec!r}: expected a name, one of {', '.join(CODEC_NAMES)}")
    name, *options = spec.strip().split(":")
    name = name.lower()
    if name == "pca":
        if len(options) > 2:
            raise UserError(f"codec {spec!r}: expected pca[:variance[:fp16|fp32]], e.g. pca:0.98")
        try:
            variance = float(options[0]) if options and options[0] else 0.98
        except ValueError as exc:
            raise UserError(f"codec {spec!r}: pca variance must be a number in (0, 1], e.g. pca:0.98") from exc
        return PcaCodec(variance, options[1].lower() if len(options) > 1 else "fp16")
    factories = {
        "fp32": lambda: FloatCodec("fp32", "<f4"),
        "fp16": lambda: FloatCodec("fp16", "<f2"),
        "int8-tensor": lambda: AffineCodec("int8-tensor", 8, per_channel=False),
        "int8-channel": lambda: AffineCodec("int8-channel", 8, per_channel=True),
        "int4-channel": lambda: AffineCodec("int4-channel", 4, per_channel=True),
        "int8-device": DeviceInt8Codec,
    }
    if name not in factories:
        raise UserError(f"unknown codec {spec!r}: expected one of {', '.join(CODEC_NAMES)} (pca takes :variance)")
    if options:
        raise UserError(f"codec {spec!r}: {name} takes no options")
    return factories[name]()


def decode_latent(e: EncodedLatent) -> np.ndarray:
    """Decode with the codec named in the record (decoding needs no codec options)."""
    return get_codec(e.codec).decode(e)


def reconstruction_error(x: np.ndarray, codec: Codec | str) -> dict[str, float]:
    """rmse, max_abs and rel_rmse = ||x - x'|| / ||x|| of one encode/decode roundtrip, plus stored nbytes."""
    codec = get_codec(codec) if isinstance(codec, str) else codec
    x = _check_latent(x).astype(np.float32)
    encoded = codec.encode(x)
    diff = codec.decode(encoded).astype(np.float64) - x
    rmse = float(np.sqrt(np.mean(diff**2)))
    norm = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return {"rmse": rmse, "max_abs": float(np.abs(diff).max(initial=0.0)),
            "rel_rmse": rmse / norm if norm > 0 else (0.0 if rmse == 0 else float("inf")),
            "nbytes": float(encoded.nbytes)}
