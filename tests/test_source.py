"""ByteSource: positional reads through the index, and clear errors when index and tar disagree."""

from __future__ import annotations

import copy
import gc
import io
import multiprocessing
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import pytest

import fastssl.data.source as source_module
from fastssl.data.faults import small_jpeg
from fastssl.data.index import ShardIndex, build_index, write_index
from fastssl.data.manifest import Manifest, ShardInfo
from fastssl.data.plan import EpochPlan
from fastssl.data.source import ByteSource, _header_matches, _parse_header
from fastssl.data.writer import write_shards
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


def test_missing_shard_and_checksum(shard_dir: Path, tmp_path: Path, monkeypatch):
    shutil.copy(shard_dir / "shard-000000.tar", tmp_path / "keep.tar")
    (shard_dir / "shard-000000.tar").unlink()
    for verify in (False, True):
        source = ByteSource(Manifest.load(shard_dir), verify_checksums=verify)
        with source, pytest.raises(ShardError, match="cannot open shard") as info:
            source.read(0, 0)
        assert "shard-000000.tar" in str(info.value)
    data = bytearray((tmp_path / "keep.tar").read_bytes())
    offset, size = build_index(tmp_path / "keep.tar").member(3, "jpg")
    data[offset + size // 2] ^= 0xFF  # one flipped bit inside the last sample's JPEG data
    (shard_dir / "shard-000000.tar").write_bytes(bytes(data))
    with ByteSource(Manifest.load(shard_dir)) as source:
        source.read(0, 3)  # without verification the damage goes unnoticed at this layer
    source = ByteSource(Manifest.load(shard_dir), verify_checksums=True)
    with source, pytest.raises(ShardError, match="checksum does not match"):
        source.read(0, 0)


def test_checksums_are_verified_once_per_shard(shard_dir: Path, monkeypatch):
    hashed = []
    real = source_module.sha256_file
    monkeypatch.setattr(source_module, "sha256_file", lambda p: hashed.append(p) or real(p))
    manifest = Manifest.load(shard_dir)
    plan = EpochPlan(manifest, epoch=0, seed=0, batch_size=4)
    with ByteSource(manifest, verify_checksums=True, max_open=1) as source:
        for shard, sample in zip(plan.shard, plan.sample, strict=True):
            source.read(int(shard), int(sample))
    assert sorted(Path(p).name for p in hashed) == [s.path for s in manifest.shards]


def test_shard_number_out_of_range(shard_dir: Path):
    with ByteSource(Manifest.load(shard_dir)) as source:
        for shard in (-1, 4):
            with pytest.raises(ShardError, match=f"shard number {shard} out of range 0..3"):
                source.read(shard, 0)
    with pytest.raises(ValueError, match="max_open"):
        ByteSource(Manifest.load(shard_dir), max_open=0)


def test_unlabelled_shards_read_jpg_only(tmp_path: Path):
    src = tmp_path / "flat"
    src.mkdir()
    for i in range(3):
        (src / f"img{i}.jpg").write_bytes(small_jpeg(seed=i))
    write_shards(src, tmp_path / "out", workers=1, progress=False)
    with ByteSource(Manifest.load(tmp_path / "out")) as source:
        assert source.default_exts() == ("jpg",)
        assert set(source.read(0, 1).members) == {"jpg"}


def _read_in_child(source: ByteSource, queue) -> None:
    queue.put(source.read(1, 0).key)


def test_copies_pickles_and_children_never_share_descriptors(shard_dir: Path):
    source = ByteSource(Manifest.load(shard_dir))
    expected = [source.read(0, i).key for i in range(4)]
    copy.deepcopy(source).close()
    clone = pickle.loads(pickle.dumps(source))
    assert clone.read(0, 2).key == expected[2]
    del clone
    gc.collect()
    assert [source.read(0, i).key for i in range(4)] == expected  # our descriptors still open
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(source, queue))
    child.start()
    child_key = queue.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0 and child_key == source.read(1, 0).key
    assert source.read(0, 3).key == expected[3]
    source.close()


def _one_shard(tmp_path: Path, fmt: int, members: dict[str, bytes]) -> tuple[Manifest, ShardIndex]:
    """A one-shard set `long.tar` (+ index, manifest without checksum) holding `members`."""
    with tarfile.open(tmp_path / "long.tar", "w", format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    index = build_index(tmp_path / "long.tar")
    write_index(index, tmp_path / "long.idx")
    info = ShardInfo("long.tar", "long.idx", len(index), (tmp_path / "long.tar").stat().st_size, "")
    return Manifest((info,), root=tmp_path), index


def test_long_member_names_in_ustar_prefix_are_matched(tmp_path: Path):
    folder = "d" * 80 + "/" + "e" * 60
    members = {f"{folder}/s1.jpg": b"one", f"{folder}/s2.jpg": b"two"}
    manifest, _ = _one_shard(tmp_path, tarfile.USTAR_FORMAT, members)
    with ByteSource(manifest) as source:
        assert source.read(0, 1, exts=("jpg",)).members["jpg"] == b"two"


def test_header_matching_rules():
    info = tarfile.TarInfo("k.jpg")
    info.size = 5
    assert _header_matches(info, "k.jpg", 5)
    assert not _header_matches(info, "k.jpg", 6)
    assert not _header_matches(info, "other.jpg", 5)
    empty = tarfile.TarInfo("")
    empty.size = 5
    assert not _header_matches(empty, "x" * 120 + ".jpg", 5)  # an empty name is no truncation
    truncated = tarfile.TarInfo(("x" * 120 + ".jpg")[:100])
    truncated.size = 5
    assert _header_matches(truncated, "x" * 120 + ".jpg", 5)
    folder = tarfile.TarInfo("k.jpg")
    folder.type, folder.size = tarfile.DIRTYPE, 5
    assert not _header_matches(folder, "k.jpg", 5)
    assert _parse_header(b"\0" * 512) is None


def test_errors_are_data_errors(shard_dir: Path):
    with ByteSource(Manifest.load(shard_dir)) as source, pytest.raises(DataError):
        source.read(0, 99)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_long_names_are_checked_whole_against_their_long_name_record(tmp_path: Path, fmt):
    """Two members whose 130-byte names share their first 120 bytes, and sizes: the header keeps
    100 bytes of each name, so only the long-name record tells them apart."""
    stem = "x" * 120
    manifest, index = _one_shard(tmp_path, fmt, {f"{stem}_a.jpg": b"AAA", f"{stem}_b.jpg": b"BBB"})
    with ByteSource(manifest) as source:
        assert [source.read(0, i, exts=("jpg",)).members["jpg"] for i in (0, 1)] == [b"AAA", b"BBB"]
    text = (tmp_path / "long.idx").read_text()  # point sample a's .jpg at b's data
    a_at, b_at = index.member(0, "jpg")[0], index.member(1, "jpg")[0]
    (tmp_path / "long.idx").write_text(text.replace(f"jpg {a_at} 3", f"jpg {b_at} 3", 1))
    with ByteSource(manifest) as source, pytest.raises(IndexMismatchError) as err:
        source.read(0, 0, exts=("jpg",))
    assert f"gives '{stem}_b.jpg'" in str(err.value) and err.value.key == f"{stem}_a"
