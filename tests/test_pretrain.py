"""`fastssl pretrain` and `fastssl eval`: every method trains, two-rank torchrun runs of SimCLR and MoCo
on CPU, exact resumption after SIGKILL, and the evaluation command."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from fastssl.cli import main
from fastssl.train import METHODS, PretrainConfig, pretrain
from fastssl.train.checkpoint import load_checkpoint
from fastssl.train.loop import build_method
from tests.shardsets import demo_shard_set

SMALL = ["--backbone", "small_cnn", "--width", "8", "--size", "32", "--batch-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    return demo_shard_set(root, num_images=96, seed=2, shard_size=32)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"distill"}))  # distill: tests/test_distill.py
def test_every_method_trains_and_writes_its_run(shards, tmp_path, method):
    options = {
        "mocov2": {"queue_size": 64}, "dino": {"out_dim": 64, "hidden": 32, "bottleneck": 16},
        "deepcluster": {"clusters": 8},
    }  # fmt: skip
    config = PretrainConfig(
        data=str(shards), out=str(tmp_path / method), method=method, backbone="small_cnn", width=8,
        size=32, batch_size=16, max_steps=3, log_every=1, num_threads=1, progress=False,
        method_options=options.get(method, {}),
    )  # fmt: skip
    summary = pretrain(config)
    assert summary["steps"] == 3 and torch.isfinite(torch.tensor(summary["loss"]))
    state = load_checkpoint(tmp_path / method / "checkpoint.pt")
    assert state["step"] == 3 and state["config"]["method"] == method and len(state["loaders"]) == 1
    records = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    events = [r["event"] for r in records if "event" in r]
    assert events == (["clusters"] if method == "deepcluster" else [])  # DeepCluster's before epoch 0
    records = [r for r in records if "event" not in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert set(records[0]) >= {"epoch", "step", "loss", "lr", "images_per_s", "loader_wait"}
    assert all(0 <= r["loader_wait"] <= 1 for r in records)
    assert (tmp_path / method / "loss.png").stat().st_size > 0
    pictures = sorted((tmp_path / method).glob("pictures/*.png"))
    if method in ("colorization", "inpainting", "superres"):  # input | target | prediction, 8 rows
        assert [p.name for p in pictures] == ["epoch-000.png"]
        with Image.open(pictures[0]) as picture:
            assert picture.size == (3 * 32, 8 * 34) and picture.mode == "RGB"
    else:
        assert pictures == []


TWO_RANK_OPTIONS = {
    "mocov2": ["--queue-size", "64"],
    "dino": [f"--method-option={k}={v}" for k, v in {"out_dim": 64, "hidden": 32, "bottleneck": 16}.items()],
    "inpainting": ["--method-option", "adversarial=0.001", "--method-option", "discriminator_width=8"],
}


@pytest.mark.parametrize("method", ["simclr", "mocov2", "dino", "inpainting"])
def test_two_rank_torchrun_runs_on_cpu(shards, tmp_path, method):
    run = tmp_path / method
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "fastssl.cli", "pretrain", str(shards), "--out", str(run), "--method", method,
        "--epochs", "1", "--log-keys", "--workers", "1", *SMALL, *TWO_RANK_OPTIONS.get(method, []),
    ]  # fmt: skip
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(run / "checkpoint.pt")
    assert [s["plan"]["rank"] for s in state["loaders"]] == [0, 1]
    keys = []
    for rank in (0, 1):
        for line in (run / f"keys-rank{rank}.jsonl").read_text().splitlines():
            keys += json.loads(line)["keys"]
    assert len(set(keys)) == 96  # every sample trained on in the epoch, across the two ranks
    if method == "dino":  # the centre (all-reduced over both ranks' teacher outputs) was updated
        assert torch.isfinite(state["model"]["center"]).all() and state["model"]["center"].abs().sum() > 0
    if method == "inpainting":  # the discriminator trained in the same DDP step as the generator
        initial = build_method(PretrainConfig(**state["config"])).discriminator[0].weight
        trained = state["model"]["discriminator.0.weight"]
        assert torch.isfinite(trained).all() and not torch.allclose(trained, initial)
        assert (run / "pictures" / "epoch-000.png").exists()


def _keys_by_step(run: Path) -> dict[int, list[str]]:
    steps = {}
    for line in (run / "keys-rank0.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps[record["step"]] = record["keys"]  # a resumed run rewrites the steps after its checkpoint
    return steps


# `fastssl pretrain` that SIGKILLs itself halfway through writing the checkpoint of step KILL_AT: what
# a kill landing inside torch.save leaves, at a moment the test chooses instead of one it races for.
KILLED_MID_SAVE = """
import os, signal, sys
import torch
import fastssl.train.checkpoint as checkpoint
from fastssl.cli import main

