"""Image reading and preprocessing, shared by the host (training, export) and the device runtime.

One implementation on purpose: the deployed model must see exactly the pixels it was trained on. The
parameters (size, mean, std, channel order) travel in the artifact manifest; see `Preprocess.to_dict`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from firmware_sim.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _open(path: Path, what: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse both, before decoding gigabytes.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()  # decode now so truncated files fail here, with the file's name
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"{path}: {what} is too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: cannot read {what} ({e}); expected a readable PNG, JPEG, BMP or TIFF file") from None
    return img


def _to_uint8(img: Image.Image) -> Image.Image:
    """8-bit L/RGB from any PIL mode: 16-bit and float images are rescaled, alpha is dropped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            top = max(float(a.max(initial=1.0)), 1e-12) if a.max(initial=0) > 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(a / top * 255.0), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("L", "RGB"):
        return img
    return img.convert("RGB")  # P, RGBA, LA, CMYK, YCbCr, 1


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Read any image file as 8-bit RGB (grayscale is replicated to 3 channels)."""
    img = _to_uint8(_open(Path(path), "image"))
    return img.convert("RGB") if img.mode != "RGB" else img


def load_mask(path: str | os.PathLike, expected_size: tuple[int, int] | None = None,
              threshold: int = 0) -> np.ndarray:
    """Read a ground-truth mask as bool (H, W): any non-zero pixel is a defect (0/255, 0/1 and masks drawn
    with any value work alike). ``threshold``: values above it are defects; only a converter that knows its
    source's masks carry soft edges or compression noise raises it (Magnetic-Tile: 127)."""
    path = Path(path)
    img = _open(path, "mask")
    # Single-channel masks keep their own values (a 16-bit 0/1 mask rescaled to 8 bits would be empty);
    # palette and colour masks become RGB without alpha, then any channel counts.
    if img.mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        img = _to_uint8(img)
    if expected_size is not None and img.size != expected_size:
        raise UserError(
            f"{path}: mask is {img.size[0]}x{img.size[1]} but its image is "
            f"{expected_size[0]}x{expected_size[1]}; expected the same size"
        )
    a = np.asarray(img)
    if a.ndim == 3:
        a = a.max(axis=2)
    return a > threshold


@dataclass(frozen=True)
class Preprocess:
    """Resize (antialiased bilinear) to a square, scale to [0,1], normalise per channel, CHW, RGB order."""

    image_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    layout: str = "CHW"

    def __post_init__(self) -> None:
        if not (isinstance(self.image_size, int) and 16 <= self.image_size <= 4096):
            raise UserError(f"image size {self.image_size!r}: expected an integer between 16 and 4096")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UserError(f"mean {self.mean} / std {self.std}: expected 3 values each, std > 0")

    def resize_uint8(self, img: Image.Image) -> np.ndarray:
        """(S, S, 3) uint8: what a raw-image replay buffer stores and what calibration uses."""
        img = img if img.mode == "RGB" else load_rgb_from(img)
        if img.size != (self.image_size, self.image_size):
            # PIL's bilinear filter widens its support when shrinking, i.e. it is antialiased.
            img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)

    def normalize(self, rgb_uint8: np.ndarray) -> np.ndarray:
        """(..., S, S, 3) uint8 -> (..., 3, S, S) float32 normalised."""
        x = rgb_uint8.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.moveaxis(x, -1, -3).copy()

    def image(self, img: Image.Image) -> np.ndarray:
        return self.normalize(self.resize_uint8(img))

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """Bool (H, W) -> float32 (S, S) in {0, 1}; bilinear then threshold keeps thin defects' area honest."""
        if mask.shape == (self.image_size, self.image_size):
            return mask.astype(np.float32)
        m = Image.fromarray(mask.astype(np.uint8) * 255).resize((self.image_size, self.image_size), Image.BILINEAR)
        return (np.asarray(m) >= 128).astype(np.float32)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(resize="bilinear-antialiased", scale=1.0 / 255.0, mean=list(self.mean), std=list(self.std))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        try:
            return cls(
                image_size=int(d["image_size"]),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                channel_order=d.get("channel_order", "RGB"),
                layout=d.get("layout", "CHW"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"preprocessing description {d!r} is incomplete or invalid ({e})") from None


def load_rgb_from(img: Image.Image) -> Image.Image:
    img = _to_uint8(img)
    return img.convert("RGB") if img.mode != "RGB" else img
