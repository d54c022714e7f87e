"""Training parts on their own: losses against plain references, LARS, schedules, backbones,
checkpoints (atomic, weights-only), and the kNN / linear probes."""

from __future__ import annotations

import math
import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastssl.train.backbones import BasicBlock, Bottleneck, ResNet, build_backbone
from fastssl.train.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from fastssl.train.evaluate import knn_accuracy, linear_probe_accuracy, split_by_key
from fastssl.train.losses import byol_regression, moco_infonce, nt_xent
from fastssl.train.optim import LARS, cosine_momentum, warmup_cosine


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """SimCLR's loss written out view by view (Chen et al. 2020, algorithm 1)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = torch.stack([z[i] @ z[k] / t for k in range(2 * n) if k != i])
        total = total - (z[i] @ z[j] / t - torch.logsumexp(sims, dim=0))
    return total / (2 * n)


def test_nt_xent_matches_the_paper_and_ignores_invalid_samples():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8)
    got = nt_xent(z1, z2, 0.5)
    torch.testing.assert_close(got, nt_xent_reference(z1, z2, 0.5))
    got.backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    valid = torch.tensor([True, True, False, True, False, True])
    torch.testing.assert_close(nt_xent(z1, z2, 0.5, valid), nt_xent_reference(z1[valid], z2[valid], 0.5))


def test_moco_and_byol_losses():
    torch.manual_seed(1)
    q, queue = torch.randn(4, 8), F.normalize(torch.randn(32, 8), dim=1)
    low = moco_infonce(q, q * 3, queue, 0.2)  # the key is the query itself: easy positive
    high = moco_infonce(q, -q, queue, 0.2)
    assert low < math.log(33) < high
    assert float(byol_regression(q, q * 2)) == pytest.approx(0.0, abs=1e-6)
    assert float(byol_regression(q, -q)) == pytest.approx(4.0)


def test_schedules_and_momentum():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1) and warmup_cosine(9, 100, 10) == 1.0
    assert warmup_cosine(10, 100, 10) == 1.0 and warmup_cosine(100, 100, 10) == pytest.approx(0.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert cosine_momentum(0.996, 0, 50) == pytest.approx(0.996) and cosine_momentum(0.996, 50, 50) == 1.0


def test_lars_scales_weight_steps_by_the_trust_ratio_and_leaves_biases_plain():
    w = torch.nn.Parameter(torch.full((2, 2), 2.0))
    b = torch.nn.Parameter(torch.ones(2))
    w.grad, b.grad = torch.full((2, 2), 0.5), torch.full((2,), 0.5)
    LARS([w, b], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.1).step()
    trust = 0.1 * 4.0 / 1.0  # eta * ||w|| / ||g||
    torch.testing.assert_close(w.detach(), torch.full((2, 2), 2.0 - trust * 0.5))
    torch.testing.assert_close(b.detach(), torch.full((2,), 0.5))


def test_local_resnets_have_torchvisions_architecture():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ResNet(BasicBlock, (2, 2, 2, 2))) == 11_176_512  # torchvision resnet18 minus its fc
    assert count(ResNet(Bottleneck, (3, 4, 6, 3))) == 23_508_032  # resnet50 minus its fc
    model, dim = build_backbone("resnet18")
    assert dim == 512 and model(torch.zeros(2, 3, 64, 64)).shape == (2, 512)
    small, width = build_backbone("small_cnn", width=8)
    assert small(torch.zeros(2, 3, 28, 28)).shape == (2, width) == (2, 32)
    custom, found = build_backbone(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(7)))
    assert found == 7
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vit")


def test_checkpoints_are_atomic_and_refuse_pickled_code(tmp_path):
    path = save_checkpoint(
        tmp_path / "run" / "checkpoint.pt", {"step": 3, "w": torch.ones(2), "rng": (1, [2])}
    )
    assert load_checkpoint(path)["step"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # no temporary left
    evil = tmp_path / "evil.pt"
    torch.save({"payload": os.system}, evil)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(evil)


def test_a_failed_save_keeps_the_previous_checkpoint_and_no_temporary(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1})
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for an unpicklable value
        save_checkpoint(path, {"step": 2, "bad": (x for x in range(3))})
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_stale_temporaries_of_dead_writers_on_this_host_are_removed_and_no_others(tmp_path):
    path = tmp_path / "checkpoint.pt"
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can hold it
    host = socket.gethostname()
    names = {
        "dead": f".checkpoint.pt.tmp-{dead}@{host}",
        "dead_without_host": f".checkpoint.pt.tmp-{dead}",  # the name used before hosts were recorded
        "alive": f".checkpoint.pt.tmp-{os.getpid()}@{host}",
        "elsewhere": f".checkpoint.pt.tmp-{dead}@another-host.example",
        "foreign": ".checkpoint.pt.tmp-notes.txt",
        "other_file": ".other.pt.tmp-1",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    removed, kept = remove_stale_temporaries(path)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["dead_without_host"]])
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {names["alive"], names["elsewhere"], names["foreign"], names["other_file"]}
    assert len(kept) == 3 and any("another-host.example" in note for note in kept)
    assert any(f"pid {os.getpid()}) is still running" in note for note in kept)
    assert remove_stale_temporaries(tmp_path / "absent" / "checkpoint.pt") == ([], [])


def test_probes_on_separable_and_random_features():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=generator) * 4
    labels = torch.arange(500) % 5
    feats = centres[labels] + torch.randn(500, 16, generator=generator)
    assert knn_accuracy(feats[:400], labels[:400], feats[400:], labels[400:]) > 0.95
    assert linear_probe_accuracy(feats[:400], labels[:400], feats[400:], labels[400:]) > 0.95
    noise = torch.randn(500, 16, generator=generator)
    assert knn_accuracy(noise[:400], labels[:400], noise[400:], labels[400:]) < 0.4
    split = split_by_key([f"k{i}" for i in range(2000)])
    assert 0.17 < split.mean() < 0.23 and (split == split_by_key([f"k{i}" for i in range(2000)])).all()
