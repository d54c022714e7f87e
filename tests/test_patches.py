"""Patch-grid recipes (Jigsaw, Jigsaw++, context prediction, CPC grid): their validation, the
statistics of their draws, and what the loader delivers on every backend, checked on images whose
3x3 cells are painted with levels that name the image and the cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from fastssl import SSLLoader
from fastssl.data.writer import write_shards
from fastssl.host.params import sample_params
from fastssl.host.patch_params import sample_patch_params
from fastssl.recipes import RECIPES, ContextPrediction, Jigsaw, JigsawPP, PatchGrid, PatchSpec, get_recipe
from fastssl.recipes.patches import NEIGHBOURS
from tests.shardsets import demo_shard_set

N = 4000
IMAGES = 6


def level(image: int, cell: int) -> int:
    """The gray level of cell `cell` of painted image `image`: 24 levels per cell, 4 per image."""
    return 12 + 24 * cell + 4 * image


def decode_level(value: float) -> tuple[int, int]:
    """(image, cell) from a tile's mean level."""
    step = int(round((value - 12) / 4))
    return step % 6, step // 6


@pytest.fixture(scope="module")
def painted_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("painted")
    folder = root / "images"
    folder.mkdir()
    edges = np.round(np.arange(4) * 256 / 3).astype(int)
    for j in range(IMAGES):
        pixels = np.zeros((256, 256), np.uint8)
        for k in range(9):
            r, c = divmod(k, 3)
            pixels[edges[r] : edges[r + 1], edges[c] : edges[c + 1]] = level(j, k)
        Image.fromarray(pixels).convert("RGB").save(folder / f"painted{j}.jpg", quality=100)
    write_shards(folder, root / "shards", shard_size=3, workers=1, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    return demo_shard_set(root, num_images=24, seed=5, shard_size=12)


def image_of(key: str) -> int:
    return int(key.split("painted")[1][0])


def _to_cpu(value):
    """A batch with every tensor, nested ones included, on the CPU."""
    if torch.is_tensor(value):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def batches(shards, recipe, backend, epochs=1, **kw):
    name, device = backend
    kw.setdefault("batch_size", IMAGES)
    out = []
    with SSLLoader(shards, recipe, backend=name, device=device, num_threads=1, **kw) as loader:
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            out += [_to_cpu(b) for b in loader]
    return out


# -- recipes ---------------------------------------------------------------------------------------
def test_recipes_are_registered_and_validate_their_grids(tmp_path):
    for name in ("jigsaw", "jigsawpp", "context", "patchgrid"):
        assert get_recipe(name).name == name and name in RECIPES
    with pytest.raises(ValueError, match="does not fit a 85 px cell"):
        PatchSpec(stride=85, tile=64, gap=30)
    with pytest.raises(ValueError, match="overlapping tiles"):
        PatchSpec(grid=(7, 7), stride=32, tile=64, gap=4)
    with pytest.raises(ValueError, match="does not fit a 200 px view"):
        Jigsaw(size=200)
    with pytest.raises(ValueError, match="does not fit"):
        Jigsaw(channel_shift=6)  # the 5 px margin cannot hold a 6 px channel shift
    with pytest.raises(ValueError, match="3x3 grid"):
        ContextPrediction(grid=(2, 2), stride=120, size=255)
    with pytest.raises(ValueError, match="max_replaced"):
        JigsawPP(max_replaced=9)
    four = tmp_path / "four.npy"
    np.save(four, np.array([[0, 1, 2, 3], [3, 2, 1, 0]]))
    with pytest.raises(ValueError, match="orders 4 tiles, the grid has 9"):
        Jigsaw(permutations=str(four))
    published = tmp_path / "published.npy"
    np.save(published, Jigsaw(n_permutations=30).permutation_table() + 1)  # 1-based, as published
    loaded = Jigsaw(permutations=str(published), n_permutations=30)
    np.testing.assert_array_equal(loaded.permutation_table(), Jigsaw(n_permutations=30).permutation_table())
    with pytest.raises(ValueError, match="holds 30 permutations; pass n_permutations=30"):
        Jigsaw(permutations=str(published))  # perm_index would run past the table
    assert Jigsaw().permutation_table().shape == (1000, 9)
    assert JigsawPP().permutation_table().shape == (701, 9)


# -- draws -----------------------------------------------------------------------------------------
def draws(recipe, valid=None):
    ids = np.arange(N) + 10_000
    sizes = dict(heights=np.full(N, 300), widths=np.full(N, 400))
    views = sample_params(recipe, seed=1, epoch=2, sample_ids=ids, **sizes)
    valid = np.ones(N, bool) if valid is None else valid
    patch = sample_patch_params(recipe, seed=1, epoch=2, sample_ids=ids, gray=views[0]["gray"], valid=valid)
    return views, patch


def uniform_p(values: np.ndarray, bins: int) -> float:
    return stats.chisquare(np.bincount(values, minlength=bins)).pvalue


def test_tiles_keep_their_gap_and_jitter_inside_the_cell():
    recipe = Jigsaw()
    spec = recipe.patches()
    _, patch = draws(recipe)
    offsets = patch["offsets"].astype(int)
    jitter = offsets - spec.origins(recipe.size)[None]
    assert jitter.min() == 0 and jitter.max() == spec.jitter == 11
    assert uniform_p(jitter.ravel(), spec.jitter + 1) > 1e-3
    grid = offsets.reshape(N, 3, 3, 2)
    horizontal_gap = grid[:, :, 1:, 1] - (grid[:, :, :-1, 1] + spec.tile)
    vertical_gap = grid[:, 1:, :, 0] - (grid[:, :-1, :, 0] + spec.tile)
    assert horizontal_gap.min() >= spec.gap and vertical_gap.min() >= spec.gap == 10
    cell_start = np.arange(3) * spec.stride
    assert np.all(grid[..., 0] >= cell_start[None, :, None]) and np.all(grid[..., 1] >= cell_start)
    assert np.all(grid[..., 0] + spec.tile <= cell_start[None, :, None] + spec.stride)
    assert np.all(grid[..., 1] + spec.tile <= cell_start + spec.stride)


def test_grayscale_rate_and_channel_shifts_follow_the_recipe():
    views, patch = draws(Jigsaw())
    gray = views[0]["gray"]
    assert abs(gray.mean() - 0.7) < 4 * np.sqrt(0.7 * 0.3 / N)
    shift = patch["channel_shift"]
    assert np.all(shift[gray] == 0)
    assert shift.min() == -2 and shift.max() == 2
    assert uniform_p(shift[~gray].ravel() + 2, 5) > 1e-3


def test_permutation_neighbour_and_replacement_draws_are_uniform():
    _, jig = draws(Jigsaw())
    assert uniform_p(jig["perm_index"] // 100, 10) > 1e-3  # 10 groups of 100 permutations
    _, ctx = draws(ContextPrediction())
    assert uniform_p(ctx["neighbor"], 8) > 1e-3
    assert uniform_p(ctx["keep_channel"].ravel(), 3) > 1e-3
    valid = np.ones(N, bool)
    valid[::7] = False  # skipped samples never lend a tile
    _, pp = draws(JigsawPP(), valid=valid)
    counts = pp["replaced"].sum(axis=1)
    assert counts.max() == 2 and uniform_p(counts, 3) > 1e-3
    rows, positions = np.nonzero(pp["replaced"])
    donors = pp["donor"][rows, positions]
    assert np.all(donors != rows) and np.all(valid[donors])
    assert np.all(pp["donor"][~pp["replaced"]] == -1)
    assert uniform_p(pp["donor_cell"][rows, positions], 9) > 1e-3


def test_a_batch_of_one_has_no_tile_to_borrow():
    recipe = JigsawPP()
    one = dict(gray=np.zeros(1, bool), valid=np.ones(1, bool))
    patch = sample_patch_params(recipe, seed=0, epoch=0, sample_ids=[5], **one)
    assert not patch["replaced"].any()


# -- the loader, every backend ---------------------------------------------------------------------
def test_inverse_permutation_restores_cell_order(painted_shards, backend):
    recipe = Jigsaw(dtype="uint8", return_params=True)
    table = recipe.permutation_table()
    seen = 0
    for batch in batches(painted_shards, recipe, backend, epochs=3):
        tiles = batch["views"][0]
        assert tiles.shape == (IMAGES, 9, 3, 64, 64) and tiles.dtype == torch.uint8
        perm = table[batch["perm_index"].numpy()]
        np.testing.assert_array_equal(batch["patch_params"]["perm"].numpy(), perm)
        for b, key in enumerate(batch["key"]):
            means = tiles[b].float().mean(dim=(1, 2, 3)).numpy()
            found = [decode_level(m) for m in means]
            assert [cell for _, cell in found] == list(perm[b])  # position p holds cell perm[p]
            restored = means[np.argsort(perm[b])]
            assert [decode_level(m) for m in restored] == [(image_of(key), k) for k in range(9)]
            seen += 1
    assert seen == 3 * IMAGES


def test_replaced_tiles_come_from_another_image_of_the_batch(painted_shards, backend):
    recipe = JigsawPP(dtype="uint8", return_params=True)
    table = recipe.permutation_table()
    replaced_total = 0
    for batch in batches(painted_shards, recipe, backend, epochs=4):
        params = batch["patch_params"]
        assert torch.equal(batch["replaced"], params["replaced"])
        images = [image_of(k) for k in batch["key"]]
        for b in range(IMAGES):
            for p in range(9):
                got_image, got_cell = decode_level(float(batch["views"][0][b, p].float().mean()))
                if batch["replaced"][b, p]:
                    donor = int(params["donor"][b, p])
                    assert donor != b and got_image == images[donor] != images[b]
                    assert got_cell == int(params["donor_cell"][b, p])
                    replaced_total += 1
                else:
                    assert (got_image, got_cell) == (images[b], table[int(batch["perm_index"][b])][p])
        assert batch["replaced"].sum(dim=1).max() <= 2
    assert replaced_total > 0


def test_context_pairs_the_centre_with_the_labelled_neighbour(painted_shards, backend):
    labels = []
    for batch in batches(painted_shards, ContextPrediction(dtype="uint8", colour="none"), backend, epochs=4):
        centre, neighbour = batch["views"]
        assert centre.shape == neighbour.shape == (IMAGES, 3, 64, 64)
        for b, key in enumerate(batch["key"]):
            assert decode_level(float(centre[b].float().mean())) == (image_of(key), 4)
            label = int(batch["neighbor"][b])
            assert decode_level(float(neighbour[b].float().mean())) == (image_of(key), NEIGHBOURS[label])
            labels.append(label)
    assert set(labels) <= set(range(8)) and len(set(labels)) >= 5


def test_context_colour_dropping_keeps_one_channel_per_patch(photo_shards, backend):
    for batch in batches(photo_shards, ContextPrediction(), backend, batch_size=12):
        for view in batch["views"]:
            spread = view.flatten(2).std(dim=2)  # (B, 3)
            strong = spread > 0.5  # a flat patch (std under one level) has no strong channel
            assert torch.all(strong.sum(dim=1) <= 1) and (strong.sum(dim=1) == 1).float().mean() > 0.9
            assert torch.all(spread[~strong] < 0.02), "the dropped two are faint noise"


def test_tiles_are_normalised_per_tile_and_grayscale_tiles_have_equal_channels(photo_shards, backend):
    recipe = Jigsaw(return_params=True)
    for batch in batches(photo_shards, recipe, backend, batch_size=12):
        tiles = batch["views"][0].flatten(3)  # (B, 9, 3, 4096)
        spread = tiles.std(dim=3, correction=0)
        textured = spread > 0.5  # flat tiles (std under a level) are centred only
        assert tiles.mean(dim=3).abs().max() < 1e-4
        assert torch.allclose(spread[textured], torch.ones(()), atol=1e-3)
        gray = batch["params"][0]["gray"]
        assert torch.equal(tiles[gray][:, :, 0], tiles[gray][:, :, 2])
        shifted = batch["patch_params"]["channel_shift"][~gray]
        assert torch.all(batch["patch_params"]["channel_shift"][gray] == 0) and shifted.abs().max() <= 2


def test_patch_grid_patches_overlap_by_their_stride(photo_shards, backend):
    for batch in batches(photo_shards, PatchGrid(), backend, batch_size=12):
        grid = batch["views"][0]
        assert grid.shape == (12, 49, 3, 64, 64) and grid.dtype == torch.float32
        grid = grid.view(12, 7, 7, 3, 64, 64)
        assert torch.equal(grid[:, :, :-1, ..., 32:], grid[:, :, 1:, ..., :32])
        assert torch.equal(grid[:, :-1, :, :, 32:, :], grid[:, 1:, :, :, :32, :])


PATCH_RECIPES = [Jigsaw(), JigsawPP(), ContextPrediction(), PatchGrid()]


@pytest.mark.parametrize("recipe", PATCH_RECIPES, ids=lambda r: r.name)
def test_backends_give_the_same_layout_parameters_and_close_pixels(photo_shards, recipe):
    pytest.importorskip("nvidia.dali")
    recipe = recipe.replace(return_params=True)
    dali = batches(photo_shards, recipe, ("dali", "cpu"), batch_size=12)
    kornia = batches(photo_shards, recipe, ("kornia", "cpu"), batch_size=12)
    for a, b in zip(dali, kornia, strict=True):
        assert set(a) == set(b) and a["key"] == b["key"]
        for name in ("perm_index", "replaced", "neighbor"):
            if name in a:
                assert torch.equal(a[name], b[name])
        for name, value in a["patch_params"].items():
            assert torch.equal(value, b["patch_params"][name]), name
        for x, y in zip(a["views"], b["views"], strict=True):
            assert x.shape == y.shape and x.dtype == y.dtype
            if isinstance(recipe, ContextPrediction):  # the dropped channels are noise on both
                assert (x - y).abs().median() < 0.1
            else:
                assert (x - y).abs().median() < 0.1 and (x - y).abs().mean() < 0.15


@pytest.mark.parametrize(
    "recipe",
    [*PATCH_RECIPES, ContextPrediction(colour="project"), Jigsaw(dtype="uint8")],
    ids=lambda r: f"{r.name}-{getattr(r, 'colour', '')}-{r.dtype}",
)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_numba_and_torch_engines_give_the_same_tiles(recipe, device):
    from fastssl.pipelines.patch_views import PatchViews

    n = 8
    rng = np.random.default_rng(3)
    base = torch.from_numpy(rng.integers(0, 256, (n, 3, recipe.size, recipe.size), dtype=np.uint8))
    base[0] = 90  # a flat image: std floored
    gray = np.arange(n) % 2 == 0  # grayscale-drawn samples take the luma path
    valid = np.ones(n, bool)
    patch = sample_patch_params(recipe, seed=0, epoch=0, sample_ids=np.arange(n), gray=gray, valid=valid)
    by_numba, targets_n, plan_n = PatchViews(recipe, "cpu", engine="numba")(base, patch)
    by_torch, targets_t, plan_t = PatchViews(recipe, device, engine="torch")(base.to(device), patch)
    by_torch = [t.cpu() for t in by_torch]
    if isinstance(recipe, ContextPrediction) and recipe.colour == "drop" and device != "cpu":
        by_torch, by_numba = by_torch[:1], by_numba[:1]  # noise differs by device; compare kept channels
        keep = torch.from_numpy(patch["keep_channel"][:, 0].astype(np.int64))
        by_torch = [t[torch.arange(n), keep] for t in by_torch]
        by_numba = [t[torch.arange(n), keep] for t in by_numba]
    for a, b in zip(by_numba, by_torch, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        if a.dtype == torch.uint8:
            assert (a.int() - b.int()).abs().max() <= 1  # luma rounding in float32 vs float64
        else:
            torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    assert targets_n.keys() == targets_t.keys()


def test_a_sample_found_undecodable_lends_no_tile_and_both_backends_agree(photo_shards):
    from fastssl.data.manifest import Manifest
    from fastssl.data.plan import EpochPlan
    from fastssl.host.reader import BatchReader

    manifest = Manifest.load(photo_shards)
    plan = EpochPlan(manifest, epoch=0, seed=0, batch_size=12, world_size=1, rank=0)
    recipe = JigsawPP(max_replaced=8)  # many foreign tiles, so every sample is a likely donor
    kornia_like = BatchReader(manifest, plan, recipe, on_error="skip")
    batch = kornia_like(0)
    bad = int(np.flatnonzero(batch.stage["donor"] >= 0)[0])  # a sample that lends a tile
    lender = int(batch.stage["donor"][bad][batch.stage["replaced"][bad]][0])
    batch.valid[lender] = False  # as decode_views marks a sample it cannot decode
    kornia_like.draw_stage(batch)
    assert not np.any(batch.stage["donor"] == lender)
    dali_like = BatchReader(manifest, plan, recipe, on_error="skip")  # knows it at read time
    dali_like.substitute.add((batch.shards[lender], batch.keys[lender]))
    again = dali_like(0)
    for name, value in batch.stage.items():
        np.testing.assert_array_equal(value, again.stage[name], err_msg=name)


def test_resume_continues_the_same_tiles(photo_shards, backend):
    name, device = backend
    recipe = JigsawPP()
    with SSLLoader(photo_shards, recipe, batch_size=6, backend=name, device=device, num_threads=1) as loader:
        full = list(loader)
    with SSLLoader(photo_shards, recipe, batch_size=6, backend=name, device=device, num_threads=1) as loader:
        it = iter(loader)
        next(it)
        state = loader.state_dict()
    with SSLLoader(photo_shards, recipe, batch_size=6, backend=name, device=device, num_threads=1) as loader:
        loader.load_state_dict(state)
        rest = list(loader)
    assert len(rest) == len(full) - 1
    for a, b in zip(full[1:], rest, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["perm_index"], b["perm_index"])
        assert torch.equal(a["views"][0], b["views"][0])
