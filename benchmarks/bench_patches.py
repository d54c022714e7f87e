"""Time the patch stage (tile gathering and normalisation) with its two engines, in one run:
the Numba kernel (`fastssl.kernels.tiles`) against torch advanced indexing, on the same base views.

Usage: python benchmarks/bench_patches.py [--device cpu] [--batch-size 64] [--repeats 20] [--json out.json]

The base views are random uint8 images of each recipe's view size; the draws come from
`fastssl.host.patch_params` as in the loader. Prints milliseconds per batch and the torch/Numba ratio
(the engine `PatchViews` picks by default on the CPU is the faster one here).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from fastssl.pipelines.patch_views import PatchViews

from fastssl.host.patch_params import sample_patch_params
from fastssl.recipes import ContextPrediction, Jigsaw, JigsawPP, PatchGrid


def _time(stage: PatchViews, base: torch.Tensor, patch: dict, repeats: int) -> float:
    stage(base, patch)  # warm-up (compiles or loads the kernel)
    if base.device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        views, _, _ = stage(base, patch)
        if base.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    rows = []
    engines = ("numba", "torch") if device.type == "cpu" else ("torch",)
    for recipe in (Jigsaw(), JigsawPP(), ContextPrediction(), PatchGrid()):
        n = args.batch_size
        base = torch.from_numpy(rng.integers(0, 256, (n, 3, recipe.size, recipe.size), dtype=np.uint8))
        base = base.to(device)
        patch = sample_patch_params(
            recipe,
            seed=0,
            epoch=0,
            sample_ids=np.arange(n),
            gray=rng.random(n) < recipe.p_gray,
            valid=np.ones(n, bool),
        )
        row = {"recipe": recipe.name, "batch_size": n, "device": str(device)}
        for engine in engines:
            row[f"{engine}_ms"] = _time(PatchViews(recipe, device, engine=engine), base, patch, args.repeats)
        if "numba_ms" in row:
            row["torch_over_numba"] = row["torch_ms"] / row["numba_ms"]
        rows.append(row)
    header = f"{'recipe':<10} " + " ".join(f"{e + ' ms':>10}" for e in engines)
    print(header + ("  torch/numba" if "numba" in engines else ""))
    for r in rows:
        line = f"{r['recipe']:<10} " + " ".join(f"{r[e + '_ms']:10.2f}" for e in engines)
        print(line + (f"  {r['torch_over_numba']:11.2f}" if "torch_over_numba" in r else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
