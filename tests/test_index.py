"""Shard indexes: identical to DALI's own wds2idx, readable by DALI's webdataset reader."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from fastssl.data.index import build_index, read_index, write_index
from fastssl.data.manifest import Manifest
from fastssl.errors import IndexMismatchError, ShardError


def dali_index_text(tar: Path, tmp_path: Path) -> str:
    """The index DALI's own wds2idx tool writes for `tar`."""
    wds2idx = pytest.importorskip("wds2idx", reason="DALI's wds2idx tool ships with nvidia-dali")
    target = tmp_path / "dali.idx"
    with wds2idx.IndexCreator(str(tar), str(target), verbose=False) as creator:
        creator.create_index()
    return target.read_text()


def write_tar(path: Path, members: list[tuple[str, bytes | None]]) -> None:
    """A tar with regular files (bytes) and directories (None), in the given order."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_writer_index_equals_wds2idx(shard_dir: Path, tmp_path: Path):
    manifest = Manifest.load(shard_dir)
    for i in range(len(manifest.shards)):
        ours = manifest.index_path(i).read_text()
        assert ours == dali_index_text(manifest.shard_path(i), tmp_path)


def test_index_of_foreign_tar_equals_wds2idx(tmp_path: Path):
    tar = tmp_path / "foreign.tar"
    write_tar(
        tar,
        [
            ("dir", None),
            ("dir/s1.jpg", b"x" * 700),
            ("dir/s1.seg.png", b"y" * 10),
            ("dir/s1.json", b"{}"),
            ("s2.cls", b"7"),
            ("s2.jpg", b"z" * 1025),
            ("s1.jpg", b"same key as an earlier sample, not adjacent"),
        ],
    )
    index = build_index(tar)
    assert index.keys == ("dir/s1", "s2", "s1")
    assert index.to_text() == dali_index_text(tar, tmp_path)
    offset, size = index.member(0, "seg.png")
    with open(tar, "rb") as f:
        f.seek(offset)
        assert f.read(size) == b"y" * 10
    assert index.member(1, "json") is None


def test_members_without_extension_are_skipped(tmp_path: Path):
    # wds2idx 2.4 mis-splits such names ("noext" -> key "noex", ext "noext"); WebDataset skips
    # them (a member needs a suffix to join a sample), and so does fastssl.
    tar = tmp_path / "noext.tar"
    write_tar(tar, [("noext", b"data"), ("a.jpg", b"jpeg")])
    index = build_index(tar)
    assert index.keys == ("a",) and index.exts == ("jpg",)


def test_index_round_trips_through_file(shard_dir: Path, tmp_path: Path):
    index = build_index(shard_dir / "shard-000000.tar")
    write_index(index, tmp_path / "copy.idx")
    again = read_index(tmp_path / "copy.idx")
    assert again.keys == index.keys and again.exts == index.exts
    assert (again.offsets == index.offsets).all() and (again.sizes == index.sizes).all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "does not start with"),
        ("v1.0 1\njpg 512 3\n", "does not start with"),
        ("v1.2 2\njpg 512 3 a.jpg\n", "declares 2 samples but lists 1"),
        ("v1.2 1\njpg 512 3\n", "not 'ext offset size name' groups"),
        ("v1.2 1\njpg x 3 a.jpg\n", "non-numeric"),
        ("v1.2 1\njpg 512 3 a.jpg cls 1024 1 b.cls\n", "mixes keys"),
    ],
)
def test_malformed_index_is_refused_naming_the_file(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.idx"
    path.write_text(text)
    with pytest.raises(IndexMismatchError, match=message) as info:
        read_index(path, shard="shard-000007.tar")
    assert "shard-000007.tar" in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\xff\xfe\x00bad", "not UTF-8"), ("v1.2 \u00b2\n".encode(), "does not start with")],
)
def test_undecodable_index_is_an_index_error(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(IndexMismatchError, match=message):
        read_index(path)


def test_tar_cut_short_or_with_a_bad_header_is_refused(shard_dir: Path, tmp_path: Path):
    tar = (shard_dir / "shard-000000.tar").read_bytes()
    index = build_index(shard_dir / "shard-000000.tar")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar[: int(index.offsets[2].max()) + 10])  # inside the third sample's data
    with pytest.raises(ShardError, match="truncated") as info:
        build_index(cut)
    assert "cut.tar" in str(info.value)
    broken = bytearray(tar)
    third_header = int(index.offsets[2].min()) - 512
    broken[third_header : third_header + 100] = b"\x07" * 100  # garbage name, bad checksum
    (tmp_path / "broken.tar").write_bytes(bytes(broken))
    with pytest.raises(ShardError, match=f"unreadable tar header at byte {third_header}"):
        build_index(tmp_path / "broken.tar")
    with pytest.raises(ShardError, match="cannot read tar file"):
        build_index(tmp_path / "missing.tar")


def test_non_tar_is_refused(tmp_path: Path):
    path = tmp_path / "shard.tar"
    path.write_bytes(b"\x01" * 2000)
    with pytest.raises(ShardError, match="not a readable tar") as info:
        build_index(path)
    assert "shard.tar" in str(info.value)


def test_dali_webdataset_reader_reads_every_sample_through_our_index(shard_dir: Path):
    fn = pytest.importorskip("nvidia.dali.fn")
    from nvidia.dali import pipeline_def

    manifest = Manifest.load(shard_dir)
    tars = [str(manifest.shard_path(i)) for i in range(len(manifest.shards))]
    idxs = [str(manifest.index_path(i)) for i in range(len(manifest.shards))]

    @pipeline_def(batch_size=manifest.num_samples, num_threads=1, device_id=None)
    def read_all():
        jpg, cls = fn.readers.webdataset(
            paths=tars,
            index_paths=idxs,
            ext=["jpg", "cls"],
            missing_component_behavior="error",
            random_shuffle=False,
            name="reader",
        )
        return jpg, cls, fn.get_property(jpg, key="source_info")

    pipe = read_all()
    pipe.build()
    assert pipe.epoch_size("reader") == manifest.num_samples
    jpgs, labels, infos = pipe.run()
    expected = {}
    for i in range(len(manifest.shards)):
        with tarfile.open(manifest.shard_path(i)) as tar:
            for member in tar:
                expected[member.name] = tar.extractfile(member).read()
    for j in range(manifest.num_samples):
        name = bytes(infos.at(j)).decode().rsplit(":", 1)[1]
        key = name.split(".")[0]
        assert bytes(jpgs.at(j)) == expected[f"{key}.jpg"]
        assert bytes(labels.at(j)) == expected[f"{key}.cls"]


def test_an_index_line_repeating_an_extension_holds_two_samples_of_one_key(tmp_path) -> None:
    """DALI's wds2idx writes consecutive members of one key on one line, even a repeated one."""
    path = tmp_path / "x.idx"
    path.write_text(
        "v1.2 2\njpg 512 10 a.jpg cls 1024 1 a.cls jpg 2048 10 a.jpg cls 2560 1 a.cls\njpg 3072 5 b.jpg\n"
    )
    index = read_index(path)
    assert index.keys == ("a", "a", "b")
    assert index.member(1, "jpg") == (2048, 10) and index.repeats == {1: 0}
