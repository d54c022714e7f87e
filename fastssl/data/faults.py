"""Make bad input files and broken shard sets of known kinds: for the demo's reject report, the
fault-injection suite (`tests/faults/`) and the soak benchmark."""

from __future__ import annotations

import io
import os
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fastssl.data.index import build_index, write_index
from fastssl.data.manifest import Manifest, ShardInfo, sha256_file
from fastssl.data.source import ByteSource
from fastssl.errors import DataError

_SOF_MARKERS = (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2")


def small_jpeg(width: int = 64, height: int = 48, seed: int = 0, mode: str = "RGB") -> bytes:
    """A valid JPEG of smooth random colour, for fixtures."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(base, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.convert(mode).save(out, format="JPEG", quality=90)
    return out.getvalue()


def forge_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header of a JPEG to claim `width` x `height`, as a decompression bomb does:
    the header promises a huge image, and only a pixel limit checked before decoding stops it."""
    for marker in _SOF_MARKERS:
        at = jpeg.find(marker)
        if at >= 0:
            head = jpeg[: at + 5]
            size = height.to_bytes(2, "big") + width.to_bytes(2, "big")
            return head + size + jpeg[at + 9 :]
    raise ValueError("no JPEG frame header (SOF0/1/2) found")


def plant_bad_files(folder: str | Path) -> dict[str, str]:
    """Write one file of each bad kind into `folder`; returns {file name: reject kind expected}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = small_jpeg(seed=1)
    files = {
        "planted_empty.jpg": (b"", "empty"),
        "planted_text.jpg": (b"this is not an image\n" * 20, "not_image"),
        "planted_truncated.jpg": (good[: len(good) // 2], "truncated"),
        "planted_bomb.jpg": (forge_jpeg_size(good, 9000, 9000), "too_many_pixels"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    expected = {name: kind for name, (_, kind) in files.items()}
    dangling = folder / "planted_unreadable.jpg"
    dangling.unlink(missing_ok=True)
    dangling.symlink_to(folder / "does-not-exist.jpg")
    expected[dangling.name] = "unreadable"
    return expected


# -- broken shard sets, for the fault-injection suite and the soak benchmark -------------------------

CLASSES = ("a", "b", "c")


@dataclass(frozen=True)
class PlantedFault:
    """A shard set with one fault planted, and what a reader must say about it.

    `bad` lists (shard path, key) of every sample the fault makes unreadable, once per bad
    occurrence (a duplicated key's second occurrence appears once; its first stays readable).
    `says` is a fragment of the error's reason; `loader_options` are what exposes the fault
    (`verify_checksums` for a changed shard).
    """

    name: str
    root: Path
    bad: tuple[tuple[str, str], ...]
    error: type[DataError]
    says: str
    loader_options: dict[str, Any] = field(default_factory=dict)


def write_raw_shards(
    out: str | Path,
    shards: list[list[tuple[str, dict[str, bytes]]]],
    classes: tuple[str, ...] | None = CLASSES,
) -> Manifest:
    """Write shards exactly as given, members in the order given, with indexes and a manifest.

    Unlike `fastssl shards`, nothing is validated: this is how broken shard sets are made.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    infos = []
    for number, samples in enumerate(shards):
        tar_name, idx_name = f"shard-{number:06d}.tar", f"shard-{number:06d}.idx"
        with tarfile.open(out / tar_name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, members in samples:
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o444
                    tar.addfile(info, io.BytesIO(data))
        write_index(build_index(out / tar_name), out / idx_name)
        size = (out / tar_name).stat().st_size
        infos.append(ShardInfo(tar_name, idx_name, len(samples), size, sha256_file(out / tar_name)))
    manifest = Manifest(shards=tuple(infos), classes=classes, root=out)
    manifest.save(out)
    return manifest


def _good_samples(shards: int, per_shard: int, seed: int) -> list[list[tuple[str, dict[str, bytes]]]]:
    return [
        [
            (
                f"s{s}_{i:03d}",
                {
                    "cls": str((s + i) % len(CLASSES)).encode(),
                    "jpg": small_jpeg(40 + 8 * (i % 4), 36 + 4 * (s % 3), seed=seed + 100 * s + i),
                },
            )
            for i in range(per_shard)
        ]
        for s in range(shards)
    ]


def _cut(jpeg: bytes) -> bytes:
    """The JPEG cut two thirds into its bytes: the header intact, the scan data cut short."""
    return jpeg[: len(jpeg) * 2 // 3]


def all_keys(root: str | Path) -> Counter:
    """Every sample key of a shard set, with its count (a duplicated key counts twice): what an
    epoch must cover, before the planted faults are taken away."""
    manifest = Manifest.load(root)
    with ByteSource(manifest) as source:
        return Counter(key for shard in range(len(manifest.shards)) for key in source.index(shard).keys)


def clean_shards(out: str | Path, *, shards: int = 3, per_shard: int = 8, seed: int = 0) -> Manifest:
    """A small labelled shard set without faults (the base every planted fault starts from)."""
    return write_raw_shards(out, _good_samples(shards, per_shard, seed))


def _png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(small_jpeg(seed=seed))).save(out, format="PNG")
    return out.getvalue()


# fault name -> (changes to the victim's members, None removing one; error class name; reason fragment)
_MEMBER_FAULTS: dict[str, tuple[Callable[[int], dict[str, bytes | None]], str, str]] = {
    "truncated_jpeg": (
        lambda seed: {"jpg": _cut(small_jpeg(seed=seed))},
        "ImageHeaderError",
        "truncated JPEG",
    ),
    "not_an_image": (
        lambda seed: {"jpg": b"this is not an image\n" * 20},
        "ImageHeaderError",
        "cannot read the image header",
    ),
    "empty_member": (lambda seed: {"jpg": b""}, "ImageHeaderError", "empty (0 bytes)"),
    "png_as_jpg": (lambda seed: {"jpg": _png(seed)}, "ImageHeaderError", "holds a PNG image"),
    "cmyk_jpeg": (lambda seed: {"jpg": small_jpeg(seed=seed, mode="CMYK")}, "ImageHeaderError", "CMYK JPEG"),
    "over_pixel_limit": (
        lambda seed: {"jpg": forge_jpeg_size(small_jpeg(seed=seed), 9000, 9000)},
        "ImageHeaderError",
        "exceeds the limit",
    ),
    "bad_label": (
        lambda seed: {"jpg": small_jpeg(seed=seed), "cls": b"three"},
        "LabelError",
        "not an integer",
    ),
    "missing_image": (lambda seed: {"jpg": None}, "MissingMemberError", "no .jpg member"),
}

FAULTS = (
    *_MEMBER_FAULTS,
    "duplicate_key",
    "truncated_tar",
    "index_mismatch",
    "missing_shard",
    "checksum_mismatch",
)


def plant_fault(
    out: str | Path, fault: str, *, shards: int = 3, per_shard: int = 8, seed: int = 0, victim: int = 3
) -> PlantedFault:
    """Write `shards` labelled shards of `per_shard` small JPEGs into `out` and plant `fault`
    (one of `FAULTS`) in shard 1, sample `victim` (or, for shard-wide faults, all of shard 1)."""
    from fastssl import errors

    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    if shards < 2 or not 0 <= victim < per_shard - 1:
        raise ValueError("need at least 2 shards and a victim before the last sample of a shard")
    out = Path(out)
    samples = _good_samples(shards, per_shard, seed)
    shard_name = "shard-000001.tar"
    victim_key = samples[1][victim][0]
    if fault in _MEMBER_FAULTS:
        make, error, says = _MEMBER_FAULTS[fault]
        members = {**samples[1][victim][1], **make(seed + 7)}
        samples[1][victim] = (victim_key, {ext: data for ext, data in members.items() if data is not None})
        write_raw_shards(out, samples)
        return PlantedFault(fault, out, ((shard_name, victim_key),), getattr(errors, error), says)
    if fault == "duplicate_key":
        first = samples[1][1][0]
        samples[1][victim] = (first, samples[1][victim][1])
        write_raw_shards(out, samples)
        return PlantedFault(fault, out, ((shard_name, first),), errors.DuplicateKeyError, "duplicate key")
    manifest = write_raw_shards(out, samples)
    with ByteSource(manifest) as source:
        index = source.index(1)
    all_of_shard = tuple((shard_name, key) for key, _ in samples[1])
    tar, idx = out / shard_name, out / manifest.shards[1].index
    if fault == "truncated_tar":  # cut in the middle of the last sample's image data
        last = per_shard - 1
        offset, size = index.member(last, "jpg")
        os.truncate(tar, offset + size // 2)
        return PlantedFault(
            fault, out, ((shard_name, index.keys[last]),), errors.ShardError, "runs past the end of the file"
        )
    if fault == "index_mismatch":  # the victim's .jpg entry points at the next sample's image
        text = idx.read_text().splitlines()
        offset, size = index.member(victim, "jpg")
        other = index.member(victim + 1, "jpg")
        line = 1 + victim
        text[line] = text[line].replace(f"jpg {offset} {size}", f"jpg {other[0]} {size}")
        idx.write_text("\n".join(text) + "\n")
        return PlantedFault(fault, out, ((shard_name, victim_key),), errors.IndexMismatchError, "tar has")
    if fault == "missing_shard":
        tar.unlink()
        return PlantedFault(fault, out, all_of_shard, errors.ShardError, "cannot open shard")
    # checksum_mismatch: one byte of an image's JFIF density changes; it still decodes, same pixels
    offset, _ = index.member(victim, "jpg")
    with open(tar, "r+b") as f:
        f.seek(offset + 15)
        byte = f.read(1)
        f.seek(offset + 15)
        f.write(bytes([byte[0] ^ 1]))
    return PlantedFault(
        fault, out, all_of_shard, errors.ChecksumError, "checksum does not match", {"verify_checksums": True}
    )


IN_PLACE_FAULTS = ("not_an_image", "truncated_jpeg", "bad_label", "index_mismatch")


def plant_in_place(root: str | Path, per_kind: int = 2, seed: int = 0) -> list[tuple[str, str, str]]:
    """Damage a copy of a labelled shard set in place (same sizes, so every other sample stays
    where its index says): `per_kind` samples of each of `IN_PLACE_FAULTS`, at distinct random
    samples. Returns (shard path, key, fault) of each damaged sample. For soak runs."""
    root = Path(root)
    manifest = Manifest.load(root)
    rng = np.random.default_rng(seed)
    total = manifest.num_samples
    picks = rng.choice(total, size=per_kind * len(IN_PLACE_FAULTS), replace=False)
    starts = np.cumsum([0, *manifest.shard_sizes[:-1]])
    planted = []
    with ByteSource(manifest) as source:
        for n, global_id in enumerate(picks):
            kind = IN_PLACE_FAULTS[n // per_kind]
            shard = int(np.searchsorted(starts, global_id, side="right") - 1)
            sample = int(global_id - starts[shard])
            index = source.index(shard)
            key, info = index.keys[sample], manifest.shards[shard]
            offset, size = index.member(sample, "jpg" if kind != "bad_label" else "cls")
            if kind == "index_mismatch":  # the index sends the .jpg to a neighbour's image
                other = index.member((sample + 1) % len(index), "jpg")
                idx = manifest.index_path(shard)
                idx.write_text(idx.read_text().replace(f"jpg {offset} {size} ", f"jpg {other[0]} {size} ", 1))
            else:
                patch = {
                    "not_an_image": (0, b"this is not an image"[:size]),
                    "truncated_jpeg": (max(0, size - 64), b"\0" * min(64, size)),
                    "bad_label": (0, b"x" * size),
                }[kind]
                with open(manifest.shard_path(shard), "r+b") as f:
                    f.seek(offset + patch[0])
                    f.write(patch[1])
            planted.append((info.path, key, kind))
    return planted
