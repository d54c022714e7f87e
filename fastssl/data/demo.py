"""Build an ImageNet-like demo corpus from real photographs that ship inside installed packages.

Each image is a random crop (varied aspect) of one source photo, taken near native resolution and
rescaled so that its shorter side is 300-500 px, lightly colour-shifted, flipped, given a little
sensor grain and saved as JPEG at quality 85-95. The source photo is the label; the result is an
ImageFolder tree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

GRAYSCALE_SHARE = 0.02


@dataclass(frozen=True)
class SourcePhoto:
    """A photograph shipped by a package: its label and how to load it (as an RGB PIL image)."""

    name: str
    load: Callable[[], Image.Image]


def _package_file(module: str, *parts: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        package = __import__(module, fromlist=["__file__"])
        with Image.open(Path(package.__file__).parent.joinpath(*parts)) as image:
            return image.convert("RGB")

    return load


def _grace_hopper() -> Image.Image:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        return image.convert("RGB")


def source_photos() -> list[SourcePhoto]:
    """The photographs available offline (scikit-image, scikit-learn, matplotlib; see DATA.md)."""
    skimage = [
        "astronaut.png",
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "motorcycle_right.png",
        "hubble_deep_field.jpg",
        "camera.png",
        "moon.png",
        "brick.png",
        "grass.png",
        "gravel.png",
        "coins.png",
    ]
    photos = [SourcePhoto(f.split(".")[0], _package_file("skimage.data", f)) for f in skimage]
    photos += [
        SourcePhoto(f.split(".")[0], _package_file("sklearn.datasets", "images", f))
        for f in ("china.jpg", "flower.jpg")
    ]
    photos.append(SourcePhoto("grace_hopper", _grace_hopper))
    return photos


@dataclass
class DemoCorpus:
    """What `build_demo_corpus` wrote: the ImageFolder root and per-image sizes."""

    root: Path
    classes: list[str]
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    file_bytes: list[int] = field(default_factory=list)

    def summary(self) -> str:
        n = len(self.file_bytes)
        return (
            f"{n} JPEGs in {len(self.classes)} classes under {self.root}: mean "
            f"{np.mean(self.widths):.0f}x{np.mean(self.heights):.0f} px, "
            f"{np.mean(self.file_bytes) / 1e3:.0f} KB (min {min(self.file_bytes) / 1e3:.0f}, "
            f"max {max(self.file_bytes) / 1e3:.0f})"
        )


# Shorter sides of the demo corpus (300-500 px, mean about 340: 70-80 KB files) and of the
# ImageNet-like one the GPU benchmarks use (uniform 350-500 px: about 110 KB, as ImageNet's mean).
DEMO_SIDES = (300, 500, 4.0)
IMAGENET_SIDES = (350, 500, 1.0)


def _random_crop(
    rng: np.random.Generator, image: Image.Image, sides: tuple[float, float, float] = DEMO_SIDES
) -> Image.Image:
    """A crop of varied aspect, resampled to a shorter side in [sides[0], sides[1]] px, drawn
    from low + (high - low) * Beta(1, sides[2]).

    The crop is taken near the photo's native resolution (zoom 0.8-1.25, more only when the photo
    is too small) so that the result keeps real detail instead of upscaling blur.
    """
    width, height = image.size
    aspect = rng.uniform(1.0, 1.5) if rng.random() < 0.75 else rng.uniform(2 / 3, 1.0)
    low, high, skew = sides
    short = low + (high - low) * rng.beta(1.0, skew)
    out_w, out_h = (short * aspect, short) if aspect >= 1 else (short, short / aspect)
    zoom = max(rng.uniform(0.8, 1.25), out_w / width, out_h / height)
    crop_w, crop_h = min(width, out_w / zoom), min(height, out_h / zoom)
    left = rng.uniform(0, width - crop_w)
    top = rng.uniform(0, height - crop_h)
    size = (round(out_w), round(out_h))
    return image.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))


def _colour_and_grain(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """Per-channel gain (this also tints the grayscale sources), an offset, sensor grain, a flip."""
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels * rng.uniform(0.92, 1.08, size=3) + rng.uniform(-10, 10)
    pixels += rng.normal(0.0, rng.uniform(4.0, 9.0), size=pixels.shape).astype(np.float32)
    out = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def _save_jpeg(rng: np.random.Generator, image: Image.Image, path: Path) -> None:
    """JPEG at quality 85-95, chroma 4:2:0 or 4:4:4 (both common in photo collections); about 2% of
    images become single-channel grayscale JPEGs, as a small share of ImageNet is."""
    if rng.random() < GRAYSCALE_SHARE:
        image = image.convert("L")
    image.save(path, format="JPEG", quality=int(rng.integers(85, 96)), subsampling=int(rng.choice([0, 2])))


def build_demo_corpus(
    out: str | os.PathLike,
    num_images: int = 2000,
    seed: int = 0,
    *,
    first: int = 0,
    sides: tuple[float, float, float] = DEMO_SIDES,
) -> DemoCorpus:
    """Write JPEGs number `first` .. `first + num_images - 1` into `out/<photo>/<photo>_<n>.jpg`;
    the same seed gives the same bytes (so several processes may each write a range).

    Classes are balanced (round-robin over the source photos). `sides` sets the shorter sides
    (`DEMO_SIDES`; `IMAGENET_SIDES` for ImageNet's file sizes).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    root = Path(out)
    photos = source_photos()
    loaded = [photo.load() for photo in photos]
    corpus = DemoCorpus(root, [p.name for p in photos])
    for photo in photos:
        (root / photo.name).mkdir(parents=True, exist_ok=True)
    for n in range(first, first + num_images):
        rng = np.random.default_rng([seed, n])
        k = n % len(photos)
        image = _colour_and_grain(rng, _random_crop(rng, loaded[k], sides))
        path = root / photos[k].name / f"{photos[k].name}_{n:06d}.jpg"
        _save_jpeg(rng, image, path)
        corpus.widths.append(image.width)
        corpus.heights.append(image.height)
        corpus.file_bytes.append(path.stat().st_size)
    return corpus
