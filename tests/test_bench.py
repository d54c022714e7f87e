"""`fastssl bench` runs its three contestants and writes the table, the JSON and the PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastssl.bench.baseline import DecodeOnlyDataset, PilRecipeDataset
from fastssl.bench.harness import format_table, tree_usage
from fastssl.cli import main
from fastssl.data.manifest import Manifest
from fastssl.recipes import BYOL, ContextPrediction, Jigsaw, JigsawPP, PatchGrid, Rotation, SimCLR


def test_baseline_dataset_gives_the_recipes_views(shard_dir: Path) -> None:
    manifest = Manifest.load(shard_dir)
    for recipe in (SimCLR(size=32), BYOL(size=24), Rotation(size=16, resize=20)):
        views = PilRecipeDataset(manifest, recipe)[3]
        assert [tuple(v.shape) for v in views] == [(3, s.size, s.size) for s in recipe.views()]
        assert all(float(v.min()) >= -2.2 and float(v.max()) <= 2.7 for v in views)
    assert DecodeOnlyDataset(manifest)[0].tolist()[0] > 0


def test_patch_baseline_gives_the_recipes_tiles_and_targets(shard_dir: Path) -> None:
    from fastssl.bench.patch_baseline import PilPatchDataset

    manifest = Manifest.load(shard_dir)
    tiles, perm = PilPatchDataset(manifest, Jigsaw())[1]
    assert tiles.shape == (9, 3, 64, 64) and 0 <= int(perm) < 1000
    assert tiles.flatten(1).mean(1).abs().max() < 1e-3  # each tile normalised
    tiles, perm = PilPatchDataset(manifest, JigsawPP())[2]
    assert tiles.shape == (9, 3, 64, 64) and 0 <= int(perm) < 701
    centre, neighbour, label = PilPatchDataset(manifest, ContextPrediction())[0]
    assert centre.shape == neighbour.shape == (3, 64, 64) and 0 <= int(label) < 8
    (grid,) = PilPatchDataset(manifest, PatchGrid())[0]
    assert grid.shape == (49, 3, 64, 64)


def test_tree_usage_counts_this_process() -> None:
    cpu, rss = tree_usage()
    assert cpu > 0 and rss > 10 * 2**20


@pytest.mark.slow
def test_bench_command_prints_the_table_and_writes_json_and_plot(
    shard_dir: Path, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("matplotlib")
    args = [
        "bench", str(shard_dir), "--recipe", "simclr", "--backend", "kornia", "--batch-size", "4",
        "--batches", "2", "--warmup", "1", "--workers", "1", "--quiet",
        "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"),
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fastssl (kornia, cpu)" in out and "baseline" in out and "floor" in out
    report = json.loads((tmp_path / "b.json").read_text())
    assert set(report["results"]) == {"fastssl", "baseline", "floor"}
    assert report["results"]["baseline"]["vs_baseline"] == 1.0
    for result in report["results"].values():
        assert result["images"] == 8 and result["images_per_s"] > 0 and result["peak_rss_mb"] > 10
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert format_table(report).count("\n") == 4


def test_bench_refuses_unknown_contestants_and_recipes(shard_dir: Path, capsys) -> None:
    assert main(["bench", str(shard_dir), "--only", "ffcv"]) == 2
    assert main(["bench", str(shard_dir), "--recipe", "swav"]) == 2
    assert "unknown recipe" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_profiles_fastssl_s_stages_and_times_dali_s_own_pipeline(
    shard_dir: Path, tmp_path, capsys
) -> None:
    pytest.importorskip("nvidia.dali")
    args = [
        "bench", str(shard_dir), "--recipe", "crop", "--size", "32", "--backend", "dali", "--batch-size", "4",
        "--batches", "3", "--warmup", "1", "--workers", "1", "--quiet", "--profile",
        "--only", "fastssl,dali_native", "--json", str(tmp_path / "b.json"),
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "recipe crop 32 px" in out and "dali_native" in out and "next(loader)" in out
    report = json.loads((tmp_path / "b.json").read_text())
    assert all(r["images"] == 12 and r["images_per_s"] > 0 for r in report["results"].values())
    profile = report["results"]["fastssl"]["profile_us_per_sample"]
    host = {"read", "checks", "labels", "params", "pack"}
    stages = host | {"feed", "decode + views", "to_torch", "next(loader)", "next(loader) cpu", "to_torch cpu"}
    assert set(profile) == stages and all(v >= 0 for v in profile.values())
    # the host stages happen in the feeder processes; on the CPU the graph's stages in the backend's
    # run-ahead thread, overlapping the consumer (they are not part of next(loader) there)
    assert all(profile[stage] > 0 for stage in ("feed", "decode + views", "to_torch"))
    assert profile["next(loader) cpu"] <= profile["next(loader)"] * 1.05
    assert profile["read"] > 0 and profile["params"] > 0
    assert main(["bench", str(shard_dir), "--recipe", "jigsaw", "--only", "dali_native"]) == 2
    assert "whole-image random-resized-crop recipes" in capsys.readouterr().err


def test_bench_times_the_webdataset_loader_with_the_baseline_s_views(
    shard_dir: Path, tmp_path, capsys
) -> None:
    args = [
        "bench", str(shard_dir), "--recipe", "simclr", "--size", "32", "--batch-size", "4", "--batches", "2",
        "--warmup", "1", "--workers", "1", "--quiet", "--only", "webdataset",
        "--json", str(tmp_path / "w.json"),
    ]  # fmt: skip
    assert main(args) == 0
    assert "WebDataset's README" in capsys.readouterr().out
    (result,) = json.loads((tmp_path / "w.json").read_text())["results"].values()
    assert result["images"] == 8 and result["images_per_s"] > 0
    assert main(["bench", str(shard_dir), "--recipe", "jigsaw", "--only", "webdataset"]) == 2
    assert "whole-image recipes" in capsys.readouterr().err


def test_webdataset_batches_stack_each_view(shard_dir: Path) -> None:
    from fastssl.bench.webdataset_pipeline import webdataset_batches

    batch = next(webdataset_batches(Manifest.load(shard_dir), SimCLR(size=24), batch_size=3, workers=0))
    assert [tuple(v.shape) for v in batch] == [(3, 3, 24, 24)] * 2
    assert all(v.dtype.is_floating_point and float(v.min()) >= -2.2 for v in batch)


def test_dali_native_makes_every_view_of_a_two_view_recipe(shard_dir: Path) -> None:
    """DALI's documented ops for SimCLR's views (jitter, gray, blur, solarize under coin flips)."""
    pytest.importorskip("nvidia.dali")
    from fastssl.bench.dali_native import native_batches, supports

    recipe = BYOL(size=24)  # both views, blur on one, solarize on the other
    assert supports(recipe) and not supports(Rotation()) and not supports(Jigsaw())
    batch = next(native_batches(Manifest.load(shard_dir), recipe, batch_size=4, threads=1))
    assert [tuple(v.shape) for v in batch] == [(4, 3, 24, 24)] * 2
    assert all(v.dtype.is_floating_point and float(v.min()) >= -2.2 and float(v.max()) <= 2.7 for v in batch)
    assert not torch.equal(batch[0], batch[1])
