"""Check a sample's members before anything is decoded: image header, size limit, completeness, label.

Every backend decodes only bytes that passed here, so a bad file is refused (or skipped) with the
same verdict and message on DALI and on Kornia, and a decompression bomb never reaches a decoder.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from fastssl.data.images import own_pixel_limit
from fastssl.errors import ImageHeaderError, LabelError

READ_MODES = ("RGB", "L")  # what both decoders turn into the same RGB pixels
# PIL names a JPEG with further pictures after it (a camera's multi-picture file) "MPO"; decoders
# read its first picture, which is a plain JPEG
JPEG_FORMATS = ("JPEG", "MPO")

_EOI = b"\xff\xd9"  # end of image
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length field


def _scan_start(data: bytes) -> int | None:
    """Offset of the first start-of-scan marker, walking the header segments by their lengths
    (so a thumbnail inside EXIF, with its own markers, is stepped over); None when the header
    runs off the end of the data."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:  # stray bytes between segments: libjpeg skips them with a warning
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return None
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xDA:
            return pos
        if marker in _STANDALONE:
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def jpeg_is_complete(data: bytes) -> bool:
    """Whether a JPEG holds its whole scan: an end-of-image marker after the first scan starts.

    Entropy-coded data never contains 0xFFD9 (a 0xFF there is stuffed as 0xFF00), so a file cut
    anywhere after its header lacks it. Decoders disagree on such files (libjpeg-turbo in DALI
    fills the rest with gray, PIL refuses), hence one verdict here for every backend."""
    scan = _scan_start(data)
    return scan is not None and data.rfind(_EOI) > scan


def check_image(data: bytes, *, max_pixels: int, shard: str, key: str) -> tuple[int, int]:
    """(height, width) of a `.jpg` member from its header, without decoding it.

    Refuses, with `ImageHeaderError` naming shard and key: an empty member, bytes that are no
    image, an image that is not a JPEG (a PNG under `.jpg`), a JPEG that is not RGB or grayscale
    (CMYK, YCCK), more than `max_pixels` pixels (decompression bombs), and a truncated JPEG.
    """
    if not data:
        raise ImageHeaderError("the .jpg member is empty (0 bytes)", shard=shard, key=key)
    try:
        # the limit below is ours, with a message naming the sample, rather than PIL's own
        with own_pixel_limit(), Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            kind, mode = image.format, image.mode
    except UnidentifiedImageError as err:  # PIL's own message names a BytesIO object's address
        raise ImageHeaderError(
            "cannot read the image header: not an image format PIL recognises", shard=shard, key=key
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageHeaderError(f"cannot read the image header: {err}", shard=shard, key=key) from err
    if kind not in JPEG_FORMATS:
        raise ImageHeaderError(
            f"the .jpg member holds a {kind} image, not a JPEG (`fastssl shards` re-encodes such inputs)",
            shard=shard,
            key=key,
        )
    if mode not in READ_MODES:
        raise ImageHeaderError(
            f"a {mode} JPEG: only RGB and grayscale JPEGs are read (`fastssl shards` converts others)",
            shard=shard,
            key=key,
        )
    if width < 1 or height < 1:
        raise ImageHeaderError(f"image header gives an empty size {width}x{height}", shard=shard, key=key)
    if width * height > max_pixels:
        raise ImageHeaderError(
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
            "(refused before decoding)",
            shard=shard,
            key=key,
        )
    if not jpeg_is_complete(data):
        raise ImageHeaderError(
            f"truncated JPEG: no end-of-image marker after its scan data ({len(data)} bytes)",
            shard=shard,
            key=key,
        )
    return height, width


def parse_label(data: bytes, *, shard: str, key: str) -> int:
    """The class index stored in a `.cls` member."""
    try:
        value = int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise LabelError(f".cls member is not an integer: {data[:32]!r}", shard=shard, key=key) from None
    if value < 0:
        raise LabelError(f".cls member is negative: {value}", shard=shard, key=key)
    return value
