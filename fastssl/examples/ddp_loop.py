"""SSLLoader in a plain DDP training loop; run it with torchrun.

    torchrun --nproc-per-node 2 -m fastssl.examples.ddp_loop SHARDS --epochs 1 --out keys/

Rank and world size come from torch.distributed, so the loader needs no distributed arguments:
each rank reads its own share of every epoch, and the valid samples of all ranks cover the data set
exactly once. gloo on CPU, nccl on GPU. With --out, each rank writes the keys it trained on.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastssl import SimCLR, SSLLoader


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE between the two views of a (local) batch: each view's positive is its partner."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 32)
    )
    model = nn.parallel.DistributedDataParallel(model.to(device))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    seen: list[str] = []
    with SSLLoader(
        args.data, SimCLR(size=args.size), args.batch_size, backend=args.backend, device=device
    ) as loader:
        for epoch in range(args.epochs):
            loader.set_epoch(epoch)
            for batch in loader:
                one, two = batch["views"]
                keep = batch["valid"]  # padding samples (valid=False) must not count twice
                loss = info_nce(model(one)[keep], model(two)[keep])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                seen += [k for k, ok in zip(batch["key"], keep.tolist(), strict=True) if ok]
            if rank == 0:
                print(f"epoch {epoch}: {len(loader)} batches per rank, last loss {loss.item():.3f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"rank{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
