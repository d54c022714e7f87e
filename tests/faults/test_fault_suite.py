"""One test per planted fault and policy, on every backend: `raise` names shard, key and cause from
the iterator; `skip` counts and lists the bad samples and still covers every other one exactly once,
with the same number of batches on every rank."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from fastssl.data.faults import FAULTS, PlantedFault, all_keys, plant_fault
from fastssl.data.manifest import Manifest
from fastssl.errors import DataError
from fastssl.loader import SSLLoader
from fastssl.recipes import SimCLR

RECIPE = SimCLR(size=24)
BATCH = 5


@pytest.fixture(scope="module", params=FAULTS)
def planted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PlantedFault:
    return plant_fault(tmp_path_factory.mktemp(request.param), request.param)


def _loader(planted: PlantedFault, backend: tuple[str, str], **kw) -> SSLLoader:
    name, device = backend
    options = {"num_threads": 1, **planted.loader_options, **kw}
    return SSLLoader(planted.root, RECIPE, BATCH, backend=name, device=device, **options)


@pytest.mark.timeout(120)
def test_raise_names_shard_key_and_cause_from_the_iterator(planted, backend) -> None:
    with _loader(planted, backend) as loader, pytest.raises(DataError) as info:
        for _ in loader:
            pass
    err = info.value
    assert isinstance(err, planted.error), f"{type(err).__name__}: {err}"
    assert (err.shard, err.key) in planted.bad
    assert planted.says in err.reason
    assert f"shard {err.shard!r}" in str(err) and f"key {err.key!r}" in str(err)


@pytest.mark.timeout(180)
def test_skip_counts_lists_and_covers_every_other_sample_once_on_two_ranks(planted, backend) -> None:
    batches, skipped = [], []
    for rank in (0, 1):
        with _loader(planted, backend, on_error="skip", rank=rank, world_size=2) as loader:
            got = list(loader)
            assert len(got) == len(loader)
            batches.append(got)
            skipped += loader.skipped
    assert len(batches[0]) == len(batches[1]) > 0
    assert all(b["views"][0].shape[0] == len(b["key"]) for rank in batches for b in rank)
    valid = Counter(
        key
        for rank in batches
        for b in rank
        for key, ok in zip(b["key"], b["valid"].tolist(), strict=True)
        if ok
    )
    expected = all_keys(planted.root) - Counter(key for _, key in planted.bad)
    assert valid == expected
    assert Counter((s["shard"], s["key"]) for s in skipped) == Counter(planted.bad)
    assert all(planted.says in s["reason"] and s["epoch"] == 0 for s in skipped)


def test_every_fault_is_planted_where_it_says(planted) -> None:
    """The generator itself: the bad samples exist in the shard set's indexes."""
    keys = all_keys(planted.root)
    assert all(keys[key] >= 1 for _, key in planted.bad)
    assert sum(keys.values()) == 24


def test_inspect_verify_reports_the_fault_without_training(planted, capsys) -> None:
    from fastssl.cli import main

    assert main(["inspect", str(planted.root), "--verify"]) == 1
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if "problem:" in line]
    assert problems and all(shard in out for shard, _ in planted.bad)
    if len(planted.bad) == 1:
        assert repr(planted.bad[0][1]) in out


def test_a_bad_sample_that_also_pads_the_epoch_is_listed_once(tmp_path, backend) -> None:
    """24 samples on 5 ranks: one padding entry repeats a sample; with a seed where it repeats the
    bad one, the bad sample is still listed once and every good one covered once."""
    from fastssl.data.plan import EpochPlan

    planted = plant_fault(tmp_path / "set", "bad_label")
    manifest = Manifest.load(planted.root)
    ranks = 5

    def pads_the_victim(seed: int) -> bool:
        for rank in range(ranks):
            plan = EpochPlan(manifest, epoch=0, seed=seed, batch_size=BATCH, world_size=ranks, rank=rank)
            padding = ~plan.valid
            if any((s, n) == (1, 3) for s, n in zip(plan.shard[padding], plan.sample[padding], strict=True)):
                return True
        return False

    seed = next(s for s in range(2000) if pads_the_victim(s))
    valid, skipped = Counter(), []
    for rank in range(ranks):
        with _loader(planted, backend, on_error="skip", rank=rank, world_size=ranks, seed=seed) as loader:
            for b in loader:
                valid.update(k for k, ok in zip(b["key"], b["valid"].tolist(), strict=True) if ok)
            skipped += loader.skipped
    assert [(s["shard"], s["key"]) for s in skipped] == list(planted.bad)
    assert valid == all_keys(planted.root) - Counter(key for _, key in planted.bad)


def test_checksums_are_checked_once_before_workers_start_and_need_a_manifest(tmp_path, monkeypatch) -> None:
    from fastssl.data import source as source_module
    from fastssl.data.faults import clean_shards

    root = tmp_path / "clean"
    clean_shards(root)
    log = tmp_path / "hashed.txt"  # a file: forked decode workers append to it too
    real = source_module.sha256_file

    def logged(path):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {Path(path).name}\n")
        return real(path)

    monkeypatch.setattr(source_module, "sha256_file", logged)
    with SSLLoader(root, RECIPE, BATCH, backend="kornia", num_threads=2, verify_checksums=True) as loader:
        for _ in range(2):
            assert sum(len(b["key"]) for b in loader) == 24
    me = str(os.getpid())
    assert sorted(log.read_text().splitlines()) == [f"{me} shard-00000{i}.tar" for i in range(3)]
    with pytest.raises(ValueError, match="verify_checksums needs recorded checksums"):
        SSLLoader(sorted(root.glob("*.tar")), RECIPE, BATCH, backend="kornia", verify_checksums=True)


def test_inspect_verify_finds_a_key_repeated_across_shards(tmp_path, capsys) -> None:
    from fastssl.cli import main
    from fastssl.data.faults import small_jpeg, write_raw_shards

    sample = {"cls": b"0", "jpg": small_jpeg(seed=1)}
    write_raw_shards(tmp_path, [[("a", sample), ("b", sample)], [("c", sample), ("a", sample)]])
    assert main(["inspect", str(tmp_path), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "key 'a' is in shard 'shard-000000.tar' and again in 'shard-000001.tar'" in out
    assert "1 problems" in out
