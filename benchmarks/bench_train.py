"""Is the loader ever the bottleneck? Training step rate with the real loader against synthetic
in-memory tensors of the same shape, in one run (target: ratio >= 0.98).

Usage: python benchmarks/bench_train.py DATA [--method simclr] [--backbone small_cnn] [--size 64]
       [--batch-size 128] [--steps 30] [--warmup 5] [--device auto] [--json out.json]

Both runs train the same method from the same initial weights for `--steps` timed steps after
`--warmup` untimed ones; the synthetic run feeds the first real batch's tensors again and again,
so it pays the model and the optimiser and nothing else.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from fastssl.loader import SSLLoader
from fastssl.train import PretrainConfig, build_method
from fastssl.train.optim import build_optimizer


def _train(method, optimizer, batches, warmup: int, steps: int, device: torch.device) -> float:
    """Images per second over the timed steps."""
    images, start = 0, None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for i, batch in enumerate(itertools.islice(batches, warmup + steps)):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss = method(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.on_step(i, warmup + steps)
        if i >= warmup:
            images += len(batch["key"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def _endless(loader: SSLLoader):
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if args.device == "auto"
        else torch.device(args.device)
    )
    config = PretrainConfig(
        data=args.data, out="", method=args.method, backbone=args.backbone, size=args.size
    )
    rates = {}
    for mode in ("synthetic", "loader"):
        method = build_method(config).to(device)  # the same initial weights for both
        if device.type == "cuda":
            method = method.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(method, "sgd", 0.05, 1e-4)
        loader = SSLLoader(args.data, method.default_recipe(args.size), args.batch_size, device=device)
        if mode == "synthetic":
            first = next(iter(loader))
            batches = itertools.repeat(first)
        else:
            batches = _endless(loader)
        rates[mode] = _train(method, optimizer, batches, args.warmup, args.steps, device)
        loader.close()
    result = {
        "method": args.method, "backbone": args.backbone, "size": args.size, "batch_size": args.batch_size,
        "device": str(device), "steps": args.steps, "loader_images_per_s": rates["loader"],
        "synthetic_images_per_s": rates["synthetic"], "ratio": rates["loader"] / rates["synthetic"],
    }  # fmt: skip
    print(
        f"{args.method} {args.backbone} {args.size}px batch {args.batch_size} on {device}: "
        f"loader {rates['loader']:.1f} img/s, synthetic {rates['synthetic']:.1f} img/s, "
        f"ratio {result['ratio']:.3f}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
