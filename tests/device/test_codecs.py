"""Size strings and latent codecs: errors, exact byte counts, serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_sim.codecs import CODEC_NAMES, EncodedLatent, get_codec, reconstruction_error
from firmware_sim.errors import UserError
from firmware_sim.sizes import format_size, parse_size

SHAPE = (24, 32, 32)  # MCUNet-in3 block-5 output at 256 px


def realistic_latent(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A BatchNorm-like output: smooth spatial structure, channels correlated, per-channel mean and std,
    a few channels all positive (their range excludes 0)."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    noise = rng.normal(size=(c, h, w))
    yy, xx = np.mgrid[:h, :w]
    kernel = np.fft.ifftshift(np.exp(-((yy - h // 2) ** 2 + (xx - w // 2) ** 2) / 8.0))
    smooth = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.fft.fft2(kernel)[None]))
    k = min(c, 6)  # a few shared spatial modes make the channels correlated, as real features are
    z = np.einsum("ck,khw->chw", rng.normal(size=(c, k)), smooth[:k]) + 0.3 * smooth
    z = (z - z.mean(axis=(1, 2), keepdims=True)) / z.std(axis=(1, 2), keepdims=True)
    x = z * rng.lognormal(0.0, 0.5, c)[:, None, None] + rng.normal(0.0, 1.0, c)[:, None, None]
    x[:4] = np.abs(x[:4]) + 3.0
    return x.astype(np.float32)


# -- sizes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("2.46MB", 2_460_000), ("500kB", 500_000), ("500KB", 500_000), ("500kb", 500_000),
    ("1.5MiB", 1_572_864), ("1.5mib", 1_572_864), ("64KiB", 65_536), ("1000B", 1000), ("1000", 1000),
    ("1GB", 10**9), ("1GiB", 2**30), (" 3 mb ", 3_000_000), ("1e3kB", 10**6), (4096, 4096), ("0", 0),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["-5MB", "nan", "NaN MB", "", "   ", "5XB", "12 furlongs", "1.2.3MB", "inf", "5K"])
def test_parse_size_rejects(text):
    with pytest.raises(UserError) as info:
        parse_size(text)
    assert repr(text) in str(info.value)
    if text.strip() and not text.startswith("-"):
        assert "MiB" in str(info.value)  # the accepted units are listed


def test_format_size():
    assert format_size(2_457_600) == "2.46 MB (2,457,600 B)"
    assert format_size(512) == "512 B"
    assert format_size(98_304) == "98.30 kB (98,304 B)"


# -- codecs --------------------------------------------------------------------------------------------
def test_get_codec_names_and_errors():
    for name in CODEC_NAMES:
        assert get_codec(name).name == name
    assert get_codec("pca:0.9").variance == 0.9
    assert get_codec("pca").spec == "pca:0.98:fp16"
    assert get_codec("pca:0.98:fp32").dtype == np.float32
    with pytest.raises(UserError, match="int8-channel"):
        get_codec("int7")
    for bad in ("pca:abc", "pca:1.5", "pca:0.9:bf16", "fp32:3"):
        with pytest.raises(UserError):
            get_codec(bad)


@pytest.mark.parametrize(("spec", "max_rel"), [
    ("fp32", 0.0), ("fp16", 1e-3), ("int8-tensor", 0.015), ("int8-channel", 0.006), ("int4-channel", 0.10),
    ("pca", 0.10), ("pca:0.98:fp32", 0.10), ("pca:0.9", 0.25),
])
def test_reconstruction_error(spec, max_rel):
    errors = [reconstruction_error(realistic_latent(seed), spec)["rel_rmse"] for seed in range(3)]
    assert max(errors) <= max_rel, errors


def test_int8_channel_beats_per_tensor_and_respects_step():
    x = realistic_latent(1)
    per_tensor = reconstruction_error(x, "int8-tensor")
    per_channel = reconstruction_error(x, "int8-channel")
    assert per_channel["rmse"] < per_tensor["rmse"]
    codec = get_codec("int8-channel")
    e = codec.encode(x)
    # Worst case error is one quantisation step (rounding the zero point shifts the grid by half a step).
    step = e.arrays["scale"][:, None, None]
    assert (np.abs(codec.decode(e) - x) <= step * 1.0001).all()


def test_zero_point_unclamped_for_channels_excluding_zero():
    x = realistic_latent(2)
    x[0] = 5.0 + 0.01 * x[0]  # narrow all-positive channel: its zero point lies far outside int8
    x[1] = -2.5  # constant channel
    codec = get_codec("int8-channel")
    e = codec.encode(x)
    assert e.arrays["zero_point"].dtype == np.int32
    assert e.arrays["zero_point"][0] < -128
    y = codec.decode(e)
    assert np.abs(y[0] - x[0]).max() <= 0.01 * np.ptp(x[0]) + 1e-6  # full 256 levels over the narrow range
    assert np.abs(y[1] - x[1]).max() < 1e-5


def test_byte_counts_at_thesis_shape():
    x = realistic_latent()
    payloads = {"fp32": 98_304, "fp16": 49_152, "int8-tensor": 24_576, "int8-channel": 24_576,
                "int4-channel": 12_288}
    for spec, payload in payloads.items():
        codec = get_codec(spec)
        e = codec.encode(x)
        assert e.arrays["payload"].nbytes == payload
        groups = {"int8-tensor": 1}.get(spec, 24)
        scales = 0 if spec.startswith("fp") else groups * 4 * 2  # float32 scale + int32 zero point
        assert sum(e.array_nbytes().values()) == payload + scales
        assert e.nbytes == len(e.to_bytes()) == codec.bytes_per_sample(SHAPE)  # exact for fixed-size codecs
        assert e.nbytes - payload - scales < 100  # self-describing metadata stays small
    pca = get_codec("pca")
    e = pca.encode(x)
    k = e.arrays["components"].shape[0]
    assert 0 < k < 24
    assert sum(e.array_nbytes().values()) == 2 * (24 + k * 24 + 1024 * k)  # fp16 mean, components, coefficients
    assert e.nbytes == len(e.to_bytes()) <= pca.bytes_per_sample(SHAPE)  # data-dependent: an upper bound


def test_int4_packs_two_per_byte_with_odd_count():
    x = realistic_latent(3, shape=(3, 5, 7))
    codec = get_codec("int4-channel")
    e = codec.encode(x)
    assert e.arrays["payload"].nbytes == (3 * 5 * 7 + 1) // 2
    y = codec.decode(EncodedLatent.from_bytes(e.to_bytes()))
    step = e.arrays["scale"][:, None, None]
    assert y.shape == x.shape and (np.abs(y - x) <= step * 1.0001).all()


@pytest.mark.parametrize("spec", ["fp32", "fp16", "int8-tensor", "int8-channel", "int4-channel", "pca:0.95"])
def test_serialisation_roundtrip(spec):
    x = realistic_latent(4)
    codec = get_codec(spec)
    e = codec.encode(x)
    data = e.to_bytes()
    back = EncodedLatent.from_bytes(data)
    assert back.codec == e.codec and back.shape == e.shape == x.shape
    assert list(back.arrays) == list(e.arrays)
    for name in e.arrays:
        assert back.arrays[name].dtype == e.arrays[name].dtype
        np.testing.assert_array_equal(back.arrays[name], e.arrays[name])
    np.testing.assert_array_equal(codec.decode(back), codec.decode(e))
    assert back.to_bytes() == data
    assert codec.decode(back).dtype == np.float32


def test_from_bytes_rejects_malformed():
    data = get_codec("int8-channel").encode(realistic_latent(5, shape=(2, 4, 4))).to_bytes()
    for bad in (data[:-1], data + b"\0", b"", b"\x09" + data[1:]):
        with pytest.raises(UserError):
            EncodedLatent.from_bytes(bad)


def test_int8_device_stores_bytes_unchanged():
    rng = np.random.default_rng(6)
    q = rng.integers(-128, 128, size=SHAPE, dtype=np.int8)
    codec = get_codec("int8-device")
    e = codec.encode_quantized(q, np.float32(0.0473), -7)
    assert e.arrays["payload"].tobytes() == q.tobytes()
    back = EncodedLatent.from_bytes(e.to_bytes())
    assert back.arrays["payload"].tobytes() == q.tobytes()
    expected = np.float32(0.0473) * (q.astype(np.float32) + 7)
    np.testing.assert_array_equal(codec.decode(back), expected)
    assert e.nbytes == codec.bytes_per_sample(SHAPE)
    assert e.arrays["payload"].nbytes == 24_576
    # Per-channel parameters are accepted as well.
    per_channel = codec.encode_quantized(q, np.full(24, 0.1, np.float32), np.arange(24))
    assert codec.decode(per_channel)[3, 0, 0] == np.float32(0.1) * (np.float32(q[3, 0, 0]) - 3)
    with pytest.raises(UserError, match="encode_quantized"):
        codec.encode(q.astype(np.float32))
    with pytest.raises(UserError, match="int8"):
        codec.encode_quantized(q.astype(np.int16), 0.1, 0)
    with pytest.raises(UserError):
        codec.encode_quantized(q, np.ones(5, np.float32), np.zeros(5))


def test_bad_latents_rejected():
    codec = get_codec("int8-channel")
    x = realistic_latent(7, shape=(2, 4, 4))
    with pytest.raises(UserError, match="C, H, W"):
        codec.encode(x[0])
    x[0, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        codec.encode(x)
    with pytest.raises(UserError, match="fp16"):
        get_codec("fp16").encode(np.full((1, 2, 2), 1e6, np.float32))
    with pytest.raises(UserError, match="written by codec"):
        get_codec("fp32").decode(get_codec("fp16").encode(np.ones((1, 2, 2), np.float32)))
