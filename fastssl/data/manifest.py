"""The shard set's manifest: format version, classes, and per-shard path, size, bytes and checksum."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastssl.data.atomic import durable_replace
from fastssl.data.remote import url_scheme
from fastssl.errors import ManifestError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fastssl-shards"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ShardInfo:
    """One shard: tar and index paths relative to the manifest, sample count, bytes, sha256."""

    path: str
    index: str
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A shard set. `root` is the folder the shard paths are relative to (not serialised)."""

    shards: tuple[ShardInfo, ...]
    classes: tuple[str, ...] | None = None
    root: Path = field(default=Path("."), compare=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def shard_sizes(self) -> np.ndarray:
        """Samples per shard, the only thing the epoch plan needs to know about the data."""
        return np.array([s.samples for s in self.shards], dtype=np.int64)

    def shard_path(self, i: int) -> Path:
        return self.root / self.shards[i].path

    def index_path(self, i: int) -> Path:
        return self.root / self.shards[i].index

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "num_samples": self.num_samples,
            "classes": list(self.classes) if self.classes is not None else None,
            "shards": [asdict(s) for s in self.shards],
            **self.extra,
        }

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `folder/manifest.json` atomically (temporary name, then rename)."""
        target = Path(folder) / MANIFEST_NAME
        tmp = target.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        durable_replace(tmp, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        """Load a manifest from its file or from the folder that holds `manifest.json`."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ManifestError(f"no manifest at {path}", path=str(path)) from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ManifestError(f"cannot read manifest: {err}", path=str(path)) from err
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"not a {MANIFEST_FORMAT} manifest", path=str(path))
        if data.get("version") != MANIFEST_VERSION:
            raise ManifestError(
                f"manifest version {data.get('version')!r} is not supported "
                f"(this fastssl reads version {MANIFEST_VERSION})",
                path=str(path),
            )
        try:
            shards = tuple(_shard_info(s) for s in data["shards"])
        except (KeyError, TypeError, ValueError) as err:
            raise ManifestError(f"malformed shard list: {err}", path=str(path)) from err
        known = {"format", "version", "num_samples", "classes", "shards"}
        classes = data.get("classes")
        if classes is not None and not (
            isinstance(classes, list) and all(isinstance(c, str) for c in classes)
        ):
            raise ManifestError("'classes' must be a list of names or null", path=str(path))
        return cls(
            shards=shards,
            classes=tuple(classes) if classes is not None else None,
            root=path.parent,
            extra={k: v for k, v in data.items() if k not in known},
        )


def _shard_info(entry: Any) -> ShardInfo:
    """A ShardInfo from its JSON form, with every field's type checked."""
    if not isinstance(entry, dict):
        raise TypeError(f"shard entry {entry!r} is not an object")
    info = ShardInfo(**entry)
    for name, kind in (("path", str), ("index", str), ("samples", int), ("bytes", int), ("sha256", str)):
        value = getattr(info, name)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise ValueError(f"shard {entry.get('path')!r}: {name} = {value!r} is not a valid {name}")
    for name in ("path", "index"):
        if url_scheme(getattr(info, name)) is not None:
            raise ValueError(
                f"shard {name} {getattr(info, name)!r} is a URL; a manifest names local files "
                "(it never runs pipe: commands)"
            )
    return info


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
