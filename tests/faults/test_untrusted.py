"""Untrusted inputs: tar entries that could escape (absolute paths, `..`, links, devices), `pipe:` URLs,
pickled code in a checkpoint, and decompression bombs, refused on every reader and backend."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from fastssl.data.cache import CacheFullError
from fastssl.data.faults import forge_jpeg_size, plant_fault, small_jpeg, write_raw_shards
from fastssl.data.index import build_index, read_index
from fastssl.data.manifest import Manifest
from fastssl.errors import (
    ImageHeaderError,
    ManifestError,
    ShardError,
    UnsafeMemberError,
    UnsafeSourceError,
)
from fastssl.loader import SSLLoader
from fastssl.recipes import SimCLR
from fastssl.train.checkpoint import load_checkpoint, save_checkpoint

RECIPE = SimCLR(size=24)
# where an absolute member name would land if extracted: a name of this run only, so that a leftover of
# another run or checkout cannot fail the check
ESCAPED = f"/tmp/fastssl-escaped-{os.getpid()}.jpg"


def _entry(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, target, 0o644
    return info


HOSTILE = {
    "absolute_path": (_entry(ESCAPED, tarfile.REGTYPE), "an absolute path"),
    "dot_dot": (_entry("../fastssl-escaped.jpg", tarfile.REGTYPE), "'..' path component"),
    "symlink": (_entry("evil.jpg", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    "hardlink": (_entry("evil.jpg", tarfile.LNKTYPE, "good_000.jpg"), "hard link"),
    "char_device": (_entry("evil.jpg", tarfile.CHRTYPE), "character device"),
    "block_device": (_entry("evil.jpg", tarfile.BLKTYPE), "block device"),
    "fifo": (_entry("evil.jpg", tarfile.FIFOTYPE), "FIFO"),
}


def _hostile_tar(path: Path, entry: tarfile.TarInfo) -> Path:
    jpeg = small_jpeg(seed=3)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        good = tarfile.TarInfo("good_000.jpg")
        good.size = len(jpeg)
        tar.addfile(good, io.BytesIO(jpeg))
        if entry.isreg():
            entry.size = len(jpeg)
            tar.addfile(entry, io.BytesIO(jpeg))
        else:
            tar.addfile(entry)
    return path


@pytest.mark.parametrize("kind", HOSTILE)
def test_indexing_refuses_hostile_members_and_writes_nothing(kind, tmp_path, monkeypatch) -> None:
    entry, says = HOSTILE[kind]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    tar = _hostile_tar(tmp_path / "hostile.tar", entry)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UnsafeMemberError, match=says) as info:
        build_index(tar)
    assert info.value.shard == str(tar) and entry.name in str(info.value)
    cli = subprocess.run(
        [sys.executable, "-m", "fastssl.cli", "index", str(tar)], capture_output=True, text=True
    )
    assert cli.returncode != 0 and says in cli.stderr
    assert sorted(tmp_path.rglob("*")) == before  # no index, nothing extracted
    assert not Path(ESCAPED).exists()


def _shards_with_index_pointing_at(tmp_path: Path, entry: tarfile.TarInfo) -> tuple[Path, str]:
    """A good shard set whose shard 0 has `entry` appended and its index edited to read it:
    an index written by hand or by another tool, which the reader must not trust."""
    root = tmp_path / "shards"
    samples = [[(f"k{i}", {"cls": b"0", "jpg": small_jpeg(seed=i)}) for i in range(4)]]
    write_raw_shards(root, samples)
    tar_path = root / "shard-000000.tar"
    with tarfile.open(tar_path, "a", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(entry)
    with tarfile.open(tar_path) as tar:
        offset = tar.getmember(entry.name).offset_data
    index = read_index(root / "shard-000000.idx")
    text = index.to_text().splitlines()
    key = entry.name.rsplit(".", 1)[0]
    text[1] = (
        text[1]
        .replace("k0.jpg", f"{entry.name}")
        .replace(f"jpg {index.member(0, 'jpg')[0]} {index.member(0, 'jpg')[1]}", f"jpg {offset} 0")
    )
    text[1] = text[1].replace("k0.cls", f"{key}.cls")
    (root / "shard-000000.idx").write_text("\n".join(text) + "\n")
    manifest = Manifest.load(root)
    info = manifest.shards[0]
    import dataclasses

    from fastssl.data.manifest import sha256_file

    fixed = dataclasses.replace(info, sha256=sha256_file(tar_path), bytes=tar_path.stat().st_size)
    dataclasses.replace(manifest, shards=(fixed,)).save(root)
    return root, key


@pytest.mark.parametrize(
    "entry, says",
    [
        (_entry("evil.jpg", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (_entry("evil.jpg", tarfile.CHRTYPE), "character device"),
        (_entry("../evil.jpg", tarfile.REGTYPE), "'..' path component"),
    ],
    ids=["symlink", "device", "dot_dot"],
)
def test_the_loader_refuses_an_index_that_points_at_a_hostile_entry(entry, says, tmp_path, backend) -> None:
    root, key = _shards_with_index_pointing_at(tmp_path, entry)
    name, device = backend
    with (
        SSLLoader(root, RECIPE, 4, backend=name, device=device, num_threads=1) as loader,
        pytest.raises(UnsafeMemberError, match=says) as info,
    ):
        list(loader)
    assert info.value.key == key
    with SSLLoader(root, RECIPE, 4, backend=name, device=device, num_threads=1, on_error="skip") as loader:
        batches = list(loader)
    assert [s["key"] for s in loader.skipped] == [key]
    assert sorted(k for b in batches for k, ok in zip(b["key"], b["valid"].tolist(), strict=True) if ok) == [
        "k1",
        "k2",
        "k3",
    ]


def test_pipe_urls_are_refused_unless_allowed_and_never_run(tmp_path) -> None:
    planted = plant_fault(tmp_path / "set", "bad_label")  # any valid tar will do: shard 0 is clean
    shard = planted.root / "shard-000000.tar"
    marker = tmp_path / "the-command-ran"
    url = f"pipe:touch {marker}; cat {shard}"
    for data in (url, [url]):
        with pytest.raises(UnsafeSourceError, match="allow_pipe=True") as info:
            SSLLoader(data, RECIPE, 4, backend="kornia", device="cpu")
        assert info.value.shard == url
    assert not marker.exists()
    cli = subprocess.run(
        [sys.executable, "-m", "fastssl.cli", "inspect", url], capture_output=True, text=True
    )
    assert cli.returncode != 0 and not marker.exists()


def test_an_allowed_pipe_url_is_copied_once_indexed_and_read_exactly(tmp_path) -> None:
    planted = plant_fault(tmp_path / "set", "bad_label")
    shard = planted.root / "shard-000000.tar"
    counter = tmp_path / "runs"
    url = f"pipe:echo run >> {counter}; cat {shard}"
    cache = tmp_path / "cache"
    for _ in range(2):
        with SSLLoader(
            [url], RECIPE, 4, backend="kornia", device="cpu", num_threads=1, allow_pipe=True, cache_dir=cache
        ) as loader:
            keys = sorted(k for b in loader for k in b["key"])
    assert keys == sorted(read_index(planted.root / "shard-000000.idx").keys)
    assert counter.read_text().count("run") == 1  # cached after the first use
    assert not list(cache.rglob(".*.tmp"))
    assert len(list((cache / "shards").glob("pipe-*.tar"))) == 1  # in the shard cache remote sets use


def test_pipe_shards_share_the_bounded_cache_and_stay_while_a_loader_reads_them(tmp_path) -> None:
    planted = plant_fault(tmp_path / "set", "bad_label")  # shard 1 has the bad label
    shards = sorted(planted.root.glob("shard-*.tar"))
    size = max(p.stat().st_size for p in shards)
    cache = tmp_path / "cache"
    url = [f"pipe:cat {shard}" for shard in shards]

    def loader(urls: list[str], limit: int) -> SSLLoader:
        return SSLLoader(urls, RECIPE, 2, backend="kornia", device="cpu", num_threads=1, allow_pipe=True,
                         cache_dir=cache, cache_limit=limit, on_error="skip")  # fmt: skip

    def keys(shard: Path) -> set[str]:
        return set(read_index(shard.with_suffix(".idx")).keys)

    with loader([url[0]], 2 * size + size // 2) as held:
        with loader([url[2]], 2 * size + size // 2) as beside:  # fits beside held's pinned shard
            assert {k for b in beside for k in b["key"]} == keys(shards[2])
        with pytest.raises(CacheFullError, match="pipe: shards") as info:
            loader([url[1]], size + size // 2)  # held's shard cannot be evicted to make room
        assert info.value.shard == url[1]
        assert {k for b in held for k in b["key"]} == keys(shards[0])
    # nobody reads them now: a loader under the same small limit evicts the others
    with loader([url[1]], size + size // 2) as later:
        assert {k for b in later for k in b["key"]} == keys(shards[1])
    assert len(list((cache / "shards").glob("pipe-*.tar"))) == 1


def test_a_failing_pipe_command_names_its_url_and_exit_status(tmp_path) -> None:
    url = "pipe:exit 3"
    with pytest.raises(ShardError, match="exit 3") as info:
        SSLLoader([url], RECIPE, 4, backend="kornia", allow_pipe=True, cache_dir=tmp_path)
    assert info.value.shard == url
    left = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.name.endswith(".lock") for p in left), left  # no tar, index or temporary
    with pytest.raises(UnsafeSourceError):  # the scheme is matched in any case
        SSLLoader(["PIPE:cat x.tar"], RECIPE, 4, backend="kornia")


def test_a_local_folder_with_a_colon_in_its_name_is_not_a_url(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    plant_fault("imagenet:train", "bad_label")
    with SSLLoader("imagenet:train", RECIPE, 4, backend="kornia", num_threads=1, on_error="skip") as loader:
        assert len(list(loader)) == len(loader) == 6


def test_a_manifest_naming_a_pipe_command_is_refused(tmp_path) -> None:
    planted = plant_fault(tmp_path / "set", "bad_label")
    text = (planted.root / "manifest.json").read_text()
    (planted.root / "manifest.json").write_text(text.replace('"shard-000000.tar"', '"pipe:cat x.tar"'))
    with pytest.raises(ManifestError, match="never runs pipe: commands"):
        Manifest.load(planted.root)


class _Boom:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_checkpoint_carrying_a_pickled_callable_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Boom()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    save_checkpoint(tmp_path / "ok.pt", {"w": torch.ones(2)})
    assert load_checkpoint(tmp_path / "ok.pt")["w"].sum() == 2


def test_a_decompression_bomb_is_refused_before_decoding_on_every_backend(tmp_path, backend) -> None:
    """A header claiming 30000 x 30000 pixels: both backends refuse it from the header alone, and
    a user's lower limit applies as well."""
    root = tmp_path / "bomb"
    bomb = forge_jpeg_size(small_jpeg(seed=1), 30000, 30000)
    samples = [[("bomb", {"cls": b"0", "jpg": bomb}), ("fine", {"cls": b"1", "jpg": small_jpeg(80, 60)})]]
    write_raw_shards(root, samples)
    name, device = backend
    with (
        SSLLoader(root, RECIPE, 2, backend=name, device=device, num_threads=1) as loader,
        pytest.raises(ImageHeaderError, match="900000000 pixels exceeds the limit") as info,
    ):
        list(loader)
    assert info.value.key == "bomb"
    with (
        SSLLoader(root, RECIPE, 2, backend=name, device=device, num_threads=1, max_pixels=4000) as loader,
        pytest.raises(ImageHeaderError, match="4800 pixels exceeds the limit of 4000") as info,
    ):
        list(loader)
