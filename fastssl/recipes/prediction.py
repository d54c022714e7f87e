"""Data-prediction pretext recipes: colorization (Zhang, Isola & Efros 2016), inpainting (context
encoders, Pathak et al. 2016) and super-resolution pairs (SRGAN / EDSR style).

Each is one uint8 base view from the view backends (crop and flip only) and a prediction stage
after the graph (`fastssl.pipelines.prediction_views`) that computes the input and its target from
it in torch on the loader's device: Lab lightness and ab, a masked image and its hole, a bicubic
reduction and its original. Input and target come from the same pixels, so they share every crop
and flip by construction, on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from fastssl.recipes.views import Recipe, StagedRecipe, ViewSpec

MaskKind = Literal["central", "blocks", "noise"]
MASKS = ("central", "blocks", "noise")


@dataclass(frozen=True)
class PredictionRecipe(StagedRecipe):
    """A base view (shorter side resized to `resize`, a random `size` crop, flipped with `p_flip`)
    that the prediction stage turns into an input and a target. Float outputs only (targets are
    pixel values): `dtype` is float32 or bfloat16."""

    name: ClassVar[str] = "prediction"
    size: int = 224
    resize: int = 256
    crop: Literal["random_resized", "resize_random"] = "resize_random"
    scale: tuple[float, float] = (0.08, 1.0)
    p_flip: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype == "uint8":
            raise ValueError(f"{self.name} emits float inputs and targets; dtype must be float32 or bfloat16")

    def views(self) -> tuple[ViewSpec, ...]:
        return (self._view(p_gray=0.0),)

    def resized(self, size: int) -> Recipe:
        """Crops of `size` px out of images resized by the same ratio as before."""
        return self.replace(size=size, resize=max(size, round(size * self.resize / self.size)))


@dataclass(frozen=True)
class Colorization(PredictionRecipe):
    """Colorization (Zhang, Isola & Efros 2016, "Colorful Image Colorization", section 2; their
    `colorization_train_val_v2.prototxt`): shorter side resized to 256, a random 176 crop, mirrored
    with p 0.5. Batches carry `views` = [L - 50] (B, 1, H, W), CIE L* in [0, 100] centred as their
    network takes it; `ab` (B, 2, H / 4, W / 4), the a*b* target at every `factor`-th pixel as
    their stride-4 layer takes it; and `colourful` (B,), False for images whose target has no
    |a| or |b| above 5 (their NonGrayMaskLayer: grayscale images carry zero weight).

    Lab is sRGB (D65) by Kornia's `rgb_to_lab`, the same formula as scikit-image's `rgb2lab`
    their code calls, computed after either backend's graph on the same uint8 view.
    """

    name: ClassVar[str] = "colorization"
    size: int = 176
    resize: int = 256
    factor: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor < 1 or self.size % self.factor:
            raise ValueError(f"size ({self.size}) must be a multiple of factor ({self.factor})")


@dataclass(frozen=True)
class Inpainting(PredictionRecipe):
    """Inpainting (Pathak et al. 2016, "Context Encoders", section 3; `pathak22/context-encoder`
    train.lua and train_random.lua): shorter side resized to 350, a random 128 crop, mirrored with
    p 0.5; holes filled with the data set's mean colour (`fill`, default the recipe's `mean`: 0
    after normalisation).

    `mask`: "central": the central `hole` fraction (half: 64 x 64 of 128) shrunk by `overlap`
    (4 px) on each side; the L2 weight is 1 in the hole and `border_weight` (10) on the overlap
    band around it, 0 elsewhere (their overlapL2Weight). "blocks": `n_blocks` (4) squares of side
    uniform in `block_side` (1/8 to 1/4 of the crop) at uniform positions, possibly overlapping
    (at most a quarter of the image, the paper's section 3.3). "noise": windows of a fixed pattern
    of uniform noise at `noise_resolution` (0.06) of its side, bicubic-upsampled and thresholded at
    `noise_density` (0.25), the first of `noise_tries` random windows whose masked share lies in
    `coverage` (20-30%; the closest one when none does), as their train_random.lua. Random masks
    weigh the whole image's L2 by 1, as that script does.

    Batches carry `views` = [masked] (B, 3, H, W) normalised; `target` (B, 3, H, W) normalised;
    `mask` (B, 1, H, W) bool, True in the hole; `weight` (B, 1, H, W), the L2 weights.
    """

    name: ClassVar[str] = "inpainting"
    size: int = 128
    resize: int = 350
    mask: MaskKind = "central"
    hole: float = 0.5
    overlap: int = 4
    border_weight: float = 10.0
    n_blocks: int = 4
    block_side: tuple[float, float] = (0.125, 0.25)
    noise_resolution: float = 0.06
    noise_density: float = 0.25
    coverage: tuple[float, float] = (0.2, 0.3)
    noise_tries: int = 32
    noise_seed: int = 0
    fill: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {self.mask!r}")
        side = self.central_side()
        if self.mask == "central" and side - 2 * self.overlap < 1:
            raise ValueError(
                f"a central {side} px region with a {self.overlap} px overlap leaves no hole; "
                "lower overlap or raise hole"
            )
        if not 0 < self.hole < 1 or self.overlap < 0 or self.border_weight < 0:
            raise ValueError("need 0 < hole < 1, overlap >= 0 and border_weight >= 0")
        lo, hi = self.block_side
        if self.n_blocks < 1 or not 0 < lo <= hi <= 1:
            raise ValueError(
                f"need n_blocks >= 1 and 0 < block_side[0] <= block_side[1] <= 1, got {self.block_side}"
            )
        if not 0 < self.noise_resolution <= 1 or not 0 < self.noise_density < 1:
            raise ValueError("noise_resolution must lie in (0, 1] and noise_density in (0, 1)")
        if not 0 <= self.coverage[0] <= self.coverage[1] <= 1 or self.noise_tries < 1:
            raise ValueError(
                f"coverage must be an ordered pair in [0, 1] and noise_tries >= 1, got {self.coverage}"
            )
        if self.fill is not None and len(self.fill) != 3:
            raise ValueError(f"fill is one value per channel in [0, 1], got {self.fill!r}")

    def central_side(self) -> int:
        """Side of the central region the "central" mask covers, overlap band included."""
        return max(1, round(self.size * self.hole))

    def fill_colour(self) -> tuple[float, float, float]:
        """What the hole holds, per channel in [0, 1]."""
        return self.fill if self.fill is not None else self.mean


@dataclass(frozen=True)
class SuperResolution(PredictionRecipe):
    """Super-resolution pairs (Ledig et al. 2017, SRGAN section 3.2; Lim et al. 2017, EDSR):
    shorter side resized to 256, a random 96 crop (SRGAN's HR patch), mirrored with p 0.5, and its
    x`factor` (4) reduction. The one bicubic: torch's `interpolate(mode="bicubic", antialias=True)`
    (Keys a = -0.5 widened by the factor when reducing, as PIL's and MATLAB's `imresize`), the same
    call that upsamples the bicubic baseline. Batches carry `views` = [lr] (B, 3, H / 4, W / 4)
    normalised with `mean` / `std`, and `hr` (B, 3, H, W) in [0, 1], the PSNR target.
    """

    name: ClassVar[str] = "superres"
    size: int = 96
    resize: int = 256
    factor: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor < 2 or self.size % self.factor:
            raise ValueError(f"size ({self.size}) must be a multiple of factor ({self.factor}), factor >= 2")
