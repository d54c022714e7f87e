"""Validate one input image by decoding it fully, and produce the JPEG bytes a shard stores."""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Above this many pixels an input is refused before it is decoded (decompression bombs).
# ImageNet's largest photos are about 20 MP; 2**26 (67 MP) leaves room for camera originals.
DEFAULT_MAX_PIXELS = 1 << 26
DEFAULT_QUALITY = 95  # used when an input must be re-encoded and no --quality was given
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class PreparedImage:
    """JPEG bytes ready for a shard, with the decoded size and whether they were re-encoded."""

    data: bytes
    width: int
    height: int
    reencoded: bool


@dataclass(frozen=True)
class RejectedInput:
    """An input that will not be written: a short machine-readable kind and a readable reason."""

    kind: str
    reason: str


def _to_8bit(image: Image.Image) -> Image.Image:
    """RGB or L with 8-bit channels. PIL's convert() clips 16-bit and 32-bit integer images at
    255 instead of scaling them, which would turn most of a 16-bit photo white."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if pixels.max() > 255 else 255.0
        return Image.fromarray(np.clip(pixels * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    return image if image.mode in ("RGB", "L") else image.convert("RGB")


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    image = _to_8bit(image)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


@contextlib.contextmanager
def own_pixel_limit() -> Iterator[None]:
    """Switch off PIL's bomb check (an error above twice its MAX_IMAGE_PIXELS, about 179 MP)
    while fastssl applies `max_pixels` itself, right after reading the header: one limit, one
    message, and a user's higher limit is honoured. Process-global, as PIL's setting is; the
    shard writer calls this from one thread per process."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def prepare_image(
    data: bytes,
    *,
    max_side: int | None = None,
    quality: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PreparedImage | RejectedInput:
    """Decode `data` fully and return the bytes to store, or why it cannot be stored.

    A valid RGB or grayscale JPEG within `max_side`, without an EXIF rotation, is kept byte for
    byte unless `quality` asks for re-encoding. Anything else (PNG, CMYK, rotated, too large)
    is decoded, rotated upright, downscaled to `max_side` and encoded as JPEG, so that every
    backend's decoder later sees the same upright pixels.
    """
    if not data:
        return RejectedInput("empty", "zero-byte file")
    try:
        with own_pixel_limit(), Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                return RejectedInput(
                    "too_many_pixels",
                    f"{width}x{height} = {width * height} pixels exceeds the limit of "
                    f"{max_pixels} (refused before decoding)",
                )
            if image.mode == "F":
                return RejectedInput("unsupported", "32-bit float image: no defined mapping to 8-bit JPEG")
            image_format = image.format
            image.load()  # full decode: truncated or corrupt data raises here
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            keep = (
                image_format == "JPEG"
                and quality is None
                and image.mode in ("RGB", "L")
                and orientation == 1
                and (max_side is None or max(width, height) <= max_side)
            )
            if keep:
                return PreparedImage(data, width, height, reencoded=False)
            upright = _to_8bit(ImageOps.exif_transpose(image))
            if max_side is not None and max(upright.size) > max_side:
                upright.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            encoded = _encode_jpeg(upright, quality or DEFAULT_QUALITY)
            return PreparedImage(encoded, upright.width, upright.height, reencoded=True)
    except UnidentifiedImageError:
        return RejectedInput("not_image", "not a recognised image format")
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        message = str(err) or type(err).__name__
        kind = "truncated" if "truncated" in message.lower() else "corrupt"
        return RejectedInput(kind, f"cannot decode: {message}")
    except Exception as err:  # noqa: BLE001
        # Malformed files can trip other errors inside PIL's plugins; one bad file in a
        # million must become a listed reject, not the end of the run.
        return RejectedInput("corrupt", f"cannot decode: {type(err).__name__}: {err}")


def read_regular_file(path: str) -> bytes | RejectedInput:
    """The bytes of `path`, or why they cannot be had; an unreadable file is a rejection.

    Only regular files are read: a FIFO or device under an image name is refused without
    blocking on it (opened non-blocking, checked with fstat).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        return RejectedInput("unreadable", f"cannot read: {err.strerror or err}")
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return RejectedInput("not_regular_file", "not a regular file (FIFO, device or socket)")
        try:
            return f.read()
        except OSError as err:
            return RejectedInput("unreadable", f"cannot read: {err.strerror or err}")


def read_and_prepare(
    path: str,
    *,
    max_side: int | None = None,
    quality: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PreparedImage | RejectedInput:
    """Read `path` (`read_regular_file`) and `prepare_image` it."""
    data = read_regular_file(path)
    if isinstance(data, RejectedInput):
        return data
    return prepare_image(data, max_side=max_side, quality=quality, max_pixels=max_pixels)
