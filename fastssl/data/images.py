"""Validate one input image by decoding it fully, and produce the JPEG bytes a shard stores."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

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


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


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
        with warnings.catch_warnings():
            # Our own pixel limit below replaces PIL's warning; PIL's hard limit still raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    return RejectedInput(
                        "too_many_pixels",
                        f"{width}x{height} = {width * height} pixels exceeds the limit of "
                        f"{max_pixels} (refused before decoding)",
                    )
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
                upright = ImageOps.exif_transpose(image)
                if max_side is not None and max(upright.size) > max_side:
                    upright.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                encoded = _encode_jpeg(upright, quality or DEFAULT_QUALITY)
                return PreparedImage(encoded, upright.width, upright.height, reencoded=True)
    except UnidentifiedImageError:
        return RejectedInput("not_image", "not a recognised image format")
    except Image.DecompressionBombError as err:
        return RejectedInput("too_many_pixels", f"decompression bomb: {err}")
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        message = str(err) or type(err).__name__
        kind = "truncated" if "truncated" in message.lower() else "corrupt"
        return RejectedInput(kind, f"cannot decode: {message}")
    except Exception as err:  # noqa: BLE001
        # Malformed files can trip other errors inside PIL's plugins; one bad file in a
        # million must become a listed reject, not the end of the run.
        return RejectedInput("corrupt", f"cannot decode: {type(err).__name__}: {err}")


def read_and_prepare(
    path: str,
    *,
    max_side: int | None = None,
    quality: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PreparedImage | RejectedInput:
    """Read `path` and `prepare_image` it; an unreadable file becomes a rejection, not a crash."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        return RejectedInput("unreadable", f"cannot read: {err.strerror or err}")
    return prepare_image(data, max_side=max_side, quality=quality, max_pixels=max_pixels)
