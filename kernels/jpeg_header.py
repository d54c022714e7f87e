"""JPEG header facts for a whole batch in one compiled pass: size, and whether the file is one the
loader may decode without asking PIL (`fastssl.data.header.check_image`).

The pre-decode checks (format, colour mode, pixel limit, completeness) used to open every JPEG with
PIL, 20-80 us each. This kernel walks the marker segments of every JPEG of a batch in the batch's
one buffer and answers OK only for files whose structure PIL and the completeness check walk the
same way: SOI, then segments with length fields (APPn, COM, DQT, DHT, DAC, DRI, DNL, EXP, SOFn) up
to the first SOS, 8-bit samples, 1 or 3 components, no EXIF block unless a JFIF block gives the
resolution (PIL would read it from the EXIF tags, which can fail), no Photoshop block, a size within
the pixel limit and an end-of-image marker after the scan starts. Anything else (a PNG, a CMYK file,
a truncated scan, a multi-picture file, a marker without a length, a malformed table) is not judged
here: the caller asks `check_image`, whose verdict and message stay the only ones users see. So the
kernel may send a good file to the slow path, never a bad one past it. No library parses JPEG
headers over a batch of buffers without decoding; nvImageCodec and DALI need the decoder.
`jpeg_facts_reference` is the same walk in plain Python, for tests.
"""

from __future__ import annotations

import numba
import numpy as np

OK = 0
EMPTY = 1  # no bytes
NOT_JPEG = 2  # no SOI + marker at the start
UNUSUAL = 3  # a structure left to PIL (see the module docstring)
NO_FRAME = 4  # SOS before any SOF, or no SOS before the data ends
BAD_FRAME = 5  # not 8-bit, or not 1 or 3 components (CMYK, YCCK, ...)
EMPTY_SIZE = 6
TOO_MANY_PIXELS = 7
TRUNCATED = 8  # no end-of-image marker after the scan starts

_SOF = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
_SKIPPED = (0xC4, 0xCC, 0xDC, 0xDD, 0xDF)  # DHT, DAC, DNL, DRI, EXP: a length, content unread


@numba.njit(inline="always")
def _u16(buf: np.ndarray, at: int) -> int:
    return (np.int64(buf[at]) << 8) | np.int64(buf[at + 1])


@numba.njit(inline="always")
def _starts_with(buf: np.ndarray, at: int, end: int, text: bytes) -> bool:
    if at + len(text) > end:
        return False
    for k in range(len(text)):  # noqa: SIM110 - a loop Numba compiles
        if buf[at + k] != text[k]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _one(buf: np.ndarray, start: int, length: int, max_pixels: int) -> tuple[int, int, int]:
    """(code, height, width) of the JPEG in buf[start:start + length]."""
    if length == 0:
        return EMPTY, 0, 0
    end = start + length
    if length < 3 or buf[start] != 0xFF or buf[start + 1] != 0xD8 or buf[start + 2] != 0xFF:
        return NOT_JPEG, 0, 0
    pos = start + 2
    height = width = 0
    frame = exif = jfif_dpi = False
    while True:
        if pos + 4 > end:
            return NO_FRAME, height, width
        if buf[pos] != 0xFF:  # stray bytes between segments: PIL and libjpeg skip them
            pos += 1
            continue
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            if pos + 2 + _u16(buf, pos + 2) > end:  # PIL reads the scan header whole
                return UNUSUAL, height, width
            break
        is_sof = False
        for m in _SOF:
            if marker == m:
                is_sof = True
        is_app = 0xE0 <= marker <= 0xEF
        is_other = marker == 0xFE or marker == 0xDB
        for m in _SKIPPED:
            if marker == m:
                is_other = True
        if not (is_sof or is_app or is_other):
            return UNUSUAL, height, width  # SOI, EOI, RSTn, TEM, JPGn, DHP, 0xFF00 ...
        size = _u16(buf, pos + 2)
        body, body_end = pos + 4, pos + 2 + size
        if size < 2 or body_end > end:
            return UNUSUAL, height, width
        n = size - 2
        if is_sof:
            if n < 6 or (n - 6) % 3:  # PIL reads whole 3-byte component records
                return UNUSUAL, height, width
            if buf[body] != 8 or not (buf[body + 5] == 1 or buf[body + 5] == 3):
                return BAD_FRAME, height, width
            height, width, frame = _u16(buf, body + 1), _u16(buf, body + 3), True
        elif marker == 0xDB:  # DQT: PIL reads every table and refuses a short one
            at = body
            while at < body_end:
                table = 65 if buf[at] // 16 == 0 else 129
                if at + table > body_end:
                    return UNUSUAL, height, width
                at += table
        elif marker == 0xE0 and _starts_with(buf, body, body_end, b"JFIF"):
            if n < 7:
                return UNUSUAL, height, width  # PIL reads the version at byte 5
            if n >= 12 and (buf[body + 7] == 1 or buf[body + 7] == 2):
                jfif_dpi = True
        elif marker == 0xE1 and _starts_with(buf, body, body_end, b"Exif\0\0"):
            exif = True
        elif marker == 0xED and _starts_with(buf, body, body_end, b"Photoshop 3.0\0"):
            return UNUSUAL, height, width  # PIL parses its resource blocks
        elif (
            marker == 0xEE
            and _starts_with(buf, body, body_end, b"Adobe")
            and n < 7
            or marker == 0xE2
            and (
                _starts_with(buf, body, body_end, b"MPF\0")  # a multi-picture file: PIL's MPO reader
                or (_starts_with(buf, body, body_end, b"ICC_PROFILE\0") and n < 14)
            )
        ):
            return UNUSUAL, height, width
        pos = body_end
    if not frame:
        return NO_FRAME, height, width
    if exif and not jfif_dpi:  # PIL then reads the resolution from the EXIF tags, which can fail
        return UNUSUAL, height, width
    if height < 1 or width < 1:
        return EMPTY_SIZE, height, width
    if height * width > max_pixels:
        return TOO_MANY_PIXELS, height, width
    at = end - 2  # the last end-of-image marker must lie after the scan starts
    while at > pos:
        if buf[at] == 0xFF and buf[at + 1] == 0xD9:
            return OK, height, width
        at -= 1
    return TRUNCATED, height, width


