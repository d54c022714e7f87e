#!/usr/bin/env bash
# Every GPU figure of RESULTS.md in one run of under 10 minutes, on a machine with a CUDA GPU and
# fastssl installed (pip install -e .). Run from the repository root; logs and JSON go to $OUT
# (default benchmarks/out).
#
#  1. the gpu-marked tests;
#  2. an ImageNet-like corpus (../shared/DATA.md): 20,000 crops of the packaged photographs at
#     shorter sides 350-500 px, about 110 KB a file, in shards of 1,000 (benchmarks/make_corpus.py);
#  3. SimCLR two views, batch 256, the full recipe and float32 normalised views exactly as SSLLoader
#     yields them on the GPU: fastssl (DALI-GPU: 8 DALI threads, prefetch 2, 2 feeder processes,
#     hw_decoder_load 0.65, DALI's defaults) against the DataLoader + PIL + torchvision baseline
#     (16 workers, views moved to the GPU) in the same run, 900 batches each (>= 30 s, several
#     epochs of 78 batches, so epoch boundaries are inside the clock), torch.cuda.synchronize()
#     before the clock stops (fastssl.bench.harness);
#  4. Crop at 224 px, fastssl against DALI's documented pipeline on the GPU (fn.readers.webdataset
#     + mixed decoder, hw_decoder_load 0.65, device_memory_padding 16 MiB, host_memory_padding 8 MiB,
#     prefetch 2, 8 threads: fastssl/bench/dali_native.py);
#  5. ResNet-50 SimCLR training steps with the real loader against synthetic tensors
#     (benchmarks/bench_train.py);
#  6. the GPU's memory in use, sampled every 200 ms by nvidia-smi through steps 3-5 (DALI has no
#     cap on device memory: this is the measured peak).
#
# On this workplace's lent GPU machines DALI is not installed and its wheel exceeds what one call
# can carry (64 MiB): a pruned copy of site-packages/nvidia (DALI, nvimgcodec, nvjpeg, nvcomp;
# other Pythons' extension modules and headers dropped) was tar'd, zstd-compressed (267 MB) and
# carried in five 56 MB pieces, each moved to /tmp by its call so it survives the next one while
# the machine stays warm, then unpacked with a carried zstd binary into a PYTHONPATH folder,
# together with wheels of kornia, kornia_rs, webdataset and DALI's pure-Python dependencies.
set -u
OUT=${OUT:-benchmarks/out}
DATA=${DATA:-/tmp/imagenet_like}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/ > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?"; tail -2 "$OUT/gpu_tests.log"

[ -f "$DATA/shards/manifest.json" ] || timeout 120 python3 benchmarks/make_corpus.py "$DATA" \
  --images 20000 --workers 16 --shard-size 1000

nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 200 > "$OUT/gpu_memory.csv" &
SMI=$!

timeout 180 fastssl bench "$DATA/shards" --recipe simclr --backend dali --device cuda --batch-size 256 \
  --batches 900 --warmup 20 --workers 16 --only fastssl,baseline --profile --quiet \
  --json "$OUT/gpu_simclr.json" 2>&1 | tail -20
timeout 90 fastssl bench "$DATA/shards" --recipe crop --backend dali --device cuda --batch-size 256 \
  --batches 900 --warmup 20 --workers 8 --only fastssl,dali_native --quiet \
  --json "$OUT/gpu_crop_native.json" 2>&1 | tail -6
timeout 150 python3 benchmarks/bench_train.py "$DATA/shards" --device cuda --backbone resnet50 --size 224 \
  --batch-size 256 --steps 60 --warmup 10 --json "$OUT/gpu_train.json" 2>&1 | tail -8

kill "$SMI" 2>/dev/null
awk -F', ' '{gsub(/ MiB/, "", $2); if ($2 + 0 > peak) peak = $2 + 0} END {print "peak GPU memory in use: " peak " MiB"}' \
  "$OUT/gpu_memory.csv"
