# The two entry points: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use and install the project from pyproject.toml,
# pinned by constraints.txt; later runs reuse it and reinstall only when those change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastssl-installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: test demo lint bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fastssl needs Python 3.11 or newer; set PYTHON=python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]' -c constraints.txt
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/fastssl demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/bench_shard_writer.py --repeats 5
	$(PY) benchmarks/bench_plan.py --repeats 15
	$(PY) benchmarks/bench_perms.py --json benchmarks/out/bench_perms.json
	$(PY) benchmarks/bench_patches.py --json benchmarks/out/bench_patches_cpu.json
	$(VENV)/bin/fastssl demo --quiet
	for r in simclr crop jigsaw context; do for b in dali kornia; do \
	  $(VENV)/bin/fastssl bench demo_out/shards --recipe $$r --backend $$b --batch-size 64 --batches 12 --warmup 2 \
	    --quiet --json benchmarks/out/bench_$${r}_$${b}.json --plot benchmarks/out/bench_$${r}_$${b}.png; done; done
	$(PY) benchmarks/bench_ablation.py demo_out/shards --backend dali --batch-size 64 --batches 8
	$(PY) benchmarks/bench_ablation.py demo_out/shards --backend kornia --batch-size 64 --batches 8
	$(PY) benchmarks/bench_header.py demo_out/shards --repeats 5
	$(PY) benchmarks/bench_host.py demo_out/shards --repeats 3 --json benchmarks/out/bench_host.json
	$(PY) benchmarks/bench_roofline.py demo_out/shards --images 128 --repeats 3 --json benchmarks/out/bench_roofline.json
	$(VENV)/bin/fastssl bench demo_out/shards --recipe simclr --backend dali --batch-size 64 --batches 12 --warmup 2 \
	  --only fastssl,baseline,floor,webdataset --quiet --json benchmarks/out/bench_simclr_webdataset.json
	$(PY) benchmarks/bench_consumer.py demo_out/shards --epochs 2 --json benchmarks/out/bench_consumer.json
	for s in 64 112; do $(VENV)/bin/fastssl bench demo_out/shards --recipe crop --size $$s --backend dali \
	  --only fastssl,dali_native --batch-size 64 --batches 30 --warmup 3 --quiet --json benchmarks/out/crop$${s}_native.json; done
	$(VENV)/bin/fastssl bench demo_out/shards --recipe simclr --backend dali --batch-size 64 --batches 12 --warmup 2 \
	  --quiet --profile --json benchmarks/out/bench_simclr_profile.json
	for b in dali kornia; do $(PY) benchmarks/bench_soak.py --epochs 100 --shards 2 --backend $$b \
	  --json benchmarks/out/soak_$$b.json; done

clean-venv:
	rm -rf $(VENV)
