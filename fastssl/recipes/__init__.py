"""View recipes: frozen descriptions of the views a method needs, with the published defaults.

`fastssl.recipes.views` holds the whole-image recipes (SimCLR, MoCo v2, BYOL, multi-crop, rotation,
crop), `fastssl.recipes.patches` the patch-grid pretext recipes (jigsaw, Jigsaw++, context
prediction, CPC patch grid), `fastssl.recipes.prediction` the data-prediction pretexts
(colorization, inpainting, super-resolution). Every recipe is registered here by name, for the CLI
and the docs.
"""

from __future__ import annotations

from fastssl.recipes.patches import (
    ContextPrediction,
    Jigsaw,
    JigsawPP,
    PatchGrid,
    PatchRecipe,
    PatchSpec,
)
from fastssl.recipes.prediction import Colorization, Inpainting, PredictionRecipe, SuperResolution
from fastssl.recipes.views import (
    BYOL,
    DTYPES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SHAREABLE,
    Center,
    Crop,
    MoCoV2,
    MultiCrop,
    Recipe,
    Rotation,
    SimCLR,
    StagedRecipe,
    TwoViewRecipe,
    ViewSpec,
)

RECIPES: dict[str, type[Recipe]] = {
    r.name: r
    for r in (
        SimCLR,
        MoCoV2,
        BYOL,
        MultiCrop,
        Rotation,
        Crop,
        Center,
        Jigsaw,
        JigsawPP,
        ContextPrediction,
        PatchGrid,
        Colorization,
        Inpainting,
        SuperResolution,
    )
}

__all__ = [
    "BYOL", "Center", "Colorization", "ContextPrediction", "Crop", "DTYPES", "IMAGENET_MEAN",
    "IMAGENET_STD", "Inpainting", "Jigsaw", "JigsawPP", "MoCoV2", "MultiCrop", "PatchGrid",
    "PatchRecipe", "PatchSpec", "PredictionRecipe", "RECIPES", "Recipe", "Rotation", "SHAREABLE",
    "SimCLR", "StagedRecipe", "SuperResolution", "TwoViewRecipe", "ViewSpec", "get_recipe",
]  # fmt: skip


def get_recipe(name: str | Recipe, **overrides: object) -> Recipe:
    """A recipe by registry name (see `RECIPES`) or as given, with `overrides` applied."""
    if isinstance(name, Recipe):
        return name.replace(**overrides) if overrides else name
    try:
        return RECIPES[name.lower()](**overrides)
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None
