"""Run the contestants of `fastssl bench`, each in its own process tree, and report the results.

Each contestant runs in a child process (`python -m fastssl.bench.harness --child ...`), so that
its peak memory and CPU time are its own: warm-up batches first, then `batches` timed batches.
Throughput is images per second (a two-view recipe counts each image once). CPU use is the CPU
time of the contestant's whole process tree over the timed span divided by wall time and cores;
peak RSS is the sum of each process's own peak (VmHWM) over the tree, read once after the timed
span: nothing is sampled inside it, and it is an upper bound if the peaks did not coincide.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

CONTESTANTS = ("fastssl", "baseline", "floor", "dali_native", "webdataset")
_CLK = os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> list[int]:
    """`root` and every living descendant, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def tree_usage(root: int | None = None) -> tuple[float, int]:
    """(CPU seconds, bytes of peak resident memory) summed over a process tree (default: this one's),
    reaped children's CPU time included."""
    cpu, peak = 0.0, 0
    for pid in _tree(root or os.getpid()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/status") as f:
                hwm = next((line.split()[1] for line in f if line.startswith("VmHWM:")), "0")
        except OSError:
            continue
        # own user + system time, plus that of children already reaped (cutime, cstime): worker
        # processes that exit mid-span (a DataLoader per epoch) would otherwise take theirs along
        cpu += sum(int(v) for v in fields[11:15]) / _CLK
        peak += int(hwm) * 1024  # kB
    return cpu, peak


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _measure(
    batches: Iterator[Any],
    images_per_batch: Any,
    warmup: int,
    timed: int,
    label: str,
    progress: bool,
    on_start: Any = None,
) -> dict:
    from tqdm import tqdm

    bar = tqdm(total=warmup + timed, desc=label, unit="batch", disable=not progress, file=sys.stderr)
    for _ in range(warmup):
        next(batches)
        bar.update()
    _synchronize()
    if on_start is not None:  # e.g. forget the warm-up's stage timings
        on_start()
    cpu0, _ = tree_usage()
    start = time.perf_counter()
    images = 0
    for _ in range(timed):
        images += images_per_batch(next(batches))
        bar.update()
    _synchronize()  # GPU work queued for the last batches is part of their time
    wall = time.perf_counter() - start
    cpu1, peak = tree_usage()
    bar.close()
    return {
        "images": images,
        "seconds": wall,
        "images_per_s": images / wall,
        "peak_rss_mb": peak / 2**20,
        "cpu_util": (cpu1 - cpu0) / wall / _cores(),
    }


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _epochs(make: Any) -> Iterator[Any]:
    """Batches from a fresh epoch iterator whenever one runs out."""
    for epoch in itertools.count():
        yield from make(epoch)


def run_child(name: str, config: dict) -> dict:
    """Time one contestant in this process (the harness starts one process per contestant)."""
    import torch

    from fastssl.data.manifest import Manifest
    from fastssl.loader import resolve_data
    from fastssl.recipes import PatchRecipe, PredictionRecipe, get_recipe

    torch.set_num_threads(max(1, config["workers"]))
    recipe = get_recipe(config["recipe"])
    if config.get("size"):
        recipe = recipe.replace(size=config["size"])
    from fastssl.data.store import is_remote

    remote = is_remote(config["data"])
    if remote and name != "fastssl":
        raise RuntimeError(
            f"the {name} contestant reads local shards; time a remote shard set with --only fastssl "
            "(benchmarks/bench_remote.py compares streaming loaders on the same URLs)"
        )
    manifest: Manifest | None = None if remote else resolve_data(config["data"])
    bs, workers = config["batch_size"], config["workers"]
    args = (config["warmup"], config["batches"], name, config["progress"])
    if name == "fastssl":
        from fastssl.loader import SSLLoader

        remote_options = {"cache_dir": config.get("cache_dir"), "cache_limit": config.get("cache_limit")}
        loader = SSLLoader(
            config["data"] if remote else manifest,
            recipe,
            bs,
            backend=config["backend"],
            device=config["device"],
            num_threads=workers,
            drop_last=True,
            profile=bool(config.get("profile")),
            **(remote_options if remote else {}),
        )
        timings = loader.timings
        result = _measure(
            _epochs(lambda e: iter(loader)), lambda b: len(b["key"]), *args,
            on_start=timings.clear if timings is not None else None,
        )  # fmt: skip
        result["backend"] = loader.backend_name
        if timings is not None:
            result["profile_us_per_sample"] = {k: v / result["images"] * 1e6 for k, v in timings.items()}
        loader.close()
        return result
    if name == "dali_native":
        from fastssl.bench.dali_native import native_batches

        gpu = config["device"] == "cuda"
        result = _measure(native_batches(manifest, recipe, bs, workers, gpu=gpu), lambda b: len(b[0]), *args)
        result["transforms"] = "as DALI's docs write it"
        return result
    if name == "webdataset":
        from fastssl.bench.webdataset_pipeline import webdataset_batches

        batches = webdataset_batches(manifest, recipe, bs, workers)
        result = _measure(batches, lambda b: len(b[0]), *args)
        result["transforms"] = "WebDataset's README + the baseline's transforms"
        return result
    from fastssl.bench.baseline import DecodeOnlyDataset, PilRecipeDataset, baseline_uses_torchvision

    if name == "baseline" and isinstance(recipe, PredictionRecipe):
        raise ValueError(
            f"no baseline reproduces the {recipe.name} recipe's prediction stage; time it with --only fastssl"
        )
    if name != "baseline":
        dataset = DecodeOnlyDataset(manifest)
    elif isinstance(recipe, PatchRecipe):
        from fastssl.bench.patch_baseline import PilPatchDataset

        dataset = PilPatchDataset(manifest, recipe)
    else:
        dataset = PilRecipeDataset(manifest, recipe)
    on_gpu = config["device"] == "cuda" and name == "baseline"
    dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=bs,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        pin_memory=on_gpu,
    )

    def epoch(e: int) -> Iterable[Any]:
        torch.manual_seed(e)
        return iter(dataloader)

    def count(batch: Any) -> int:
        if name != "baseline":
            return len(batch)
        if on_gpu:  # the views where fastssl puts them, as a training step would take them
            for view in batch:
                view.to("cuda", non_blocking=True)
        return len(batch[0])

    result = _measure(_epochs(epoch), count, *args)
    if name == "baseline":
        if isinstance(recipe, PatchRecipe):
            result["transforms"] = "PIL + NumPy tiles"
        else:
            result["transforms"] = (
                "torchvision" if baseline_uses_torchvision(recipe) else "PIL (torchvision absent)"
            )
    return result


