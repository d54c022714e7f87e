"""Per-sample random parameters of patch-grid recipes (tile jitter, channel shifts, permutation,
replaced tiles, context neighbour), from the same counter-based hash as the view parameters.

Only raw draws are made here, in the decode workers; turning them into a gather plan (which
permutation row, which donor tile) happens next to the pixels, in `fastssl.pipelines.patch_views`,
so that workers never need the permutation table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastssl.host.params import uniforms
from fastssl.recipes.patches import ContextPrediction, Jigsaw, JigsawPP, PatchRecipe

PATCH_STREAM = 1 << 20  # uniform stream of the patch draws, apart from the views' streams 0, 1, ...


def _integers(u: np.ndarray, high: int) -> np.ndarray:
    """Uniform integers in [0, high) from uniforms in [0, 1)."""
    return np.minimum((u * high).astype(np.int64), high - 1)


def sample_patch_params(
    recipe: PatchRecipe,
    *,
    seed: int,
    epoch: int,
    sample_ids: Sequence[int] | np.ndarray,
    gray: np.ndarray,
    valid: np.ndarray,
) -> dict[str, np.ndarray]:
    """Patch draws for a batch. Always: `offsets` (B, cells, 2) int32, each cell's tile corner in the
    base view; `channel_shift` (B, cells, 3, 2) int8, zero for grayscale samples; `gray` (B,), the
    base view's grayscale draw, which the patch stage applies to the tiles. Jigsaw:
    `perm_index` (B,). Jigsaw++: `replaced` (B, cells) bool over output positions, `donor` and
    `donor_cell` (B, cells) int32 (-1 where not replaced): the batch row and cell the foreign tile
    comes from, another valid sample of the batch (`valid`). Context: `neighbor` (B,) 0-7,
    `keep_channel` (B, 2) int8 for colour dropping, `noise_seed` (B,) int64 (the patch stage seeds a
    batch's noise from its first sample's).
    """
    spec = recipe.patches()
    ids = np.asarray(sample_ids, dtype=np.int64)
    n, cells = len(ids), spec.cells
    slots = 2 * cells + 6 * cells + 1 + 1 + 3 * cells + 4
    u = uniforms(seed, epoch, ids, stream=PATCH_STREAM, count=slots)
    at = 0

    def take(count: int) -> np.ndarray:
        nonlocal at
        at += count
        return u[:, at - count : at]

    jitter = _integers(take(2 * cells), spec.jitter + 1).reshape(n, cells, 2)
    offsets = spec.origins(recipe.size)[None] + jitter
    width = 2 * spec.channel_shift + 1
    shift = _integers(take(6 * cells), width).reshape(n, cells, 3, 2) - spec.channel_shift
    shift[np.asarray(gray, dtype=bool)] = 0  # identical channels: shifting would add colour
    out = {
        "offsets": offsets.astype(np.int32),
        "channel_shift": shift.astype(np.int8),
        "gray": np.asarray(gray, dtype=bool).copy(),
    }
    perm_u, count_u, position_u, task_u = take(1)[:, 0], take(1)[:, 0], take(cells), take(2 * cells + 4)
    if isinstance(recipe, Jigsaw):
        out["perm_index"] = _integers(perm_u, recipe.n_permutations)
    if isinstance(recipe, JigsawPP):
        out.update(_replacements(recipe.max_replaced, count_u, position_u, task_u, valid))
    if isinstance(recipe, ContextPrediction):
        out["neighbor"] = _integers(task_u[:, 0], 8)
        out["keep_channel"] = _integers(task_u[:, 1:3], 3).astype(np.int8)
        out["noise_seed"] = (task_u[:, 3] * 2.0**52).astype(np.int64)
    return out


def _replacements(
    max_replaced: int, count_u: np.ndarray, position_u: np.ndarray, task_u: np.ndarray, valid: np.ndarray
) -> dict[str, np.ndarray]:
    """Jigsaw++ draws: how many positions (uniform 0..max_replaced), which ones, and from which
    other valid sample and cell of the batch each foreign tile comes."""
    n, cells = position_u.shape
    valid = np.asarray(valid, dtype=bool)
    count = _integers(count_u, max_replaced + 1)
    rank = np.argsort(np.argsort(position_u, axis=1), axis=1)  # a random order of the positions
    replaced = rank < count[:, None]
    donor = np.full((n, cells), -1, dtype=np.int32)
    donor_cell = np.full((n, cells), -1, dtype=np.int32)
    for i in range(n):
        others = np.flatnonzero(valid & (np.arange(n) != i))
        if not len(others) or not replaced[i].any():
            replaced[i] = False  # nobody to borrow from (a batch of one, or all others skipped)
            continue
        picks = others[_integers(task_u[i, :cells], len(others))]
        cells_from = _integers(task_u[i, cells : 2 * cells], cells)
        donor[i] = np.where(replaced[i], picks, -1)
        donor_cell[i] = np.where(replaced[i], cells_from, -1)
    return {"replaced": replaced, "donor": donor, "donor_cell": donor_cell}
