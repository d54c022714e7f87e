"""Label sidecars: a class index per sample key, kept beside a shard set instead of in it.

`fastssl pseudo-label` writes one from a pretrained model's clusters (knowledge transfer by
clustering, Noroozi et al. 2018); `SSLLoader(labels=...)` reads it in place of the shards' `.cls`
members. The file is text, one `key<TAB>label` line per sample after a `#` header line holding
JSON (`classes`, the number of classes, and whatever made the labels), so that it can be read,
diffed and joined with other tools.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HEADER = "# fastssl labels "


@dataclass(frozen=True)
class LabelFile:
    """The contents of a label sidecar: keys and their labels in file order, the class count and
    the header's other facts (`meta`)."""

    keys: list[str]
    labels: np.ndarray  # int64, one per key
    classes: int
    meta: dict[str, Any] = field(default_factory=dict)


def write_label_file(
    path: str | os.PathLike, keys: Sequence[str], labels: np.ndarray, *, classes: int, **meta: Any
) -> Path:
    """Write `labels[i]` for `keys[i]`; `classes` bounds them (0 <= label < classes)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(keys):
        raise ValueError(f"{len(keys)} keys but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got [{labels.min()}, {labels.max()}]")
    bad = [k for k in keys if not k or "\t" in k or "\n" in k]
    if bad:
        raise ValueError(f"keys must be non-empty and free of tabs and newlines, e.g. {bad[:3]!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = HEADER + json.dumps({"classes": int(classes), **meta}, sort_keys=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as f:
        f.write(header + "\n")
        f.writelines(f"{k}\t{v}\n" for k, v in zip(keys, labels.tolist(), strict=True))
    os.replace(temporary, path)  # never a half-written sidecar under the final name
    return path


def label_file_classes(path: str | os.PathLike) -> int:
    """The number of classes a label sidecar declares, from its header line alone."""
    with open(path) as f:
        return int(_header(path, f.readline())["classes"])


def _header(path: str | os.PathLike, first: str) -> dict[str, Any]:
    """The JSON of a sidecar's first line, with an int `classes`; a ValueError naming the file."""
    if not first.startswith(HEADER):
        raise ValueError(
            f"{path} is not a fastssl label file (its first line is not {HEADER.strip()!r} + JSON)"
        )
    try:
        meta = json.loads(first[len(HEADER) :])
        meta["classes"] = int(meta["classes"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}, line 1: the header needs JSON with 'classes' ({err})") from None
    return meta


def read_label_file(path: str | os.PathLike) -> LabelFile:
    """A label sidecar's contents; a malformed line is a ValueError naming the file and line."""
    path = Path(path)
    with open(path) as f:
        meta = _header(path, f.readline())
        classes = meta.pop("classes")
        keys: list[str] = []
        values: list[int] = []
        seen: set[str] = set()
        for number, line in enumerate(f, start=2):
            line = line.rstrip("\n")
            if not line:
                continue
            key, tab, value = line.partition("\t")
            try:
                label = int(value) if tab else -1
            except ValueError:
                label = -1
            if not key or not 0 <= label < classes:
                raise ValueError(
                    f"{path}, line {number}: expected 'key<TAB>label', 0 <= label < {classes}, got {line!r}"
                )
            if key in seen:
                raise ValueError(f"{path}, line {number}: key {key!r} is labelled twice")
            seen.add(key)
            keys.append(key)
            values.append(label)
    return LabelFile(keys, np.array(values, dtype=np.int64), classes, meta)


def label_table(path: str | os.PathLike, keys: Sequence[str], wanted: np.ndarray | None = None) -> LabelFile:
    """The sidecar at `path` as a table by global sample id: `labels[i]` is the label of the
    sample whose key is `keys[i]` (every key of the shard set, in global-id order). Every sample
    in `wanted` (global ids; all when None) must have a label, and every key of the file must name
    a sample: either failing is a ValueError naming the file and keys."""
    file = read_label_file(path)
    where = {key: i for i, key in enumerate(keys)}
    unknown = [k for k in file.keys if k not in where]
    if unknown:
        raise ValueError(
            f"{path} labels {len(unknown)} key(s) that name no sample of this shard set, e.g. {unknown[:5]} "
            "(a label file made for other shards?)"
        )
    table = np.full(len(keys), -1, dtype=np.int64)
    table[np.array([where[k] for k in file.keys], dtype=np.int64)] = file.labels
    needed = np.arange(len(keys)) if wanted is None else np.asarray(wanted, dtype=np.int64)
    missing = needed[table[needed] < 0]
    if len(missing):
        raise ValueError(
            f"{path} has no label for {len(missing)} sample(s) the loader reads, e.g. "
            f"{[keys[i] for i in missing[:5].tolist()]}"
        )
    return LabelFile(list(keys), table, file.classes, file.meta)
