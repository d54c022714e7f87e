"""Turn input file paths into WebDataset sample keys: unique, readable, no dots or separators."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
MAX_KEY_LENGTH = 90  # keeps "<key>.<ext>" inside tar's 100-byte ustar name field


def key_stem(relpath: str) -> str:
    """The readable part of a key: the path without its extension, unsafe runs replaced by '_'.

    WebDataset splits a member name at its first dot into key and extension, and DALI's index
    format separates fields by spaces, so keys keep only letters, digits, '_' and '-'.
    """
    path = PurePosixPath(relpath.replace("\\", "/"))
    parts = [*path.parts[:-1], path.name.split(".", 1)[0] or path.name]
    stem = "__".join(_UNSAFE.sub("_", part).strip("_") or "x" for part in parts)
    return stem[:MAX_KEY_LENGTH] or "x"


def make_keys(relpaths: Iterable[str]) -> list[str]:
    """One unique key per path, in order; collisions after sanitising get a `-N` suffix."""
    keys: list[str] = []
    taken: set[str] = set()
    for relpath in relpaths:
        stem = key_stem(relpath)
        key, n = stem, 1
        while key in taken:
            suffix = f"-{n}"
            key = stem[: MAX_KEY_LENGTH - len(suffix)] + suffix
            n += 1
        taken.add(key)
        keys.append(key)
    return keys
