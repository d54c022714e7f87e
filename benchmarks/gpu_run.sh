#!/usr/bin/env bash
# The GPU figures in RESULTS.md: gpu-marked tests, then `fastssl bench` and the patch stage on CUDA.
# Run from the repository root on a machine with a CUDA GPU and fastssl installed (pip install -e .).
# Logs and JSON go to $OUT (default benchmarks/out).
#
# On this workplace's lent GPU machines DALI is not installed and its wheel exceeds what one call
# can carry (64 MiB): a pruned copy of site-packages/nvidia (DALI, nvimgcodec, nvjpeg, nvcomp;
# other Pythons' extension modules and headers dropped) was tar'd, zstd-compressed (267 MB) and
# carried in five 56 MB pieces, each moved to /tmp by its call so it survives the next one while
# the machine stays warm, then unpacked with a carried zstd binary into a PYTHONPATH folder,
# together with wheels of kornia, kornia_rs, webdataset and DALI's pure-Python dependencies.
set -u
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
timeout 400 python3 -m pytest -m gpu -q -p no:cacheprovider tests/ > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?"; tail -2 "$OUT/gpu_tests.log"
fastssl demo --out /tmp/demo --quiet > "$OUT/demo.log" 2>&1
for spec in "simclr dali" "simclr kornia" "crop dali" "jigsaw dali" "jigsaw kornia" "context dali" "context kornia"; do
  set -- $spec
  timeout 150 fastssl bench /tmp/demo/shards --recipe "$1" --backend "$2" --device cuda --batch-size 128 \
    --batches 20 --warmup 3 --json "$OUT/bench_$1_$2_cuda.json" --quiet 2>&1 | tail -5
done
python3 benchmarks/bench_patches.py --device cuda --batch-size 128 --json "$OUT/bench_patches_cuda.json"