real_save, kill_at = torch.save, int(os.environ["KILL_AT"])

def save(state, f, *args, **kwargs):
    if state.get("step") == kill_at:
        with open(f, "wb") as partial:
            partial.write(b"PK")  # the start of a zip archive, and no more
            partial.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(state, f, *args, **kwargs)

checkpoint.torch.save = save
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_save_then_resume_removes_the_temporary_and_continues_the_same_stream(shards, tmp_path):
    args = ["pretrain", str(shards), "--method", "simclr", "--epochs", "2", "--log-keys",
            "--checkpoint-every", "2", "--workers", "1", *SMALL]  # fmt: skip
    whole = tmp_path / "whole"
    cli = [sys.executable, "-m", "fastssl.cli"]
    assert subprocess.run([*cli, *args, "--out", str(whole)], env=_env(), timeout=300).returncode == 0
    broken = tmp_path / "broken"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_SAVE, *args, "--out", str(broken)],
        env={**_env(), "KILL_AT": "6"}, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(broken / "checkpoint.pt")["step"] == 4  # the final name holds the last whole one
    (left,) = broken.glob(".checkpoint.pt.tmp*")  # the kill's leftover: its writer is dead
    live = broken / f".checkpoint.pt.tmp-{os.getpid()}@{socket.gethostname()}"  # a writer still running
    live.write_bytes(b"PK")
    resumed = subprocess.run(
        [*cli, *args, "--out", str(broken), "--resume"],
        env=_env(), timeout=300, capture_output=True, text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"removed {left}, a temporary checkpoint whose writer was killed" in resumed.stderr
    assert f"kept {live}: its writer (pid {os.getpid()}) is still running" in resumed.stderr
    assert list(broken.glob(".checkpoint.pt.tmp*")) == [live]
    expected, got = _keys_by_step(whole), _keys_by_step(broken)
    assert sorted(expected) == sorted(got) == list(range(1, 13))
    assert all(got[s] == expected[s] for s in range(5, 13)), "resumed stream differs"
    final_whole = load_checkpoint(whole / "checkpoint.pt")["model"]
    final_resumed = load_checkpoint(broken / "checkpoint.pt")["model"]
    for name, value in final_whole.items():
        torch.testing.assert_close(final_resumed[name], value, msg=name)


def test_eval_command_reports_knn_and_linear_against_random_init(shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["pretrain", str(shards), "--out", str(run), "--max-steps", "2", "--workers", "1", *SMALL]) == 0
    )
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--data", str(shards), "--random-init", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for name in ("trained", "random_init"):
        assert 0 <= result[name]["knn"] <= 1 and 0 <= result[name]["linear"] <= 1
        assert result[name]["train_samples"] + result[name]["test_samples"] == 96
    assert "random_init" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "nothing"), "--data", str(shards)]) == 2
    assert main(["pretrain", str(shards), "--out", str(run), "--queue-size", "8", *SMALL]) == 2
    assert "takes no option queue_size" in capsys.readouterr().err


