"""Knowledge distillation: RKD's terms against their definitions, every kind training a student
from a frozen teacher run (the teacher untouched, BatchNorm statistics included), clear refusals,
and a distilled small student beating the same student trained alone on Fashion-MNIST."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastssl.cli import main
from fastssl.data import fashion_mnist
from fastssl.train import PretrainConfig, pretrain
from fastssl.train.checkpoint import load_checkpoint
from fastssl.train.evaluate import classifier_accuracy, load_method
from fastssl.train.methods.distill import rkd_angle, rkd_distance
from tests.shardsets import demo_shard_set

SMALL = ["--width", "8", "--size", "32", "--batch-size", "16", "--workers", "1", "--quiet"]


def test_rkd_terms_ignore_scale_and_translation_and_see_structure() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(12, 6, generator=g)
    assert rkd_distance(3.0 * teacher, teacher) < 1e-6  # distances are compared relative to their mean
    assert rkd_angle(2.0 * teacher + 5.0, teacher) < 1e-6  # angles ignore scale and translation
    other = torch.randn(12, 6, generator=g)
    assert rkd_distance(other, teacher) > 1e-2 and rkd_angle(other, teacher) > 1e-2
    student = other.clone().requires_grad_(True)
    (25 * rkd_distance(student, teacher) + 50 * rkd_angle(student, teacher)).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Labelled demo shards, a small supervised teacher (class logits) and a SimCLR one (none)."""
    root = tmp_path_factory.mktemp("distill")
    shards = demo_shard_set(root / "shards", num_images=64, seed=4, shard_size=16)
    made = {"shards": shards}
    for method in ("supervised", "simclr"):
        out = root / method
        assert main(["pretrain", str(shards), "--method", method, "--backbone", "small_cnn", "--epochs", "1",
                     "--out", str(out), *SMALL]) == 0  # fmt: skip
        made[method] = out
    return made


@pytest.mark.parametrize(
    ("kind", "teacher"),
    [("kd", "supervised"), ("fitnets", "supervised"), ("rkd", "supervised"), ("embedding", "simclr")],
)
def test_every_kind_trains_a_student_and_leaves_the_teacher_as_it_was(runs, tmp_path, kind, teacher) -> None:
    out = tmp_path / kind
    argv = ["distill", str(runs["shards"]), "--teacher", str(runs[teacher]), "--student", "small_cnn",
            "--kind", kind, "--epochs", "2", "--out", str(out), *SMALL]  # fmt: skip
    assert main(argv) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["config"]["method"] == "distill" and state["step"] == 8
    saved_teacher = load_checkpoint(runs[teacher] / "checkpoint.pt")["model"]
    for name, value in saved_teacher.items():  # weights and BatchNorm statistics alike
        torch.testing.assert_close(state["model"][f"teacher.{name}"], value, msg=name)
    student, _ = load_method(out)
    assert student.teacher_run == str(runs[teacher])
    if kind != "embedding":
        assert 0.0 <= classifier_accuracy(student, str(runs["shards"]), size=32) <= 1.0


def test_distillation_resumes_exactly_and_runs_on_two_ranks(runs, tmp_path) -> None:
    base = ["distill", str(runs["shards"]), "--teacher", str(runs["supervised"]), "--kind", "fitnets",
            "--epochs", "2", *SMALL]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "whole")]) == 0
    assert main([*base, "--out", str(tmp_path / "cut"), "--max-steps", "3"]) == 0
    assert main([*base, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    whole, cut = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("whole", "cut"))
    assert whole["step"] == cut["step"] == 8
    for name, value in whole["model"].items():
        torch.testing.assert_close(cut["model"][name], value, msg=name)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "fastssl.cli", *base, "--out", str(tmp_path / "ddp"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert [s["plan"]["rank"] for s in state["loaders"]] == [0, 1] and state["step"] == 4


def test_a_teacher_without_logits_or_a_run_is_refused(runs, tmp_path) -> None:
    def config(teacher: Path, kind: str) -> PretrainConfig:
        return PretrainConfig(
            data=str(runs["shards"]), out=str(tmp_path / "x"), method="distill", backbone="small_cnn",
            width=8, size=32, progress=False, method_options={"teacher": str(teacher), "kind": kind},
        )  # fmt: skip

    with pytest.raises(ValueError, match=r"kd distils class logits, and the teacher .* has none"):
        pretrain(config(runs["simclr"], "kd"))
    with pytest.raises(ValueError, match="is not a run folder with a checkpoint.pt"):
        pretrain(config(tmp_path / "nowhere", "rkd"))


FASHION = pytest.mark.skipif(
    not fashion_mnist.available(),
    reason="Fashion-MNIST absent: apt-get install dataset-fashion-mnist (.ci/run does it where it can)",
)


@FASHION
def test_a_distilled_small_student_beats_the_same_student_trained_alone(tmp_path: Path) -> None:
    """A supervised teacher (small CNN, width 32, 20 epochs) on 2,000 labelled Fashion-MNIST
    images; a width-4 student trained 8 epochs with Hinton's KD (alpha 0.9) against the same
    student, data, labels, epochs and schedule without the teacher; their own classifiers tested on
    1,000 test images. At T = 1: the published T = 4 flattens this weak teacher's targets until
    they teach less than the labels (benchmarks/RESULTS.md, "Distillation")."""
    data = fashion_mnist.write_fashion_mnist(tmp_path / "fm", limit={"train": 2000, "test": 1000}, workers=1)
    common = dict(
        data=str(data["train"]), backbone="small_cnn", size=28, batch_size=64, lr=0.05, num_threads=2,
        progress=False, recipe_options={"scale": (0.3, 1.0)},
    )  # fmt: skip
    teacher = tmp_path / "teacher"
    pretrain(PretrainConfig(out=str(teacher), method="supervised", width=32, epochs=20, **common))
    student = {"width": 4, "epochs": 8, **common}
    pretrain(PretrainConfig(out=str(tmp_path / "alone"), method="supervised", **student))
    distil = {"teacher": str(teacher), "kind": "kd", "temperature": 1.0}
    pretrain(PretrainConfig(out=str(tmp_path / "kd"), method="distill", method_options=distil, **student))
    accuracy = {
        name: classifier_accuracy(load_method(tmp_path / name)[0], str(data["test"]), size=28)
        for name in ("teacher", "alone", "kd")
    }
    print(f"distillation on Fashion-MNIST 2000, tested on 1000: {accuracy}")
    assert accuracy["kd"] > accuracy["alone"] + 0.02, accuracy
