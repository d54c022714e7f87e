"""Make bad input files of known kinds, for the demo's reject report and for tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

_SOF_MARKERS = (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2")


def small_jpeg(width: int = 64, height: int = 48, seed: int = 0, mode: str = "RGB") -> bytes:
    """A valid JPEG of smooth random colour, for fixtures."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(base, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.convert(mode).save(out, format="JPEG", quality=90)
    return out.getvalue()


def forge_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header of a JPEG to claim `width` x `height`, as a decompression bomb does:
    the header promises a huge image, and only a pixel limit checked before decoding stops it."""
    for marker in _SOF_MARKERS:
        at = jpeg.find(marker)
        if at >= 0:
            head = jpeg[: at + 5]
            size = height.to_bytes(2, "big") + width.to_bytes(2, "big")
            return head + size + jpeg[at + 9 :]
    raise ValueError("no JPEG frame header (SOF0/1/2) found")


def plant_bad_files(folder: str | Path) -> dict[str, str]:
    """Write one file of each bad kind into `folder`; returns {file name: reject kind expected}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = small_jpeg(seed=1)
    files = {
        "planted_empty.jpg": (b"", "empty"),
        "planted_text.jpg": (b"this is not an image\n" * 20, "not_image"),
        "planted_truncated.jpg": (good[: len(good) // 2], "truncated"),
        "planted_bomb.jpg": (forge_jpeg_size(good, 9000, 9000), "too_many_pixels"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    expected = {name: kind for name, (_, kind) in files.items()}
    dangling = folder / "planted_unreadable.jpg"
    dangling.unlink(missing_ok=True)
    dangling.symlink_to(folder / "does-not-exist.jpg")
    expected[dangling.name] = "unreadable"
    return expected