def test_ctrl_c_stops_at_a_step_boundary_with_a_valid_checkpoint(shards, tmp_path):
    run = tmp_path / "interrupted"
    command = [sys.executable, "-m", "fastssl.cli", "pretrain", str(shards), "--out", str(run),
               "--epochs", "100", "--log-keys", "--workers", "1", *SMALL]  # fmt: skip
    process = subprocess.Popen(command, env=_env(), stderr=subprocess.PIPE, text=True)
    keys = run / "keys-rank0.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if keys.exists() and len(keys.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0 and "KeyboardInterrupt" in err
    state = load_checkpoint(run / "checkpoint.pt")
    steps_done = len(keys.read_text().splitlines())
    assert state["step"] == steps_done >= 3  # the checkpoint is the last completed step
    assert not list(run.glob(".checkpoint.pt.tmp*"))
    resumed = subprocess.run(
        [*command, "--resume", "--epochs", "2"], env=_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 2 and "epochs 100 -> 2" in resumed.stderr


def test_moco_queue_takes_the_newest_keys_when_a_batch_outgrows_it():
    from fastssl.train.backbones import build_backbone
    from fastssl.train.methods import MoCoV2

    backbone, dim = build_backbone("small_cnn", width=4)
    moco = MoCoV2(backbone, dim, queue_size=8, out_dim=4)
    keys = torch.arange(40.0).view(10, 4) + 1
    moco._enqueue(keys, torch.ones(10, dtype=torch.bool))
    torch.testing.assert_close(moco.queue, torch.nn.functional.normalize(keys[-8:], dim=1))
    assert int(moco.queue_ptr) == 0
    moco._enqueue(keys[:3], torch.tensor([True, False, True]))
    assert int(moco.queue_ptr) == 2


def _global_keys_by_step(run: Path) -> dict[int, set[str]]:
    """Each step's keys over every rank that logged it (a rank's later records replace earlier)."""
    steps: dict[int, dict[int, list[str]]] = {}
    for path in sorted(run.glob("keys-rank*.jsonl")):
        rank = int(path.stem.removeprefix("keys-rank"))
        for line in path.read_text().splitlines():
            record = json.loads(line)
            steps.setdefault(record["step"], {})[rank] = record["keys"]
    return {step: {k for keys in by_rank.values() for k in keys} for step, by_rank in steps.items()}


def test_resume_on_another_number_of_ranks_continues_the_global_stream(shards, tmp_path):
    """Two torchrun ranks of 8 stop at step 2; one rank resumes with the global batch of 16 and
    trains on exactly the samples an uninterrupted one-rank run of batch 16 trains on, step for step."""
    small = [a for a in SMALL if a not in ("--batch-size", "16")]
    args = ["pretrain", str(shards), "--method", "simclr", "--epochs", "1", "--log-keys", "--workers", "1",
            *small]  # fmt: skip
    cli = [sys.executable, "-m", "fastssl.cli"]
    whole = tmp_path / "whole"
    done = subprocess.run([*cli, *args, "--batch-size", "16", "--out", str(whole)], env=_env(), timeout=300)
    assert done.returncode == 0
    elastic = tmp_path / "elastic"
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "fastssl.cli", *args, "--batch-size", "8", "--max-steps", "2", "--out", str(elastic)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    state = load_checkpoint(elastic / "checkpoint.pt")
    assert state["step"] == 2 and state["loaders"][0]["plan"]["global_batch"] == 16
    one = subprocess.run(
        [*cli, *args, "--batch-size", "8", "--out", str(elastic), "--resume"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    assert "resuming a 2-rank run on 1 ranks: each takes 16 of the global batch of 16" in one.stderr
    expected, got = _global_keys_by_step(whole), _global_keys_by_step(elastic)
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    assert all(got[s] == expected[s] for s in expected), "the resumed global stream differs"
    assert load_checkpoint(elastic / "checkpoint.pt")["step"] == 6


def test_the_knn_monitor_logs_the_backbones_accuracy_every_n_epochs(shards, tmp_path):
    from fastssl.train import evaluate, load_backbone

    config = PretrainConfig(
        data=str(shards), out=str(tmp_path / "run"), backbone="small_cnn", width=8, size=32,
        batch_size=16, epochs=2, num_threads=1, progress=False, knn_every=1, knn_data=str(shards),
        monitor_linear=True,
    )  # fmt: skip
    pretrain(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    knn = [r for r in records if r.get("event") == "knn"]
    assert [(r["epoch"], r["step"]) for r in knn] == [(0, 6), (1, 12)]  # 96 samples, batch 16
    assert all(r["knn_train_samples"] + r["knn_test_samples"] == 96 for r in knn)
    # the last one is the saved backbone's accuracy, as `fastssl eval` measures it
    final = evaluate(load_backbone(tmp_path / "run")[0], str(shards), size=32)
    assert knn[-1]["knn"] == pytest.approx(final["knn"])
    assert knn[-1]["linear"] == pytest.approx(final["linear"]) and all(r["seconds"] > 0 for r in knn)
    with pytest.raises(ValueError, match="knn_every needs knn_data"):
        pretrain(dataclasses.replace(config, knn_data=None, out=str(tmp_path / "other")))
