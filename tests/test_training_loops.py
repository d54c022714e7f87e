"""The loader drops into a DDP loop under torchrun (2 CPU ranks, gloo) and covers the epoch once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastssl.data.manifest import Manifest
from fastssl.data.writer import write_shards
from tests.conftest import make_image_folder


@pytest.mark.slow
def test_ddp_loop_under_torchrun_covers_each_sample_once(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "src", per_class=7)
    write_shards(tmp_path / "src", tmp_path / "shards", shard_size=5, workers=1, progress=False)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "fastssl.examples.ddp_loop", str(tmp_path / "shards"),
        "--epochs", "2", "--batch-size", "4", "--size", "32", "--out", str(tmp_path / "keys"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epoch 1:" in done.stdout
    seen = [k for r in range(2) for k in json.loads((tmp_path / "keys" / f"rank{r}.json").read_text())]
    manifest = Manifest.load(tmp_path / "shards")
    assert manifest.num_samples == 21
    assert len(seen) == 2 * 21 and len(set(seen)) == 21  # two epochs, each sample once per epoch