@numba.njit(cache=True, nogil=True)
def jpeg_facts(
    buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, max_pixels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes int8, heights int64, widths int64) of the JPEGs at `buf[starts[i]:starts[i] + lengths[i]]`."""
    n = len(starts)
    codes = np.empty(n, np.int8)
    heights = np.zeros(n, np.int64)
    widths = np.zeros(n, np.int64)
    for i in range(n):
        code, h, w = _one(buf, starts[i], lengths[i], max_pixels)
        codes[i], heights[i], widths[i] = code, h, w
    return codes, heights, widths


def jpeg_facts_reference(data: bytes, max_pixels: int) -> tuple[int, int, int]:
    """`jpeg_facts` for one JPEG, in plain Python: the walk the kernel must match."""
    if not data:
        return EMPTY, 0, 0
    if not data.startswith(b"\xff\xd8\xff"):
        return NOT_JPEG, 0, 0
    pos, height, width, frame, end = 2, 0, 0, False, len(data)
    exif = jfif_dpi = False
    while True:
        if pos + 4 > end:
            return NO_FRAME, height, width
        if data[pos] != 0xFF:
            pos += 1
            continue
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xDA:
            if pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big") > end:
                return UNUSUAL, height, width
            break
        if not (marker in _SOF or 0xE0 <= marker <= 0xEF or marker in (0xFE, 0xDB, *_SKIPPED)):
            return UNUSUAL, height, width
        size = int.from_bytes(data[pos + 2 : pos + 4], "big")
        body, body_end = data[pos + 4 : pos + 2 + size], pos + 2 + size
        if size < 2 or body_end > end:
            return UNUSUAL, height, width
        if marker in _SOF:
            if len(body) < 6 or (len(body) - 6) % 3:
                return UNUSUAL, height, width
            if body[0] != 8 or body[5] not in (1, 3):
                return BAD_FRAME, height, width
            height, width, frame = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), True
        elif marker == 0xDB:
            while body:
                table = 65 if body[0] // 16 == 0 else 129
                if len(body) < table:
                    return UNUSUAL, height, width
                body = body[table:]
        elif marker == 0xE0 and body.startswith(b"JFIF") and len(body) >= 12 and body[7] in (1, 2):
            jfif_dpi = True
        elif marker == 0xE1 and body.startswith(b"Exif\0\0"):
            exif = True
        elif (
            (marker == 0xE0 and body.startswith(b"JFIF") and len(body) < 7)
            or (marker == 0xED and body.startswith(b"Photoshop 3.0\0"))
            or (marker == 0xEE and body.startswith(b"Adobe") and len(body) < 7)
            or (marker == 0xE2 and body.startswith(b"MPF\0"))
            or (marker == 0xE2 and body.startswith(b"ICC_PROFILE\0") and len(body) < 14)
        ):
            return UNUSUAL, height, width
        pos = body_end
    if not frame:
        return NO_FRAME, height, width
    if exif and not jfif_dpi:
        return UNUSUAL, height, width
    if height < 1 or width < 1:
        return EMPTY_SIZE, height, width
    if height * width > max_pixels:
        return TOO_MANY_PIXELS, height, width
    return (OK if data.rfind(b"\xff\xd9") > pos else TRUNCATED), height, width