def run_contestant(name: str, config: dict) -> dict:
    """Start a child process for one contestant and return its result."""
    command = [sys.executable, "-m", "fastssl.bench.harness", "--child", name, "--config", json.dumps(config)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark contestant {name!r} failed with exit status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_bench(config: dict, contestants: Iterable[str] = CONTESTANTS) -> dict:
    """All contestants, one after another; ratios against the baseline and the floor of this run."""
    results = {name: run_contestant(name, config) for name in contestants}
    base = results.get("baseline", {}).get("images_per_s")
    floor = results.get("floor", {}).get("images_per_s")
    for result in results.values():
        result["vs_baseline"] = result["images_per_s"] / base if base else None
        result["vs_floor"] = result["images_per_s"] / floor if floor else None
    return {"config": config, "cores": _cores(), "results": results}


def format_table(report: dict) -> str:
    """The results as an aligned text table."""
    c = report["config"]
    size = f" {c['size']} px" if c.get("size") else ""
    head = (
        f"recipe {c['recipe']}{size}, batch {c['batch_size']}, {c['batches']} timed batches after "
        f"{c['warmup']}, {c['workers']} workers, {report['cores']} cores"
    )
    rows = [("contestant", "images/s", "x baseline", "x floor", "peak RSS MB", "CPU use")]
    for name, r in report["results"].items():
        label = f"fastssl ({r.get('backend', '?')}, {c['device']})" if name == "fastssl" else name
        if name in ("baseline", "dali_native", "webdataset"):
            label += f" [{r.get('transforms', '')}]"
        ratio = lambda x: f"{x:.2f}" if x is not None else "-"  # noqa: E731
        rows.append(
            (label, f"{r['images_per_s']:.1f}", ratio(r["vs_baseline"]), ratio(r["vs_floor"]),
             f"{r['peak_rss_mb']:.0f}", f"{100 * r['cpu_util']:.0f}%")
        )  # fmt: skip
    profiles = [
        (name, r["profile_us_per_sample"])
        for name, r in report["results"].items()
        if r.get("profile_us_per_sample")
    ]
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if k == 0 else cell.rjust(w)
            for k, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    for name, profile in profiles:
        lines.append(f"{name} stages, microseconds per sample (of the timed batches):")
        lines += [f"  {stage:<28} {value:9.2f}" for stage, value in profile.items()]
    return "\n".join([head, *lines])


def plot(report: dict, path: str | os.PathLike) -> None:
    """A bar chart of images/s per contestant (matplotlib, headless)."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    rates = [report["results"][n]["images_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bars = ax.bar(names, rates, color=["#2b7bba", "#999999", "#dddddd"][: len(names)], edgecolor="black")
    for bar, rate in zip(bars, rates, strict=True):
        ax.annotate(
            f"{rate:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom"
        )
    c = report["config"]
    ax.set_ylabel("images / s")
    ax.set_title(f"{c['recipe']}, batch {c['batch_size']}, {c['workers']} workers, {report['cores']} cores")
    fig.tight_layout()
    fig.savefig(Path(path), dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description="internal: run one benchmark contestant")
    parser.add_argument("--child", choices=CONTESTANTS, required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    result = run_child(args.child, json.loads(args.config))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
