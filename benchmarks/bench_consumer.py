"""What the training thread itself computes inside `next(loader)`, apart from the copy of the views
into torch: DALI-CPU, a consumer that does nothing else.

CPU time of the calling thread (`time.thread_time`, so waiting for DALI's threads, the view
threads or the feeders is not counted) around each `next()`, and around the views' hand-over:
`fastssl.pipelines.dali_views._to_torch` (the copy out of DALI, GPU graphs) and `HostFinish`
(CPU graphs: the fused view pass), counted only when the training thread itself calls them: on
CPU graphs the graph's run and the view pass happen in the backend's run-ahead thread, and the
training thread only takes finished batches. One warm-up epoch, then `--epochs` timed ones,
epoch boundaries included.

Usage: python benchmarks/bench_consumer.py DATA [--recipe crop] [--size 64] [--batch-size 256]
       [--epochs 1] [--threads 2] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import fastssl.pipelines.dali_views as dali_views

from fastssl.loader import SSLLoader
from fastssl.recipes import get_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--recipe", default="crop")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    copy = [0.0]
    consumer = threading.get_ident()

    def timed(handover):  # noqa: ANN001, ANN202 - the views' hand-over, its CPU time summed in copy
        def run(*given):  # noqa: ANN002, ANN202
            if threading.get_ident() != consumer:  # another thread's time is not the consumer's
                return handover(*given)
            start = time.thread_time()
            try:
                return handover(*given)
            finally:
                copy[0] += time.thread_time() - start

        return run

    dali_views._to_torch = timed(dali_views._to_torch)  # GPU graphs: the copy out of DALI
    dali_views.HostFinish.__call__ = timed(dali_views.HostFinish.__call__)  # CPU graphs: the view pass
    recipe = get_recipe(args.recipe).replace(size=args.size)
    loader = SSLLoader(
        args.data, recipe, args.batch_size, backend="dali", device="cpu", num_threads=args.threads
    )
    for _ in loader:  # warm-up epoch: graph built, kernels loaded
        pass
    copy[0], inside, batches = 0.0, 0.0, 0
    for _ in range(args.epochs):
        iterator = iter(loader)
        while True:
            start = time.thread_time()
            try:
                next(iterator)
            except StopIteration:
                break
            inside += time.thread_time() - start
            batches += 1
    loader.close()
    result = {
        "recipe": args.recipe, "size": args.size, "batch_size": args.batch_size, "batches": batches,
        "next_cpu_us_per_batch": inside / batches * 1e6, "copy_cpu_us_per_batch": copy[0] / batches * 1e6,
        "rest_cpu_us_per_batch": (inside - copy[0]) / batches * 1e6,
    }  # fmt: skip
    print(
        f"{args.recipe} {args.size} px, batch {args.batch_size}, {batches} batches: the training thread "
        f"computes {result['next_cpu_us_per_batch']:.0f} us per batch inside next(loader), of which the "
        f"views' hand-over (copy into torch, or the fused view pass) {result['copy_cpu_us_per_batch']:.0f}; "
        f"the rest {result['rest_cpu_us_per_batch']:.0f}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
