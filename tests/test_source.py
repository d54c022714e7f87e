"""ByteSource: positional reads through the index, and clear errors when index and tar disagree."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest

from fastssl.data.manifest import Manifest
from fastssl.data.plan import EpochPlan
from fastssl.data.source import ByteSource
from fastssl.errors import DataError, IndexMismatchError, MissingMemberError, ShardError


def tar_contents(manifest: Manifest) -> dict[str, bytes]:
    found = {}
    for i in range(len(manifest.shards)):
        with tarfile.open(manifest.shard_path(i)) as tar:
            found.update({m.name: tar.extractfile(m).read() for m in tar})
    return found


def test_reads_every_planned_sample_exactly(shard_dir: Path):
    manifest = Manifest.load(shard_dir)
    expected = tar_contents(manifest)
    plan = EpochPlan(manifest, epoch=0, seed=0, batch_size=5)
    keys = []
    with ByteSource(manifest, max_open=1) as source:  # forces reopening across shards
        for shard, sample in zip(plan.shard, plan.sample, strict=True):
            item = source.read(int(shard), int(sample))
            assert item.shard == manifest.shards[shard].path
            assert item.members["jpg"] == expected[f"{item.key}.jpg"]
            assert item.members["cls"] == expected[f"{item.key}.cls"]
            keys.append(item.key)
    assert sorted(keys) == sorted(name[:-4] for name in expected if name.endswith(".jpg"))


def test_missing_member_names_shard_and_key(shard_dir: Path):
    with ByteSource(Manifest.load(shard_dir)) as source:
        key = source.index(0).keys[1]
        with pytest.raises(MissingMemberError, match=r"no \.png member \(it has: cls, jpg\)") as info:
            source.read(0, 1, exts=("png",))
    assert "shard-000000.tar" in str(info.value) and key in str(info.value)
    assert info.value.shard == "shard-000000.tar" and info.value.key == key


def corrupt_index(path: Path, line: int, edit) -> None:
    lines = path.read_text().splitlines()
    lines[line] = edit(lines[line])
    path.write_text("\n".join(lines) + "\n")


def test_index_offset_that_disagrees_with_tar(shard_dir: Path):
    def shift_jpg(line: str) -> str:
        fields = line.split()
        j = fields.index("jpg")
        fields[j + 1] = str(int(fields[j + 1]) + 512)
        return " ".join(fields)

    corrupt_index(shard_dir / "shard-000000.idx", 2, shift_jpg)  # sample 1
    with ByteSource(Manifest.load(shard_dir)) as source:
        key = source.index(0).keys[1]
        source.read(0, 0)  # untouched samples still read
        with pytest.raises(IndexMismatchError, match="index says") as info:
            source.read(0, 1)
    assert "shard-000000.tar" in str(info.value) and key in str(info.value)


def test_index_lines_swapped_between_keys(shard_dir: Path):
    idx = shard_dir / "shard-000000.idx"
    lines = idx.read_text().splitlines()
    # give sample 0 the offsets of sample 1 but keep its own names
    own, other = lines[1].split(), lines[2].split()
    lines[1] = " ".join(o if k % 4 == 3 else m for k, (m, o) in enumerate(zip(other, own, strict=True)))
    idx.write_text("\n".join(lines) + "\n")
    with ByteSource(Manifest.load(shard_dir)) as source, pytest.raises(IndexMismatchError) as info:
        source.read(0, 0)
    assert "tar has member" in str(info.value)


def test_truncated_shard(shard_dir: Path):
    tar = shard_dir / "shard-000001.tar"
    with open(tar, "r+b") as f:
        f.truncate(os.path.getsize(tar) // 2)
    source = ByteSource(Manifest.load(shard_dir))
    with source, pytest.raises(ShardError, match="runs past the end of the file") as info:
        source.read(1, len(source.index(1)) - 1)
    assert "shard-000001.tar" in str(info.value)


def test_index_sample_count_must_match_manifest(shard_dir: Path):
    idx = shard_dir / "shard-000002.idx"
    lines = idx.read_text().splitlines()
    lines[0] = f"v1.2 {len(lines) - 2}"
    idx.write_text("\n".join(lines[:-1]) + "\n")
    with (
        ByteSource(Manifest.load(shard_dir)) as source,
        pytest.raises(IndexMismatchError, match="index lists 3 samples but the manifest says 4"),
    ):
        source.read(2, 0)


def test_missing_shard_and_checksum(shard_dir: Path, tmp_path: Path):
    shutil.copy(shard_dir / "shard-000000.tar", tmp_path / "keep.tar")
    (shard_dir / "shard-000000.tar").unlink()
    with ByteSource(Manifest.load(shard_dir)) as source, pytest.raises(ShardError, match="cannot open shard"):
        source.read(0, 0)
    data = bytearray((tmp_path / "keep.tar").read_bytes())
    data[-2000] ^= 0xFF  # a flipped bit in the last sample's data, past every header
    (shard_dir / "shard-000000.tar").write_bytes(bytes(data))
    with (
        ByteSource(Manifest.load(shard_dir), verify_checksums=True) as source,
        pytest.raises(ShardError, match="checksum does not match"),
    ):
        source.read(0, 0)


def test_errors_are_data_errors(shard_dir: Path):
    with ByteSource(Manifest.load(shard_dir)) as source, pytest.raises(DataError):
        source.read(0, 99)
