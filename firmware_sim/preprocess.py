"""Image reading and preprocessing, shared by the host (training, export) and the device runtime.

One implementation on purpose: the deployed model must see exactly the pixels it was trained on. The
parameters (size, mean, std, channel order, resize mode) travel in the artifact manifest and the checkpoint;
see `Preprocess.to_dict`.

Resize modes (how a W x H image becomes S x S model inputs, "views"):
- ``squash``: one view, resized to S x S regardless of aspect ratio (distorts thin defects on long images);
- ``pad``: one view, letterboxed: the long side scaled to S, centred on a canvas of the normalisation mean
  colour (so padding is zero after normalisation); the model learns the padding as normal and pixel
  metrics leave it out (`valid`);
- ``tile``: the short side scaled to S, then ceil(L / S) square tiles along the long side, evenly spaced
  (the last ones overlap); image score = max over tiles, map stitched back (max where tiles overlap).
Maps are compared with ground truth in a per-image "frame" of S x S: the squash frame for ``squash``, the
letterbox frame for ``pad`` and ``tile`` (with `valid` marking the image's pixels inside it).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from firmware_sim.anomaly_map import ScorePost
from firmware_sim.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("squash", "pad", "tile")


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
    """Resize (antialiased bilinear) to square views (see the module doc for ``resize_mode``), scale to
    [0,1], normalise per channel, CHW, RGB order."""

    image_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    layout: str = "CHW"
    resize_mode: str = "squash"

    def __post_init__(self) -> None:
        if not (isinstance(self.image_size, int) and 16 <= self.image_size <= 4096):
            raise UserError(f"image size {self.image_size!r}: expected an integer between 16 and 4096")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UserError(f"mean {self.mean} / std {self.std}: expected 3 values each, std > 0")
        if self.resize_mode not in RESIZE_MODES:
            raise UserError(f"resize mode {self.resize_mode!r}: expected one of {', '.join(RESIZE_MODES)}")

    def resize_uint8(self, img: Image.Image) -> np.ndarray:
        """(S, S, 3) uint8 squashed to the square: what a raw-image replay buffer stores and what calibration
        uses in ``squash`` mode. Other modes: `views`."""
        img = img if img.mode == "RGB" else load_rgb_from(img)
        if img.size != (self.image_size, self.image_size):
            # PIL's bilinear filter widens its support when shrinking, i.e. it is antialiased.
            img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)

    # -- geometry of the resize modes ------------------------------------------------------------------------
    def letterbox_box(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(x0, y0, w, h) of an image of size (W, H) inside the S x S letterbox frame."""
        w, h = _check_size(size)
        s = self.image_size
        scale = s / max(w, h)
        cw, ch = max(1, min(s, round(w * scale))), max(1, min(s, round(h * scale)))
        return (s - cw) // 2, (s - ch) // 2, cw, ch

    def tile_layout(self, size: tuple[int, int]) -> tuple[tuple[int, int], list[tuple[int, int]]]:
        """``tile`` mode: (resized (W', H') with the short side = S, [(x, y) of each S x S tile])."""
        w, h = _check_size(size)
        s = self.image_size
        scale = s / min(w, h)
        rw, rh = (s, max(s, round(h * scale))) if w <= h else (max(s, round(w * scale)), s)
        long = max(rw, rh)
        n = -(-long // s)
        # Evenly spaced, first at 0 and last flush with the end: the overlap is spread, not piled on one tile.
        starts = [round(k * (long - s) / (n - 1)) if n > 1 else 0 for k in range(n)]
        return (rw, rh), [(0, p) if w <= h else (p, 0) for p in starts]

    def frame_valid(self, size: tuple[int, int]) -> np.ndarray:
        """Bool (S, S): the frame's pixels that show the image (all of them for ``squash``)."""
        s = self.image_size
        if self.resize_mode == "squash":
            return np.ones((s, s), bool)
        x0, y0, cw, ch = self.letterbox_box(size)
        v = np.zeros((s, s), bool)
        v[y0:y0 + ch, x0:x0 + cw] = True
        return v

    def views(self, img: Image.Image) -> np.ndarray:
        """(K, S, S, 3) uint8 model inputs of one image: K = 1 for ``squash`` and ``pad``, the tiles for ``tile``."""
        img = img if img.mode == "RGB" else load_rgb_from(img)
        s = self.image_size
        if self.resize_mode == "squash":
            return self.resize_uint8(img)[None]
        if self.resize_mode == "pad":
            x0, y0, cw, ch = self.letterbox_box(img.size)
            canvas = np.empty((s, s, 3), np.uint8)
            canvas[:] = self.pad_colour()
            canvas[y0:y0 + ch, x0:x0 + cw] = np.asarray(_resize(img, (cw, ch)), np.uint8)
            return canvas[None]
        (rw, rh), starts = self.tile_layout(img.size)
        big = np.asarray(_resize(img, (rw, rh)), np.uint8)
        return np.stack([big[y:y + s, x:x + s] for x, y in starts])

    def frame_uint8(self, img: Image.Image) -> np.ndarray:
        """(S, S, 3) uint8: the image in its frame (what a map from `merge` lies on, e.g. for an overlay)."""
        if self.resize_mode == "squash":
            return self.resize_uint8(img)
        return replace(self, resize_mode="pad").views(img)[0]

    def pad_colour(self) -> np.ndarray:
        """The letterbox fill: the normalisation mean as uint8, i.e. (close to) zero input to the model."""
        return np.rint(np.asarray(self.mean) * 255.0).astype(np.uint8)

    def n_views(self, size: tuple[int, int]) -> int:
        return len(self.tile_layout(size)[1]) if self.resize_mode == "tile" else 1

    def merge(self, maps: np.ndarray, size: tuple[int, int], post: ScorePost | None = None
              ) -> tuple[np.ndarray, float]:
        """The K view maps (K, S, S) of one image of size (W, H) -> (its map in the frame (S, S), its score).

        Score: ``post``'s reduction (firmware_sim.anomaly_map.ScorePost; default the maximum) over the image's own
        pixels (not the letterbox padding); for ``tile`` taken on the stitched map at tile resolution, before it
        is resized into the frame (resizing would blur the peak). The view maps are already post-processed.
        """
        reduce = (post or ScorePost()).reduce
        maps = np.asarray(maps, np.float32)
        s = self.image_size
        if maps.ndim != 3 or maps.shape[1:] != (s, s) or len(maps) != self.n_views(size):
            raise UserError(f"view maps {maps.shape}: expected ({self.n_views(size)}, {s}, {s}) for a "
                            f"{size[0]}x{size[1]} image in {self.resize_mode} mode")
        if self.resize_mode == "squash":
            return maps[0], float(reduce(maps[0][None])[0])
        if self.resize_mode == "pad":
            valid = self.frame_valid(size)
            frame = maps[0].copy()
            frame[~valid] = frame[valid].min()  # the padding is not the image: never a peak in an overlay
            return frame, float(reduce(frame[valid][None])[0])
        (rw, rh), starts = self.tile_layout(size)
        big = np.full((rh, rw), -np.inf, np.float32)
        for m, (x, y) in zip(maps, starts, strict=True):
            np.maximum(big[y:y + s, x:x + s], m, out=big[y:y + s, x:x + s])
        x0, y0, cw, ch = self.letterbox_box(size)
        frame = np.zeros((s, s), np.float32)
        frame[y0:y0 + ch, x0:x0 + cw] = _resize_float(big, (cw, ch))
        frame[~self.frame_valid(size)] = float(big.min())  # outside the image: its lowest value, never a peak
        return frame, float(reduce(big[np.isfinite(big)][None])[0])

    def to_image(self, frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """A map in the model's frame (S, S) -> the same map at the input image's size (H, W) (float32): the
        image's part of the frame (all of it when squashed, the letterbox box when padded or tiled) resized
        bilinearly, as anomalib returns maps at the input size."""
        w, h = _check_size(size)
        frame = np.asarray(frame, np.float32)
        if self.resize_mode != "squash":
            x0, y0, cw, ch = self.letterbox_box((w, h))
            frame = frame[y0:y0 + ch, x0:x0 + cw]
        return _resize_float(frame, (w, h))

    def frame_mask(self, mask: np.ndarray) -> np.ndarray:
        """Bool (H, W) ground truth -> float32 (S, S) in {0, 1} in the frame of this resize mode."""
        if self.resize_mode == "squash":
            return self.mask(mask)
        h, w = mask.shape
        x0, y0, cw, ch = self.letterbox_box((w, h))
        out = np.zeros((self.image_size, self.image_size), np.float32)
        m = Image.fromarray(mask.astype(np.uint8) * 255).resize((cw, ch), Image.BILINEAR)
        out[y0:y0 + ch, x0:x0 + cw] = np.asarray(m) >= 128
        return out

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
        """JSON-able description (manifest 'input.preprocess', checkpoint 'preprocess')."""
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
                # Absent in artifacts written before resize modes existed: they all squashed.
                resize_mode=d.get("resize_mode", "squash"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"preprocessing description {d!r} is incomplete or invalid ({e})") from None


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    if w < 1 or h < 1:
        raise UserError(f"image size {w}x{h}: expected at least 1x1 pixels")
    return w, h


def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img if img.size == tuple(size) else img.resize(tuple(size), Image.BILINEAR)


def _resize_float(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float32 (H, W) -> (size[1], size[0]) bilinear (PIL mode F), for stitched maps."""
    if a.shape == (size[1], size[0]):
        return a
    return np.asarray(Image.fromarray(np.ascontiguousarray(a, np.float32), mode="F").resize(tuple(size),
                                                                                          Image.BILINEAR))


def load_rgb_from(img: Image.Image) -> Image.Image:
    img = _to_uint8(img)
    return img.convert("RGB") if img.mode != "RGB" else img
