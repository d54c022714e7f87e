"""What each stage of the SimCLR recipe costs on each backend: images/s of the loader alone as ops are
added (decode + crop, + colour, + blur, + solarize), beside the PIL decode floor of the same run.

    python benchmarks/bench_ablation.py DATA --backend dali --batch-size 64 --batches 10
"""

from __future__ import annotations

import argparse
import json
import time

from fastssl.bench.harness import run_contestant
from fastssl.loader import SSLLoader
from fastssl.recipes import Crop, SimCLR

STAGES = {
    "crop, 1 view": Crop(),
    "crop, 2 views": SimCLR(p_jitter=0, p_gray=0, p_blur=0),
    "+ colour (jitter, gray)": SimCLR(p_blur=0),
    "+ blur (full SimCLR)": SimCLR(),
    "full SimCLR + solarize 0.2": SimCLR(p_solarize=0.2),
}


def rate(data: str, recipe, backend: str, batch_size: int, batches: int, workers: int) -> float:
    with SSLLoader(
        data, recipe, batch_size, backend=backend, device="cpu", num_threads=workers, drop_last=True
    ) as loader:
        it = iter(loader)
        next(it)
        start, images = time.perf_counter(), 0
        for _ in range(batches):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            images += len(batch["key"])
        return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--backend", default="dali")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    config = {
        "data": args.data, "recipe": "crop", "backend": args.backend, "device": "cpu",
        "batch_size": args.batch_size, "batches": args.batches, "warmup": 1, "workers": args.workers,
        "progress": False,
    }  # fmt: skip
    floor = run_contestant("floor", config)["images_per_s"]
    rows = {"PIL decode floor": floor}
    for name, recipe in STAGES.items():
        rows[name] = rate(args.data, recipe, args.backend, args.batch_size, args.batches, args.workers)
    for name, value in rows.items():
        print(f"{name:28s} {value:8.1f} img/s  {value / floor:5.2f}x floor")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": args.backend, "images_per_s": rows}, f, indent=2)


if __name__ == "__main__":
    main()
