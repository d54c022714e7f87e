"""Soak: many epochs over the demo shards with faults planted, under on_error="skip". Every epoch must
cover every undamaged sample exactly once (on every rank of a simulated world), list exactly the
damaged ones as skipped, and keep memory flat (RSS, and GPU memory when the loader is on a GPU).

Usage: python benchmarks/bench_soak.py [--data demo_out/shards] [--backend dali|kornia]
       [--device cpu|cuda] [--epochs 20] [--world-size 2] [--per-kind 2] [--shards N] [--json out.json]

The shards are copied to a temporary folder and damaged there in place (`plant_in_place`: a garbage
header, a JPEG whose end is zeroed, a bad `.cls`, an index entry pointing at a neighbour's image).
One loader per simulated rank lives for the whole run, as in training. Exit status 1 when any
epoch's coverage is wrong or the live RSS (after gc and malloc_trim) trend fitted over the second
half of the run grows by more than `--max-growth-mb` (the first epochs grow while buffers reach
their working size).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from fastssl.data.faults import all_keys, plant_in_place
from fastssl.data.manifest import Manifest
from fastssl.loader import SSLLoader


def rss_mb() -> float:
    """Resident memory of this process (not its worker processes), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def live_rss_mb() -> float:
    """RSS after a garbage collection and glibc's malloc_trim: memory still in use. Raw RSS also
    counts freed memory the allocator keeps for reuse, which wanders from epoch to epoch by a
    hundred MB or more and creeps up for a while, with no leak behind it."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: raw RSS it is
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mb()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("demo_out/shards"))
    parser.add_argument("--backend", default="dali", choices=("dali", "kornia"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--recipe", default="simclr")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--per-kind", type=int, default=2, help="damaged samples per fault kind (2)")
    parser.add_argument("--shards", type=int, default=None, help="use only the first N shards (all)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--max-growth-mb", type=float, default=32.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not (args.data / "manifest.json").is_file():
        parser.error(f"no shards at {args.data}; run `fastssl demo` first (or pass --data)")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shards"
        shutil.copytree(args.data, root)
        if args.shards is not None:  # fewer samples per epoch: more epochs in the same time
            manifest = Manifest.load(root)
            dataclasses.replace(manifest, shards=manifest.shards[: args.shards]).save(root)
        planted = plant_in_place(root, per_kind=args.per_kind, seed=1)
        bad = Counter((shard, key) for shard, key, _ in planted)
        expected = all_keys(root) - Counter(key for _, key in bad)
        loaders = [
            SSLLoader(root, args.recipe, args.batch_size, backend=args.backend, device=args.device,
                      rank=r, world_size=args.world_size, num_threads=args.workers, on_error="skip")
            for r in range(args.world_size)
        ]  # fmt: skip
        cuda = torch.device(args.device).type == "cuda"
        rows = []
        ok = True
        start = time.perf_counter()
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            valid, skipped, batches, images = Counter(), Counter(), [], 0
            for loader in loaders:
                before = len(loader.skipped)
                count = 0
                for batch in loader:
                    count += 1
                    images += len(batch["key"])
                    keep = batch["valid"].tolist()
                    valid.update(k for k, v in zip(batch["key"], keep, strict=True) if v)
                skipped.update((s["shard"], s["key"]) for s in loader.skipped[before:])
                batches.append(count)
            covered = valid == expected and skipped == bad and len(set(batches)) == 1
            ok &= covered
            rows.append(
                {
                    "epoch": epoch,
                    "covered_exactly_once": covered,
                    "skipped": sum(skipped.values()),
                    "batches_per_rank": batches[0],
                    "images_per_s": images / (time.perf_counter() - t0),
                    "rss_mb": rss_mb(),
                    "live_rss_mb": live_rss_mb(),
                    "gpu_allocated_mb": torch.cuda.memory_allocated() / 2**20 if cuda else None,
                    "gpu_reserved_mb": torch.cuda.memory_reserved() / 2**20 if cuda else None,
                }
            )
            r = rows[-1]
            gpu = f"  gpu {r['gpu_allocated_mb']:.0f}/{r['gpu_reserved_mb']:.0f} MB" if cuda else ""
            print(f"epoch {epoch:3d}  coverage {'ok' if covered else 'WRONG'}  skipped {r['skipped']}  "
                  f"{r['images_per_s']:7.0f} img/s  rss {r['rss_mb']:7.1f} MB  "
                  f"live {r['live_rss_mb']:7.1f} MB{gpu}", flush=True)  # fmt: skip
        for loader in loaders:
            loader.close()
    # Buffers grow over the first epochs until they have seen every batch shape; a leak keeps
    # growing. So flatness is judged on the live RSS of the second half of the run.
    rss = np.array([r["live_rss_mb"] for r in rows])
    half = rss[len(rss) // 2 :]
    slope = float(np.polyfit(np.arange(len(half)), half, 1)[0]) if len(half) > 1 else 0.0
    growth = slope * max(len(half) - 1, 0)
    summary = {
        "backend": args.backend,
        "device": args.device,
        "epochs": args.epochs,
        "world_size": args.world_size,
        "samples": sum(expected.values()) + len(planted),
        "planted": [{"shard": s, "key": k, "fault": f} for s, k, f in planted],
        "every_epoch_exact": ok,
        "live_rss_mb_first_epoch": float(rss[0]),
        "live_rss_mb_second_half_range": [float(half.min()), float(half.max())],
        "live_rss_slope_mb_per_epoch_second_half": slope,
        "live_rss_fitted_growth_mb_second_half": growth,
        "raw_rss_mb_range": [min(r["rss_mb"] for r in rows), max(r["rss_mb"] for r in rows)],
        "seconds": time.perf_counter() - start,
        "epochs_detail": rows,
    }
    flat = growth <= args.max_growth_mb
    print(f"{args.epochs} epochs, {len(planted)} damaged samples: coverage "
          f"{'exact every epoch' if ok else 'WRONG'}; live RSS {rss[0]:.0f} MB after epoch 0, "
          f"{half.min():.0f}-{half.max():.0f} MB over the second half, fitted trend there "
          f"{slope:+.2f} MB/epoch ({growth:+.1f} MB)")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if ok and flat else 1


if __name__ == "__main__":
    raise SystemExit(main())
