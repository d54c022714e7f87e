"""The reference contestants of `fastssl bench`: a torch DataLoader with PIL transforms, and PIL decode.

The baseline is written the way users write it (MoCo's and SimCLR's PyTorch reference code): a
map-style dataset decoding with PIL, then the recipe's transforms one PIL operation at a time —
RandomResizedCrop, flip, ColorJitter in random order (PIL ImageEnhance, hue through PIL's HSV mode
as torchvision's PIL path does), RandomGrayscale, PIL's GaussianBlur (MoCo's `GaussianBlur`
class), solarize, ToTensor and Normalize — fed by worker processes. torchvision's own transforms
are used when torchvision imports (its PyPI wheel is a CUDA build and does not load on CPU-only
torch). The floor is PIL's full decode alone, with the same number of processes.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from fastssl.data.manifest import Manifest
from fastssl.data.plan import locate
from fastssl.data.source import ByteSource
from fastssl.recipes import Recipe, ViewSpec


def _torchvision_transforms(recipe: Recipe):  # noqa: ANN202 - torchvision types are optional
    """The recipe as torchvision transforms, or None when torchvision does not import."""
    try:
        from torchvision import transforms as T
    except Exception:  # noqa: BLE001 - a CUDA-only wheel fails in many ways on CPU-only torch
        return None
    views = []
    for spec in recipe.views():
        ops = [
            T.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio),
            T.RandomHorizontalFlip(spec.p_flip),
        ]
        if spec.p_jitter:
            ops.append(T.RandomApply([T.ColorJitter(*spec.jitter)], p=spec.p_jitter))
        if spec.p_gray:
            ops.append(T.RandomGrayscale(spec.p_gray))
        if spec.p_blur:
            ops.append(T.RandomApply([_PilBlur(spec.blur_sigma)], p=spec.p_blur))
        if spec.p_solarize:
            ops.append(T.RandomSolarize(int(spec.solarize_threshold * 255), p=spec.p_solarize))
        ops += [T.ToTensor(), T.Normalize(recipe.mean, recipe.std)]
        views.append(T.Compose(ops))
    return views


class _PilBlur:
    """MoCo's GaussianBlur: PIL's filter with a radius drawn from sigma's range."""

    def __init__(self, sigma: tuple[float, float]) -> None:
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def _random_resized_crop(image: Image.Image, spec: ViewSpec) -> Image.Image:
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * random.uniform(*spec.scale)
        aspect = math.exp(random.uniform(math.log(spec.ratio[0]), math.log(spec.ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = random.randint(0, height - h), random.randint(0, width - w)
            break
    else:
        w, h = width, height
        top, left = 0, 0
    return image.resize((spec.size, spec.size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))


def _hue(image: Image.Image, shift: float) -> Image.Image:
    """torchvision's PIL adjust_hue: shift the H channel of PIL's HSV mode with uint8 wrap-around."""
    h, s, v = image.convert("HSV").split()
    h = Image.fromarray(
        (np.asarray(h, dtype=np.uint8) + np.uint8(int(shift * 255) % 256)).astype(np.uint8), "L"
    )
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def _pil_view(image: Image.Image, spec: ViewSpec, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    image = _random_resized_crop(image, spec)
    if random.random() < spec.p_flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if random.random() < spec.p_jitter:
        b, c, s, h = spec.jitter
        ops = [
            lambda im: ImageEnhance.Brightness(im).enhance(random.uniform(max(0, 1 - b), 1 + b)),
            lambda im: ImageEnhance.Contrast(im).enhance(random.uniform(max(0, 1 - c), 1 + c)),
            lambda im: ImageEnhance.Color(im).enhance(random.uniform(max(0, 1 - s), 1 + s)),
            lambda im: _hue(im, random.uniform(-h, h)),
        ]
        random.shuffle(ops)
        for op in ops:
            image = op(image)
    if random.random() < spec.p_gray:
        image = image.convert("L").convert("RGB")
    if random.random() < spec.p_blur:
        image = _PilBlur(spec.blur_sigma)(image)
    if random.random() < spec.p_solarize:
        image = ImageOps.solarize(image, int(spec.solarize_threshold * 255))
    if spec.rotation:
        image = image.rotate(90 * spec.rotation, expand=True)
    tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    return (tensor - mean[:, None, None]) / std[:, None, None]  # ToTensor + Normalize


class _Samples(torch.utils.data.Dataset):
    """Sample i of the manifest as PIL-decoded RGB, read through the shard index."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.sizes = manifest.shard_sizes
        self.source = ByteSource(manifest)

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def decode(self, index: int) -> Image.Image:
        shard, sample = locate(self.sizes, np.array([index]))
        data = self.source.read(int(shard[0]), int(sample[0]), ("jpg",)).members["jpg"]
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")


class RecipeViews:
    """The baseline's transforms: a decoded PIL image to the recipe's views as normalised float
    tensors, by torchvision when it imports, else by the PIL operations above (picklable, for
    worker processes; the WebDataset contestant uses the same)."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.torchvision = _torchvision_transforms(recipe)
        self.mean, self.std = torch.tensor(recipe.mean), torch.tensor(recipe.std)

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        if self.torchvision is not None:
            return [t(image) for t in self.torchvision]
        return [_pil_view(image, spec, self.mean, self.std) for spec in self.recipe.views()]


class PilRecipeDataset(_Samples):
    """Each item: the recipe's views of one sample as normalised float tensors (the baseline)."""

    def __init__(self, manifest: Manifest, recipe: Recipe) -> None:
        super().__init__(manifest)
        self.views = RecipeViews(recipe)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        return self.views(self.decode(index))


class DecodeOnlyDataset(_Samples):
    """Each item: the decoded image's size only, so that the floor times decoding and nothing else."""

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.decode(index)
        return torch.tensor(image.size)


def baseline_uses_torchvision(recipe: Recipe) -> bool:
    """Whether the baseline runs torchvision's transforms (True) or their PIL equivalents (False)."""
    return _torchvision_transforms(recipe) is not None
