"""Class labels of a batch's `.cls` members, parsed in one compiled pass over the batch's buffer.

`int(data.decode("ascii").strip())` per sample was a Python call per sample; this kernel accepts the
form `fastssl shards` writes and every plain one (optional ASCII whitespace, decimal digits, optional
whitespace) and leaves anything else (a sign, underscores, non-ASCII, an empty member, more than 18
digits) to `fastssl.data.header.parse_label`, whose verdict and message stay the only ones users see.
`parse_labels_reference` is the same rule in plain Python, for tests.
"""

from __future__ import annotations

import numba
import numpy as np

_MAX_DIGITS = 18  # below 2**63: no overflow


@numba.njit(inline="always")
def _space(c: int) -> bool:
    return c == 0x20 or 0x09 <= c <= 0x0D or 0x1C <= c <= 0x1F  # what str.strip() removes, in ASCII


@numba.njit(cache=True, nogil=True)
def parse_labels(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64, parsed bool): the decimal number in each `buf[starts[i]:starts[i] + lengths[i]]`,
    parsed False (label -1) where the member is not plain digits between optional whitespace."""
    n = len(starts)
    labels = np.full(n, -1, np.int64)
    parsed = np.zeros(n, np.bool_)
    for i in range(n):
        at, end = starts[i], starts[i] + lengths[i]
        while at < end and _space(buf[at]):
            at += 1
        while end > at and _space(buf[end - 1]):
            end -= 1
        if end == at or end - at > _MAX_DIGITS:
            continue
        value = 0
        good = True
        for k in range(at, end):
            c = buf[k]
            if c < 0x30 or c > 0x39:
                good = False
                break
            value = value * 10 + (c - 0x30)
        if good:
            labels[i], parsed[i] = value, True
    return labels, parsed


def parse_labels_reference(data: bytes) -> int | None:
    """`parse_labels` for one member: the label, or None where the kernel leaves it to parse_label."""
    text = data.strip(b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")
    if not text or len(text) > _MAX_DIGITS or not all(0x30 <= c <= 0x39 for c in text):
        return None
    return int(text)
