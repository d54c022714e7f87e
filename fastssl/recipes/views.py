"""Whole-image view recipes (SimCLR, MoCo v2, BYOL, multi-crop, rotation, crop) and their base classes.

A recipe is data. It says what each view is (crop, flip, colour jitter, grayscale, blur, solarize,
rotation, output size, normalisation) and nothing about how to compute it; every backend in
`fastssl.pipelines` compiles the same recipe, and `fastssl.host.params` samples its random parameters.

One naming scheme runs across recipes: `size`, `scale`, `ratio`, `p_flip`, `jitter` (brightness,
contrast, saturation, hue), `p_jitter`, `p_gray`, `p_blur`, `blur_sigma`, `p_solarize`, `mean`, `std`.
Options on every recipe: `dtype` ("float32", "bfloat16" or "uint8"; uint8 skips normalisation),
`share` (parameter groups every view takes from view 0, e.g. `share=("crop",)`), and
`return_params` (each view's sampled parameters come back in the batch as tensors).

Semantics follow torchvision's transforms as the papers' code uses them: the crop is
RandomResizedCrop's (area fraction `scale` of the image, aspect ratio log-uniform in `ratio`, ten
tries, then a centre crop), colour jitter draws brightness/contrast/saturation factors uniformly in
[1 - j, 1 + j] and a hue shift in [-j, j] (fraction of a turn) and applies them in a random order,
grayscale is ITU-R 601 luma copied to three channels, solarize inverts values at or above the
threshold. Documented approximations of the backends are in `fastssl.pipelines.colour`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DTYPES = ("float32", "bfloat16", "uint8")
SHAREABLE = ("crop", "flip", "jitter", "gray", "blur", "solarize")
Dtype = Literal["float32", "bfloat16", "uint8"]


@dataclass(frozen=True)
class ViewSpec:
    """One view, fully resolved: what a backend compiles. Recipes produce these from their fields."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop: Literal["random_resized", "resize_random", "resize_center"] = "random_resized"
    resize: int = 256  # "resize_*" only: shorter side resized to this, then a random / centre `size` crop
    p_flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    p_jitter: float = 0.0
    p_gray: float = 0.0
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    p_solarize: float = 0.0
    solarize_threshold: float = 0.5
    rotation: int = 0  # quarter turns counter-clockwise, fixed for the view

    def __post_init__(self) -> None:
        _check_positive_int("size", self.size)
        _check_range("scale", self.scale, low=0.0, high=1.0, open_low=True)
        _check_range("ratio", self.ratio, low=0.0, high=float("inf"), open_low=True)
        if self.crop not in ("random_resized", "resize_random", "resize_center"):
            raise ValueError(
                f"crop must be 'random_resized', 'resize_random' or 'resize_center', got {self.crop!r}"
            )
        if self.crop != "random_resized" and self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) must be at least size ({self.size})")
        for name in ("p_flip", "p_jitter", "p_gray", "p_blur", "p_solarize", "solarize_threshold"):
            _check_probability(name, getattr(self, name))
        if len(self.jitter) != 4 or any(j < 0 for j in self.jitter):
            raise ValueError(f"jitter must be 4 non-negative numbers, got {self.jitter!r}")
        if self.jitter[3] > 0.5:
            raise ValueError(f"hue jitter must be at most 0.5 (half a turn), got {self.jitter[3]}")
        _check_range("blur_sigma", self.blur_sigma, low=0.0, high=float("inf"), open_low=True)
        if self.rotation not in (0, 1, 2, 3):
            raise ValueError(f"rotation is a number of quarter turns 0..3, got {self.rotation!r}")

    @property
    def solarize_level(self) -> int:
        """The uint8 value at and above which solarize inverts: values >= threshold * 255."""
        return math.ceil(self.solarize_threshold * 255 - 1e-9)


