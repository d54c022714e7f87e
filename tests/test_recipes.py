"""Recipes: published defaults, one naming scheme, validation, registry."""

from __future__ import annotations

import pytest

from fastssl.recipes import BYOL, RECIPES, MoCoV2, MultiCrop, Rotation, SimCLR, ViewSpec, get_recipe


def test_simclr_defaults_follow_the_paper() -> None:
    views = SimCLR().views()
    assert len(views) == 2 and views[0] == views[1]
    v = views[0]
    assert (v.size, v.scale, v.ratio, v.p_flip) == (224, (0.08, 1.0), (3 / 4, 4 / 3), 0.5)
    assert (v.jitter, v.p_jitter, v.p_gray) == ((0.8, 0.8, 0.8, 0.2), 0.8, 0.2)
    assert (v.p_blur, v.blur_sigma, v.p_solarize) == (0.5, (0.1, 2.0), 0.0)


def test_mocov2_and_byol_defaults() -> None:
    m = MoCoV2().views()[0]
    assert (m.scale, m.jitter, m.p_jitter, m.p_gray, m.p_blur) == (
        (0.2, 1.0),
        (0.4, 0.4, 0.4, 0.1),
        0.8,
        0.2,
        0.5,
    )
    one, two = BYOL().views()
    assert (one.p_blur, one.p_solarize, two.p_blur, two.p_solarize) == (1.0, 0.0, 0.1, 0.2)
    assert one.jitter == (0.4, 0.4, 0.2, 0.1) and one.solarize_threshold == 0.5


def test_multicrop_takes_colour_ops_from_its_base() -> None:
    views = MultiCrop(n_local=4, base=BYOL()).views()
    assert [v.size for v in views] == [224, 224, 96, 96, 96, 96]
    assert views[0].scale == (0.14, 1.0) and views[2].scale == (0.05, 0.14)
    assert views[1].p_solarize == 0.2 and views[0].p_solarize == 0.0  # BYOL's asymmetric pair
    assert all(v.p_blur == 0.5 for v in views[2:])


def test_rotation_gives_four_quarter_turns_sharing_crop_and_flip() -> None:
    recipe = Rotation()
    assert [v.rotation for v in recipe.views()] == [0, 1, 2, 3]
    assert set(recipe.share) == {"crop", "flip"}
    assert all(v.crop == "resize_random" and v.p_jitter == 0 for v in recipe.views())


def test_options_common_to_every_recipe() -> None:
    for cls in RECIPES.values():
        recipe = cls(dtype="bfloat16", share=("crop",), return_params=True, mean=(0.5,) * 3, std=(0.5,) * 3)
        assert recipe.dtype == "bfloat16" and recipe.return_params


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SimCLR(dtype="float64"), "dtype must be one of"),
        (lambda: SimCLR(share=("colour",)), "cannot share"),
        (lambda: SimCLR(scale=(0.5, 0.1)), "ordered pair"),
        (lambda: SimCLR(scale=(0.0, 1.0)), "must lie in"),
        (lambda: SimCLR(p_flip=1.5), "p_flip must lie in"),
        (lambda: SimCLR(jitter=(0.4, 0.4, 0.4)), "jitter must be 4"),
        (lambda: SimCLR(jitter=(0.4, 0.4, 0.4, 0.7)), "hue jitter"),
        (lambda: SimCLR(size=0), "size must be a positive integer"),
        (lambda: BYOL(p_blur=(1.0,)), "one probability per view"),
        (lambda: ViewSpec(rotation=4), "quarter turns"),
        (lambda: SimCLR(std=(0.2, 0.0, 0.2)), "std positive"),
    ],
)
def test_bad_recipes_are_refused_with_a_clear_message(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_registry_and_overrides() -> None:
    assert isinstance(get_recipe("SimCLR"), SimCLR)
    assert get_recipe("mocov2", size=96).views()[0].size == 96
    assert get_recipe(SimCLR(), p_gray=0.0).views()[0].p_gray == 0.0
    with pytest.raises(ValueError, match="unknown recipe 'swav'"):
        get_recipe("swav")
