"""The batched host side's compiled passes against their plain references and against the per-sample
checks users see: JPEG header facts, tar header checks, batched preads, labels; and the batched read
against one read per sample, including a shard cut short while a loader reads it."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest
from fastssl.kernels import jpeg_header, labels, tar_members
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fastssl.data.faults import clean_shards, forge_jpeg_size, small_jpeg
from fastssl.data.header import check_image, parse_label
from fastssl.data.source import ByteSource
from fastssl.errors import ImageHeaderError, LabelError, ShardError
from fastssl.loader import SSLLoader
from fastssl.recipes import SimCLR

LIMIT = 1 << 22


def _batch(items: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.array([len(x) for x in items], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    buf = np.frombuffer(b"".join(items) or b"\0", np.uint8)
    return buf, starts, lengths


def _encoded(mode: str = "RGB", **save: object) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(small_jpeg(80, 56, seed=3))).convert(mode).save(out, "JPEG", **save)
    return out.getvalue()


GOOD = {
    "baseline": small_jpeg(96, 64, seed=4),
    "progressive": _encoded(progressive=True),
    "gray": _encoded("L"),
    "dpi-and-exif": _encoded(exif=Image.Exif(), dpi=(72, 72)),
    "padded": small_jpeg(40, 30, seed=1) + b"\0" * 64,
}
BAD = {
    "empty": b"",
    "png": (lambda out: (Image.new("RGB", (8, 8)).save(out, "PNG"), out.getvalue())[1])(io.BytesIO()),
    "cmyk": _encoded("CMYK"),
    "truncated": small_jpeg(96, 64, seed=5)[:-300],
    "bomb": forge_jpeg_size(small_jpeg(32, 32, seed=6), 5000, 5000),
    "text": b"not an image at all",
}


def _facts(items: list[bytes]) -> list[tuple[int, int, int]]:
    codes, heights, widths = jpeg_header.jpeg_facts(*_batch(items), LIMIT)
    return list(zip(codes.tolist(), heights.tolist(), widths.tolist(), strict=True))


def test_jpeg_facts_give_the_size_pil_gives_for_good_files_and_refuse_every_bad_one() -> None:
    good = _facts(list(GOOD.values()))
    for (code, height, width), data in zip(good, GOOD.values(), strict=True):
        assert code == jpeg_header.OK
        assert (height, width) == check_image(data, max_pixels=LIMIT, shard="s", key="k")
    for (code, _, _), (name, data) in zip(_facts(list(BAD.values())), BAD.items(), strict=True):
        assert code != jpeg_header.OK, name
        with pytest.raises(ImageHeaderError):
            check_image(data, max_pixels=LIMIT, shard="s", key="k")
    codes = dict(zip(BAD, (c for c, _, _ in _facts(list(BAD.values()))), strict=True))
    assert codes["empty"] == jpeg_header.EMPTY and codes["png"] == jpeg_header.NOT_JPEG
    assert codes["cmyk"] == jpeg_header.BAD_FRAME and codes["truncated"] == jpeg_header.TRUNCATED
    assert codes["bomb"] == jpeg_header.TOO_MANY_PIXELS


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body


def _after_soi(jpeg: bytes, segment: bytes) -> bytes:
    return jpeg[:2] + segment + jpeg[2:]


def test_files_pil_may_refuse_are_left_to_pil() -> None:
    """Structures where PIL's header reader can fail on its own (cut resource blocks, EXIF tags it
    reads for the resolution, partial component records) never get the kernel's OK."""
    base = small_jpeg(40, 30, seed=2)
    sof = base.find(b"\xff\xc0")
    length = int.from_bytes(base[sof + 2 : sof + 4], "big")
    partial_component = base[: sof + 2] + (length + 1).to_bytes(2, "big") + base[sof + 4 : sof + 2 + length]
    partial_component += b"\x04" + base[sof + 2 + length :]
    files = {
        "photoshop": _after_soi(base, _segment(0xED, b"Photoshop 3.0\x008BIM\x03\xed")),
        "exif": _encoded(exif=Image.Exif()),
        "partial-component": partial_component,
    }
    for name, data in files.items():
        (got,) = _facts([data])
        assert got[0] == jpeg_header.UNUSUAL, name
        assert got == jpeg_header.jpeg_facts_reference(data, LIMIT)


def _mutated(data: bytes, cut: float, flips: list[tuple[float, int]]) -> bytes:
    out = bytearray(data[: max(0, int(len(data) * cut))])
    header = min(len(out), 700)  # where the markers are: mutations there test the walk
    for where, value in flips:
        if header:
            out[int(where * header)] = value
    return bytes(out)


@settings(max_examples=400)
@given(
    name=st.sampled_from(sorted(GOOD)),
    cut=st.one_of(st.just(1.0), st.floats(0, 1)),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=3),
)
def test_jpeg_facts_match_the_reference_and_never_pass_what_pil_refuses(name, cut, flips) -> None:
    data = _mutated(GOOD[name], cut, flips)
    (got,) = _facts([data])
    assert got == jpeg_header.jpeg_facts_reference(data, LIMIT)
    if got[0] == jpeg_header.OK:  # the kernel vouches: PIL must agree, with the same size
        assert check_image(data, max_pixels=LIMIT, shard="s", key="k") == got[1:]