@dataclass(frozen=True)
class Recipe:
    """Options common to every recipe; subclasses add the augmentation fields and `views()`."""

    name: ClassVar[str] = "recipe"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    dtype: Dtype = "float32"
    share: tuple[str, ...] = ()
    return_params: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError(f"mean and std need 3 values each, std positive; got {self.mean}, {self.std}")
        unknown = sorted(set(self.share) - set(SHAREABLE))
        if unknown:
            raise ValueError(f"cannot share {unknown}; shareable parameter groups are {SHAREABLE}")
        self.views()  # validates every view spec now rather than at the first batch

    def views(self) -> tuple[ViewSpec, ...]:
        raise NotImplementedError

    def replace(self, **changes: object) -> Recipe:
        """A copy with some fields changed (the recipe itself is frozen); a field it does not have
        is a ValueError naming the fields it has."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"recipe {self.name!r} has no option {', '.join(unknown)}; "
                f"its options: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self, **changes)

    def resized(self, size: int) -> Recipe:
        """The recipe with its views made at `size` px (`fastssl pretrain --size`)."""
        return self.replace(size=size)

    @property
    def num_views(self) -> int:
        return len(self.views())

    def graph_views(self) -> tuple[ViewSpec, ...]:
        """The views as the backends' graphs compute them: `views()`, except where a later stage
        takes an op over (patch recipes apply grayscale to their tiles)."""
        return self.views()

    @property
    def batch_params(self) -> bool:
        """Whether the batch carries something taken from the sampled parameters (`params` with
        `return_params`; Rotation's labels): backends that build batches elsewhere send them."""
        return self.return_params

    @property
    def view_dtype(self) -> Dtype:
        """What the backends' view graphs emit: the recipe's dtype, or uint8 for recipes that cut
        patches from the views afterwards (`fastssl.recipes.patches`)."""
        return self.dtype

    def _view(self, **overrides: object) -> ViewSpec:
        """A ViewSpec from this recipe's fields of the same names, with `overrides` on top."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(ViewSpec) if hasattr(self, f.name)}
        return ViewSpec(**{**own, **overrides})


@dataclass(frozen=True)
class StagedRecipe(Recipe):
    """A recipe whose graph makes one uint8 base view that a stage after the graph, on the loader's
    device, turns into the task's views and targets: the patch grids (`fastssl.recipes.patches`)
    and the data-prediction pretexts (`fastssl.recipes.prediction`). Both view backends feed the
    same stage, so every backend gives the same layout."""

    name: ClassVar[str] = "staged"

    @property
    def view_dtype(self) -> Dtype:
        return "uint8"  # the stage normalises what it cuts or computes, not the base view


@dataclass(frozen=True)
class TwoViewRecipe(Recipe):
    """Two views drawn from the same distribution (SimCLR, MoCo v2)."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    p_jitter: float = 0.8
    p_gray: float = 0.2
    p_blur: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    p_solarize: float = 0.0

    def views(self) -> tuple[ViewSpec, ...]:
        spec = self._view()
        return (spec, spec)


@dataclass(frozen=True)
class SimCLR(TwoViewRecipe):
    """SimCLR's views (Chen et al. 2020, "A Simple Framework for Contrastive Learning", appendix A).

    Defaults: random resized crop with area (0.08, 1) and ratio (3/4, 4/3) [A.1]; horizontal flip 0.5;
    colour distortion of strength s = 1.0, i.e. jitter (0.8s, 0.8s, 0.8s, 0.2s) applied with p 0.8,
    then grayscale with p 0.2 [A.1, listing 1]; Gaussian blur with p 0.5, sigma uniform in (0.1, 2.0),
    kernel 10% of the image side [A.1]. The blur here spans 3 sigma instead of a fixed 23 taps: the
    taps beyond 3 sigma carry under 0.3% of the weight.
    """

    name: ClassVar[str] = "simclr"


@dataclass(frozen=True)
class MoCoV2(TwoViewRecipe):
    """MoCo v2's views (Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning").

    Defaults from the paper's augmentation and its reference `main_moco.py --aug-plus`: crop area
    (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, Gaussian blur p 0.5 with sigma
    (0.1, 2.0), flip 0.5.
    """

    name: ClassVar[str] = "mocov2"
    scale: tuple[float, float] = (0.2, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)


@dataclass(frozen=True)
class BYOL(Recipe):
    """BYOL's asymmetric views (Grill et al. 2020, "Bootstrap Your Own Latent", table 6); MoCo v3
    (Chen et al. 2021) uses the same recipe.

    Defaults: crop area (0.08, 1), flip 0.5, jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2;
    blur p (1.0, 0.1) and solarize p (0.0, 0.2) for views 1 and 2; solarize threshold 0.5.
    """

    name: ClassVar[str] = "byol"
    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    p_jitter: float = 0.8
    p_gray: float = 0.2
    p_blur: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    p_solarize: tuple[float, float] = (0.0, 0.2)

    def views(self) -> tuple[ViewSpec, ...]:
        if len(self.p_blur) != 2 or len(self.p_solarize) != 2:
            raise ValueError("BYOL's p_blur and p_solarize give one probability per view (two each)")
        return tuple(self._view(p_blur=self.p_blur[i], p_solarize=self.p_solarize[i]) for i in range(2))


@dataclass(frozen=True)
class MultiCrop(Recipe):
    """Multi-crop (Caron et al. 2020, SwAV, section 3.1; DINO 2021 uses the same crop ranges).

    Defaults: 2 global crops at 224 with area (0.14, 1) and `n_local` = 6 local crops at 96 with area
    (0.05, 0.14) [DINO's defaults]. Colour ops come from `base`: global crop i takes base view
    i mod n (so a BYOL base gives DINO's asymmetric pair), local crops take base view 0's colour ops
    with `local_p_blur` (0.5, as DINO's local crops).
    """

    name: ClassVar[str] = "multicrop"
    size: tuple[int, int] = (224, 96)
    scale: tuple[tuple[float, float], tuple[float, float]] = ((0.14, 1.0), (0.05, 0.14))
    n_global: int = 2
    n_local: int = 6
    local_p_blur: float = 0.5
    base: Recipe = field(default_factory=lambda: SimCLR())

    def replace(self, **changes: object) -> Recipe:
        """As `Recipe.replace`; `global_size` and `local_size` set one of `size`'s two values,
        `base` may be a recipe's registry name ("byol"), and `base_FIELD` sets the base recipe's
        FIELD (`base_jitter=(0.4, 0.4, 0.0, 0.0)`), so that every option is a plain value the
        command line and a run's config.json can hold."""
        sizes = {k: changes.pop(k) for k in ("global_size", "local_size") if k in changes}
        if sizes:
            size = tuple(changes.get("size", self.size))
            changes["size"] = (sizes.get("global_size", size[0]), sizes.get("local_size", size[1]))
        base = changes.get("base", self.base)
        if isinstance(base, str):
            from fastssl.recipes import get_recipe  # the registry imports this module

            base = get_recipe(base)
        base_changes = {k[len("base_") :]: changes.pop(k) for k in list(changes) if k.startswith("base_")}
        overridden = sorted({"size", "scale"} & set(base_changes))
        if overridden:
            raise ValueError(
                f"multicrop sets its crops' {', '.join(overridden)} itself; use {overridden[0]}=..."
            )
        if base_changes:
            base = base.replace(**base_changes)
        if base is not self.base:
            changes["base"] = base
        return super().replace(**changes)

    def resized(self, size: int) -> Recipe:
        """Global crops at `size` px, local crops at the same fraction of it as before (96 of 224:
        `MultiCrop().resized(64)` makes 64 px global and 27 px local crops)."""
        return self.replace(size=(size, max(1, round(size * self.size[1] / self.size[0]))))

    def views(self) -> tuple[ViewSpec, ...]:
        if self.n_global < 1 or self.n_local < 0:
            raise ValueError(f"need n_global >= 1 and n_local >= 0, got {self.n_global}, {self.n_local}")
        if len(self.size) != 2 or len(self.scale) != 2:
            raise ValueError("MultiCrop's size and scale give (global, local) values")
        base = self.base.views()
        globals_ = [
            dataclasses.replace(base[i % len(base)], size=self.size[0], scale=tuple(self.scale[0]))
            for i in range(self.n_global)
        ]
        locals_ = [
            dataclasses.replace(
                base[0], size=self.size[1], scale=tuple(self.scale[1]), p_blur=self.local_p_blur
            )
        ] * self.n_local
        return tuple(globals_ + locals_)


@dataclass(frozen=True)
class Rotation(Recipe):
    """RotNet's views (Gidaris et al. 2018, "Unsupervised Representation Learning by Predicting
    Image Rotations"): each image in all four rotations 0/90/180/270 degrees, labelled 0..3.

    Defaults follow the paper's ImageNet code: shorter side resized to 256, a random 224 crop and a
    horizontal flip, shared by the four rotated copies (`share=("crop", "flip")`); no colour ops.
    The batch carries `rotation`, a (B, 4) tensor whose column k is the label of view k.
    """

    name: ClassVar[str] = "rotation"
    size: int = 224
    resize: int = 256
    p_flip: float = 0.5
    share: tuple[str, ...] = ("crop", "flip")

    def views(self) -> tuple[ViewSpec, ...]:
        spec = self._view(crop="resize_random")
        return tuple(dataclasses.replace(spec, rotation=k) for k in range(4))

    def resized(self, size: int) -> Recipe:
        """Crops of `size` px out of images resized by the same ratio as before (256 for 224)."""
        return self.replace(size=size, resize=max(size, round(size * self.resize / self.size)))

    @property
    def batch_params(self) -> bool:
        return True  # the `rotation` labels are the views' parameters


@dataclass(frozen=True)
class Center(Recipe):
    """One view for evaluation: shorter side resized to `resize`, the centre `size` crop, no flip
    (the standard ImageNet evaluation transform, 256 -> 224); deterministic unless given colour
    distortion (`jitter` applied with `p_jitter`, grayscale with `p_gray`), for evaluating how
    features hold up when colour no longer tells images apart."""

    name: ClassVar[str] = "center"
    size: int = 224
    resize: int = 256
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    p_jitter: float = 0.0
    p_gray: float = 0.0

    def views(self) -> tuple[ViewSpec, ...]:
        return (self._view(crop="resize_center", p_flip=0.0),)


@dataclass(frozen=True)
class Crop(Recipe):
    """One view: random resized crop, flip and normalisation only (torchvision's ImageNet training
    transform, and the pipeline FFCV's ImageNet benchmark times). A baseline for loader speed."""

    name: ClassVar[str] = "crop"
    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_flip: float = 0.5

    def views(self) -> tuple[ViewSpec, ...]:
        return (self._view(),)


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def _check_range(name: str, pair: tuple[float, float], *, low: float, high: float, open_low: bool) -> None:
    if len(pair) != 2 or not pair[0] <= pair[1]:
        raise ValueError(f"{name} must be an ordered pair (lo, hi), got {pair!r}")
    if (pair[0] <= low if open_low else pair[0] < low) or pair[1] > high:
        raise ValueError(f"{name} {pair!r} must lie in ({low}, {high}]")
