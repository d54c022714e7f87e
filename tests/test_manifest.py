"""Manifest loading: malformed content is a ManifestError naming the file, never a stray exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastssl.data.manifest import Manifest
from fastssl.errors import ManifestError


def test_round_trip(shard_dir: Path):
    manifest = Manifest.load(shard_dir)
    again = Manifest.load(manifest.save(shard_dir))
    assert again == manifest and again.extra["counts"] == manifest.extra["counts"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format="other"), "not a fastssl-shards manifest"),
        (lambda m: m.update(version=99), "version 99 is not supported"),
        (lambda m: m["shards"][0].update(samples=None), "samples = None"),
        (lambda m: m["shards"][0].update(samples=-1), "samples = -1"),
        (lambda m: m["shards"][0].update(sha256=5), "sha256 = 5"),
        (lambda m: m["shards"][0].pop("index"), "malformed shard list"),
        (lambda m: m["shards"][0].update(extra=1), "malformed shard list"),
        (lambda m: m.update(shards=[1]), "is not an object"),
        (lambda m: m.update(classes="abc"), "'classes' must be a list"),
    ],
)
def test_malformed_manifest(shard_dir: Path, edit, message: str):
    path = shard_dir / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message) as info:
        Manifest.load(shard_dir)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"{not json", b""])
def test_unreadable_manifest(tmp_path: Path, content: bytes):
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(ManifestError, match="cannot read manifest"):
        Manifest.load(tmp_path)


def test_missing_manifest(tmp_path: Path):
    with pytest.raises(ManifestError, match="no manifest at"):
        Manifest.load(tmp_path)
