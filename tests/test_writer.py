"""`write_shards`: good inputs written intact, every bad one listed, atomic shards, honest counts."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, make_image_folder
from PIL import Image

import fastssl.data.writer as writer_module
from fastssl.data.faults import plant_bad_files, small_jpeg
from fastssl.data.index import build_index
from fastssl.data.manifest import Manifest, sha256_file
from fastssl.data.writer import OutputError, write_shards


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def all_members(out: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for tar in sorted(out.glob("shard-*.tar")):
        found.update(members(tar))
    return found


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def test_imagefolder_shards_keep_bytes_and_labels(image_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    report = write_shards(image_folder, out, shard_size=4, workers=1, progress=False)
    assert (report.inputs, report.written, report.rejected, report.reencoded) == (15, 15, 0, 0)
    manifest = Manifest.load(out)
    assert manifest.classes == CLASSES
    assert [s.samples for s in manifest.shards] == [4, 4, 4, 3]
    for i, info in enumerate(manifest.shards):
        path = manifest.shard_path(i)
        assert path.name == f"shard-{i:06d}.tar" and manifest.index_path(i).exists()
        assert info.bytes == path.stat().st_size and info.sha256 == sha256_file(path)
    stored = all_members(out)
    for label, name in enumerate(CLASSES):
        for source in (image_folder / name).iterdir():
            key = f"{name}__{source.name.split('.')[0]}"
            assert stored[f"{key}.jpg"] == source.read_bytes()  # valid JPEG kept byte for byte
            assert stored[f"{key}.cls"] == str(label).encode()
    assert (out / "rejects.jsonl").read_text() == ""
    assert not list(out.glob(".*tmp"))
    # plain ustar: each member is one 512-byte header then its data, no pax records
    first = build_index(manifest.shard_path(0))
    assert first.member(0, "cls") == (512, 1)
    assert first.member(0, "jpg")[0] == 1536


def test_flat_folder_is_unlabelled(tmp_path: Path):
    src = tmp_path / "flat"
    src.mkdir()
    for i in range(3):
        (src / f"img{i}.jpg").write_bytes(small_jpeg(seed=i))
    out = tmp_path / "out"
    write_shards(src, out, workers=1, progress=False)
    assert Manifest.load(out).classes is None
    assert sorted(all_members(out)) == ["img0.jpg", "img1.jpg", "img2.jpg"]


def test_every_bad_file_is_listed_and_good_ones_written(image_folder: Path, tmp_path: Path):
    expected = plant_bad_files(image_folder / "dog")
    (image_folder / "stray.jpg").write_bytes(small_jpeg())  # outside any class folder
    (image_folder / "cat" / ".DS_Store").write_bytes(b"\0")
    out = tmp_path / "out"
    report = write_shards(image_folder, out, shard_size=4, workers=1, progress=False)
    listed = {Path(r["path"]).name: r for r in rejects(out)}
    for name, kind in expected.items():
        assert listed[name]["kind"] == kind
        assert listed[name]["path"] == str(image_folder / "dog" / name)
        assert listed[name]["reason"]
    assert listed["stray.jpg"]["kind"] == "unlabelled"
    assert listed[".DS_Store"]["kind"] == "hidden"
    assert report.written == 15
    assert report.rejected == len(expected) + 2 == len(listed)
    assert report.written + report.rejected == report.inputs
    assert Manifest.load(out).extra["counts"]["rejected"] == report.rejected
    assert "written + rejected = 22 = 22 inputs" in report.summary()


def _save(image: Image.Image, path: Path, **kwargs) -> None:
    image.save(path, **kwargs)


def test_non_jpeg_and_unusual_jpegs_are_reencoded_upright(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    base = Image.open(io.BytesIO(small_jpeg(80, 40))).convert("RGB")
    _save(base, src / "png.png", format="PNG")
    _save(base.convert("RGBA"), src / "rgba.png", format="PNG")
    _save(base.convert("CMYK"), src / "cmyk.jpg", format="JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    _save(base, src / "rotated.jpg", format="JPEG", exif=exif)
    out = tmp_path / "out"
    report = write_shards(src, out, workers=1, progress=False)
    assert (report.written, report.reencoded) == (4, 4)
    for name, data in all_members(out).items():
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and image.mode == "RGB", name
            expected = (40, 80) if name.startswith("rotated") else (80, 40)
            assert image.size == expected, name
            assert image.getexif().get(0x0112, 1) == 1


def test_max_side_and_quality(image_folder: Path, tmp_path: Path):
    out = tmp_path / "small"
    report = write_shards(image_folder, out, max_side=50, workers=1, progress=False)
    assert report.reencoded == 15  # every fixture image has a side over 50
    for data in (v for k, v in all_members(out).items() if k.endswith(".jpg")):
        assert max(Image.open(io.BytesIO(data)).size) == 50
    low = tmp_path / "low"
    write_shards(image_folder, low, quality=20, workers=1, progress=False)
    assert sum(map(len, all_members(low).values())) < sum(map(len, all_members(out).values()))


def test_pixel_limit_applies_before_decode(image_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    report = write_shards(image_folder, out, max_pixels=64 * 50, workers=1, progress=False)
    too_big = [r for r in rejects(out) if r["kind"] == "too_many_pixels"]
    assert report.written == len(list(image_folder.rglob("*.jpg"))) - len(too_big)
    assert too_big and all("exceeds the limit of 3200" in r["reason"] for r in too_big)


def test_shuffle_seed_mixes_classes_and_workers_do_not_change_output(tmp_path: Path):
    src = make_image_folder(tmp_path / "src", per_class=8)
    plain = tmp_path / "plain"
    write_shards(src, plain, shard_size=8, workers=1, progress=False)
    first = [n for n in members(plain / "shard-000000.tar") if n.endswith(".jpg")]
    assert {n.split("__")[0] for n in first} == {"cat"}  # sorted order: one class per shard
    one, two = tmp_path / "one", tmp_path / "two"
    write_shards(src, one, shard_size=8, workers=1, shuffle_seed=3, progress=False)
    write_shards(src, two, shard_size=8, workers=2, shuffle_seed=3, progress=False)
    mixed = [n for n in members(one / "shard-000000.tar") if n.endswith(".jpg")]
    assert len({n.split("__")[0] for n in mixed}) > 1
    assert [s.sha256 for s in Manifest.load(one).shards] == [s.sha256 for s in Manifest.load(two).shards]


def test_existing_output_needs_overwrite_and_is_replaced_whole(image_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    write_shards(image_folder, out, shard_size=2, workers=1, progress=False)
    assert len(list(out.glob("shard-*.tar"))) == 8
    (out / "notes.txt").write_text("user file")
    with pytest.raises(OutputError, match="--overwrite"):
        write_shards(image_folder, out, workers=1, progress=False)
    write_shards(image_folder, out, shard_size=100, workers=1, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "notes.txt",
        "rejects.jsonl",
        "shard-000000.idx",
        "shard-000000.sums",
        "shard-000000.tar",
    ]


def test_unwritable_output_is_reported(image_folder: Path, tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="not writable"):
        write_shards(image_folder, blocker / "out", workers=1, progress=False)


def test_interrupted_run_leaves_no_partial_shard(image_folder: Path, tmp_path: Path, monkeypatch):
    real = writer_module.read_and_prepare
    calls = []

    def interrupt_on_seventh(path, **kwargs):
        calls.append(path)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(path, **kwargs)

    monkeypatch.setattr(writer_module, "read_and_prepare", interrupt_on_seventh)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        write_shards(image_folder, out, shard_size=3, workers=1, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"shard-00000{i}.{ext}" for i in range(2) for ext in ("idx", "sums", "tar")]
    for tar in out.glob("*.tar"):
        assert len(members(tar)) == 6  # complete: 3 samples of jpg + cls


def test_written_images_decode_to_their_sources(image_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    write_shards(image_folder, out, workers=1, progress=False)
    stored = all_members(out)
    for source in image_folder.rglob("*.jpg"):
        key = f"{source.parent.name}__{source.stem}"
        written = np.asarray(Image.open(io.BytesIO(stored[f"{key}.jpg"])))
        assert np.array_equal(written, np.asarray(Image.open(source)))


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    Image.fromarray(ramp).save(src / "ramp16.png")
    Image.fromarray(np.zeros((8, 8), np.float32)).save(src / "float.tiff")
    out = tmp_path / "out"
    report = write_shards(src, out, workers=1, progress=False)
    assert rejects(out)[0]["kind"] == "unsupported" and report.written == 1
    pixels = np.asarray(Image.open(io.BytesIO(all_members(out)["ramp16.jpg"])), dtype=float)
    expected = ramp / 257.0
    assert np.abs(pixels - expected).mean() < 3  # JPEG error only; clipping would give ~240
    assert pixels.min() <= 3 and pixels.max() >= 250


def test_fifo_is_refused_without_blocking(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.jpg").write_bytes(small_jpeg())
    os.mkfifo(src / "pipe.jpg")
    out = tmp_path / "out"
    report = write_shards(src, out, workers=1, progress=False)
    assert report.written == 1
    assert [(Path(r["path"]).name, r["kind"]) for r in rejects(out)] == [("pipe.jpg", "not_regular_file")]


def test_linked_folders_are_followed_and_loops_refused(image_folder: Path, tmp_path: Path):
    elsewhere = make_image_folder(tmp_path / "elsewhere", per_class=2, classes=("extra",))
    (image_folder / "cat" / "more").symlink_to(elsewhere / "extra")
    (image_folder / "dog" / "loop").symlink_to(image_folder / "dog")
    out = tmp_path / "out"
    report = write_shards(image_folder, out, workers=1, progress=False)
    assert report.written == 17  # 15 + 2 through the link, all labelled "cat"
    assert "cat__more__extra_001.jpg" in all_members(out)
    listed = {Path(r["path"]).name: r["kind"] for r in rejects(out)}
    assert listed == {"loop": "link_loop"}
    assert report.written + report.rejected == report.inputs


def test_output_inside_source_is_refused(image_folder: Path):
    with pytest.raises(OutputError, match="inside the source folder"):
        write_shards(image_folder, image_folder / "shards", workers=1, progress=False)


def test_temporary_files_of_an_interrupted_run_do_not_block(image_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".shard-000000.tar.4242.tmp").write_bytes(b"partial")
    write_shards(image_folder, out, workers=1, progress=False)
    assert not list(out.glob(".*.tmp"))


def test_source_date_epoch_sets_member_mtime(image_folder: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    write_shards(image_folder, tmp_path / "out", workers=1, progress=False)
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        assert {m.mtime for m in tar} == {1700000000}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ValueError, match="SOURCE_DATE_EPOCH"):
        write_shards(image_folder, tmp_path / "again", workers=1, progress=False)


def test_file_changed_between_worker_check_and_write_is_rejected(tmp_path: Path):
    path = tmp_path / "a.jpg"
    path.write_bytes(small_jpeg())
    kept = writer_module._check_in_worker(str(path))
    assert isinstance(kept, writer_module._Kept)  # only size and CRC cross the process boundary
    assert writer_module._reload(str(path), kept).data == path.read_bytes()
    path.write_bytes(small_jpeg(seed=9))
    changed = writer_module._reload(str(path), kept)
    assert (changed.kind, changed.reason) == ("changed", "file changed while it was being sharded")
    path.unlink()
    assert writer_module._reload(str(path), kept).kind == "unreadable"


def test_every_shard_gets_per_sample_checksums_that_match_its_members(image_folder, tmp_path):
    """The `.sums` sidecar (for range reads) holds the CRC-32 of each member the index lists."""
    import zlib

    from fastssl.data.index import read_index
    from fastssl.data.sums import read_sums, sums_path

    out = tmp_path / "out"
    write_shards(image_folder, out, shard_size=3, workers=1, progress=False)
    for tar in sorted(out.glob("*.tar")):
        index = read_index(tar.with_suffix(".idx"))
        sums = read_sums(sums_path(tar.with_suffix(".idx")), index, shard=tar.name)
        data = tar.read_bytes()
        for i in range(len(index)):
            for j, ext in enumerate(index.exts):
                offset, size = index.member(i, ext)
                assert sums[i, j] == zlib.crc32(data[offset : offset + size])
