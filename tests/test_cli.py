"""The `fastssl` console script: help, exit codes and what it prints."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import fastssl.data.writer as writer_module
from fastssl.cli import main
from fastssl.data.faults import plant_bad_files
from fastssl.data.index import build_index
from fastssl.data.manifest import Manifest, sha256_file


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastssl.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_subcommand():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("shards", "index", "inspect", "demo"):
        assert command in result.stdout
    shards_help = run_cli("shards", "--help").stdout
    for option in (
        "--shard-size",
        "--workers",
        "--max-side",
        "--quality",
        "--shuffle-seed",
        "--overwrite",
        "rejects.jsonl",
    ):
        assert option in shards_help


def test_shards_with_bad_files_writes_good_ones_and_lists_bad(image_folder: Path, tmp_path: Path, capsys):
    planted = plant_bad_files(image_folder / "cat")
    out = tmp_path / "out"
    assert main(["shards", str(image_folder), str(out), "--workers", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "written  15 samples" in printed
    assert f"rejected {len(planted)}" in printed
    assert f"written + rejected = {15 + len(planted)} = {15 + len(planted)} inputs" in printed
    rejects = (out / "rejects.jsonl").read_text()
    for name in planted:
        assert name in rejects


def test_nothing_written_exits_non_zero(tmp_path: Path, capsys):
    src = tmp_path / "bad"
    plant_bad_files(src)
    assert main(["shards", str(src), str(tmp_path / "out"), "--workers", "1", "--quiet"]) == 1
    assert "nothing was written" in capsys.readouterr().err


def test_unusable_output_exits_with_usage_error(image_folder: Path, tmp_path: Path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["shards", str(image_folder), str(tmp_path / "file" / "out"), "--quiet"]) == 2
    assert "not writable" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["shards", str(image_folder), str(out), "--workers", "1", "--quiet"]) == 0
    assert main(["shards", str(image_folder), str(out), "--workers", "1", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["shards", str(tmp_path / "missing"), str(out), "--quiet"]) == 2


def test_index_command_rebuilds_an_index(shard_dir: Path, capsys):
    idx = shard_dir / "shard-000000.idx"
    original = idx.read_text()
    idx.unlink()
    assert main(["index", str(shard_dir / "shard-000000.tar")]) == 0
    assert idx.read_text() == original
    assert "4 samples, members cls, jpg" in capsys.readouterr().out


def test_inspect_verify_finds_a_corrupted_shard(shard_dir: Path, capsys):
    assert main(["inspect", str(shard_dir), "--verify"]) == 0
    assert "verify    OK" in capsys.readouterr().out
    tar = shard_dir / "shard-000001.tar"
    data = bytearray(tar.read_bytes())
    data[1600:1700] = b"\0" * 100  # inside the first sample's JPEG data
    tar.write_bytes(bytes(data))
    assert main(["inspect", str(shard_dir), "--verify"]) == 1
    printed = capsys.readouterr().out
    assert "shard-000001.tar: checksum does not match the manifest" in printed


def test_inspect_verify_finds_a_jpeg_cut_off_after_its_headers(shard_dir: Path, capsys):
    manifest = Manifest.load(shard_dir)
    tar = manifest.shard_path(2)
    offset, size = build_index(tar).member(1, "jpg")
    data = bytearray(tar.read_bytes())
    data[offset + 200 : offset + size] = b"\0" * (size - 200)  # JPEG cut off after its headers
    tar.write_bytes(bytes(data))
    infos = list(manifest.shards)
    infos[2] = dataclasses.replace(infos[2], sha256=sha256_file(tar))  # checksum still agrees
    dataclasses.replace(manifest, shards=tuple(infos)).save(shard_dir)
    assert main(["inspect", str(shard_dir), "--verify"]) == 1
    printed = capsys.readouterr().out
    key = build_index(tar).keys[1]
    assert (
        f"truncated JPEG: no end-of-image marker after its scan data ({size} bytes) "
        f"(shard 'shard-000002.tar', key {key!r})" in printed
    )
    assert "checksum does not match" not in printed


def test_sigterm_removes_the_shard_in_progress(image_folder: Path, tmp_path: Path, monkeypatch):
    real, calls = writer_module.read_and_prepare, []

    def terminate_on_fifth(path, **kwargs):
        calls.append(path)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(path, **kwargs)

    monkeypatch.setattr(writer_module, "read_and_prepare", terminate_on_fifth)
    previous = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    try:
        with pytest.raises(SystemExit) as info:
            main(["shards", str(image_folder), str(out), "--workers", "1", "--shard-size", "3", "--quiet"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert info.value.code == 128 + signal.SIGTERM
    assert sorted(p.name for p in out.iterdir()) == [
        "shard-000000.idx",
        "shard-000000.sums",
        "shard-000000.tar",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["shards"],
        ["shards", "a", "b", "--shard-size", "0"],
        ["shards", "a", "b", "--quality", "101"],
        ["nope"],
    ],
)
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