def _tar_with(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _check(blob: bytes, names: list[str], sizes: list[int], suffix: bytes) -> np.ndarray:
    buf = np.frombuffer(blob, np.uint8)
    encoded = [n.encode() for n in names]
    name_len = np.array([len(n) for n in encoded], np.int64)
    suffixes = np.zeros((len(names), 16), np.uint8)
    suffixes[:, : len(suffix)] = np.frombuffer(suffix, np.uint8)
    return tar_members.check_headers(
        buf, np.zeros(len(names), np.int64), np.array(sizes, np.int64),
        np.frombuffer(b"".join(encoded) or b"\0", np.uint8),
        np.concatenate([[0], np.cumsum(name_len)[:-1]]).astype(np.int64), name_len, suffixes,
    )  # fmt: skip


@settings(max_examples=300)
@given(where=st.integers(0, 511), value=st.integers(0, 255), size_delta=st.sampled_from([0, 0, 0, 1, -1]))
def test_tar_header_check_matches_tarfile_on_damaged_headers(where, value, size_delta) -> None:
    blob = bytearray(_tar_with([("abc_001.jpg", b"x" * 700)]))
    blob[where] = value
    header = bytes(blob[:512])
    expected = tar_members.check_header_reference(header, "abc_001.jpg", 700 + size_delta)
    assert bool(_check(bytes(blob), ["abc_001"], [700 + size_delta], b".jpg")[0]) == expected


def test_tar_header_check_refuses_other_names_types_and_long_names() -> None:
    blob = _tar_with([("abc_001.jpg", b"x" * 10)])
    assert _check(blob, ["abc_001"], [10], b".jpg").tolist() == [True]
    assert _check(blob, ["abc_00"], [10], b".jpg").tolist() == [False]  # a name that is a prefix
    assert _check(blob, ["abc_001"], [10], b".cls").tolist() == [False]
    link = bytearray(blob)
    info = tarfile.TarInfo("abc_001.jpg")
    info.type, info.linkname = tarfile.SYMTYPE, "elsewhere"
    link[:512] = info.tobuf(format=tarfile.USTAR_FORMAT)
    assert _check(bytes(link), ["abc_001"], [0], b".jpg").tolist() == [False]
    prefixed = _tar_with([("p" * 60 + "/" + "k" * 60 + ".jpg", b"x")])
    assert _check(prefixed, ["p" * 60 + "/" + "k" * 60], [1], b".jpg").tolist() == [
        False
    ]  # ustar prefix: left to read()


def test_batched_preads_match_os_pread_and_report_short_reads(tmp_path) -> None:
    path = tmp_path / "data.bin"
    payload = os.urandom(10_000)
    path.write_bytes(payload)
    fd = os.open(path, os.O_RDONLY)
    try:
        offsets = np.array([0, 17, 9_000, 9_990], np.int64)
        lengths = np.array([100, 4_000, 1_000, 50], np.int64)
        at = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        buf = np.zeros(int(lengths.sum()), np.uint8)
        got = tar_members.read_members(np.full(4, fd), offsets, lengths, buf, at)
        assert got.tolist() == [100, 4_000, 1_000, 10]  # the last runs past the end of the file
        for i in range(3):
            assert buf[at[i] : at[i] + lengths[i]].tobytes() == tar_members.read_members_reference(
                fd, int(offsets[i]), int(lengths[i])
            )
        with pytest.raises(ValueError, match="outside buf"):
            tar_members.read_members(np.full(1, fd), offsets[:1], lengths[:1] + 10_000, buf, at[:1])
        with pytest.raises(ValueError, match="writable contiguous uint8"):
            tar_members.read_members(np.full(1, fd), offsets[:1], lengths[:1], buf[::2], at[:1])
    finally:
        os.close(fd)


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=24), st.from_regex(rb"\A[ \t\n]*[0-9]{1,20}[ \t\n]*\Z")))
def test_labels_match_the_reference_and_parse_label(data) -> None:
    values, parsed = labels.parse_labels(*_batch([data, b"7"]))
    assert parsed[1] and values[1] == 7
    reference = labels.parse_labels_reference(data)
    assert (values[0] if parsed[0] else None) == reference
    if reference is not None:
        assert parse_label(data, shard="s", key="k") == reference
    elif not data.strip():
        with pytest.raises(LabelError):
            parse_label(data, shard="s", key="k")


def test_batched_read_gives_the_bytes_of_one_read_per_sample(tmp_path) -> None:
    manifest = clean_shards(tmp_path / "set", shards=3, per_shard=8)
    with ByteSource(manifest) as single, ByteSource(manifest) as batched:
        rng = np.random.default_rng(0)
        shards = rng.integers(0, 3, 20)
        samples = rng.integers(0, 8, 20)
        got = batched.read_batch(shards, samples, ("jpg", "cls"))
        assert not got.slow.any()
        for i, (shard, sample) in enumerate(zip(shards.tolist(), samples.tolist(), strict=True)):
            one = single.read(shard, sample, ("jpg", "cls"))
            assert got.keys[i] == one.key
            for j, ext in enumerate(("jpg", "cls")):
                start, size = got.start[i, j], got.size[i, j]
                assert got.buf[start : start + size].tobytes() == one.members[ext]


def test_a_shard_cut_short_while_a_loader_reads_it_is_a_data_error_not_a_crash(tmp_path) -> None:
    manifest = clean_shards(tmp_path / "set", shards=2, per_shard=16)
    path = manifest.shard_path(1)
    with SSLLoader(manifest, SimCLR(size=24), 4, backend="auto", device="cpu", num_threads=1) as loader:
        batches = iter(loader)
        next(batches)  # the shard files are open now
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)
        with pytest.raises(ShardError, match="truncated shard") as info:
            for _ in batches:
                pass
    assert info.value.shard == "shard-000001.tar" and info.value.key
