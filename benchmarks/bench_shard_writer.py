"""Throughput of `fastssl shards` on the demo corpus, 1 and 2 workers, against a decode floor.

The floor is what any validating writer must at least do: read every file and decode it fully
with PIL, in one process. Each configuration runs `--repeats` times, interleaved so that machine
noise hits all of them alike; the table reports medians and ratios from the same run.

    python benchmarks/bench_shard_writer.py [--num-images 2000] [--repeats 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import statistics
import time
from pathlib import Path

from PIL import Image

from fastssl.data.demo import build_demo_corpus
from fastssl.data.writer import default_workers, write_shards


def decode_floor(files: list[Path]) -> float:
    """Files/s for read + full PIL decode in this process."""
    started = time.perf_counter()
    for path in files:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
    return len(files) / (time.perf_counter() - started)


def writer(corpus: Path, out: Path, workers: int) -> float:
    """Files/s of a complete shard run (spawning workers included)."""
    report = write_shards(corpus, out, shard_size=500, workers=workers, overwrite=True, progress=False)
    return report.files_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/shard_writer"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/shard_writer.json"))
    args = parser.parse_args()

    corpus_dir = args.work / "corpus"
    shutil.rmtree(args.work, ignore_errors=True)
    corpus = build_demo_corpus(corpus_dir, num_images=args.num_images, seed=0)
    print(f"corpus: {corpus.summary()}")
    files = sorted(corpus_dir.rglob("*.jpg"))
    runs: dict[str, list[float]] = {
        "decode floor (1 process)": [],
        "writer, 1 worker": [],
        "writer, 2 workers": [],
    }
    for _ in range(args.repeats):
        runs["decode floor (1 process)"].append(decode_floor(files))
        runs["writer, 1 worker"].append(writer(corpus_dir, args.work / "shards", 1))
        runs["writer, 2 workers"].append(writer(corpus_dir, args.work / "shards", 2))
    median = {name: statistics.median(values) for name, values in runs.items()}
    floor, one = median["decode floor (1 process)"], median["writer, 1 worker"]
    print(f"\n| configuration | files/s (median of {args.repeats}) | vs decode floor | vs 1 worker |")
    print("| --- | ---: | ---: | ---: |")
    for name, value in median.items():
        print(f"| {name} | {value:.0f} | {value / floor:.2f} | {value / one:.2f} |")
    result = {
        "benchmark": "shard_writer",
        "machine": {
            "cores": default_workers(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "corpus": {"images": len(files), "summary": corpus.summary()},
        "runs": runs,
        "median_files_per_s": median,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
