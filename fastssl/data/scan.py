"""Find the inputs of a shard run: an ImageFolder tree (labels from sub-folders) or a flat folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class InputFile:
    """One input: its path relative to the source folder and its class index (None when unlabelled)."""

    relpath: str
    label: int | None


@dataclass
class SourceListing:
    """What a source folder holds: inputs to try, ones refused up front, and hidden entries skipped."""

    root: Path
    classes: tuple[str, ...] | None
    inputs: list[InputFile] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (relpath, kind, reason)
    hidden: list[str] = field(default_factory=list)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_files(folder: Path, root: Path, hidden: list[str]) -> list[str]:
    """Every non-hidden file below `folder` (following no directory links), sorted, relative to root."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [d for d in dirnames if _is_hidden(d)]:
            hidden.append(os.path.relpath(os.path.join(dirpath, name), root))
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            (hidden if _is_hidden(name) else found).append(rel)
    return sorted(found)


def scan_source(src: str | os.PathLike) -> SourceListing:
    """List a source folder.

    With sub-folders it is an ImageFolder tree: each sub-folder is a class (sorted names give the
    class indices, as torchvision does) and files directly in `src` are refused as unlabelled.
    Without sub-folders every file is an unlabelled input. Hidden names (leading dot) are skipped
    and listed, never silently dropped.
    """
    root = Path(src)
    if not root.is_dir():
        raise NotADirectoryError(f"source folder {root} does not exist or is not a folder")
    hidden: list[str] = []
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    for entry in entries:
        if _is_hidden(entry.name):
            hidden.append(entry.name)
    visible = [e for e in entries if not _is_hidden(e.name)]
    class_dirs = [e.name for e in visible if e.is_dir()]
    top_files = [e.name for e in visible if not e.is_dir()]
    if not class_dirs:
        listing = SourceListing(root, None, [InputFile(name, None) for name in top_files])
        listing.hidden = hidden
        return listing
    listing = SourceListing(root, tuple(class_dirs))
    listing.refused = [
        (name, "unlabelled", "file outside any class folder of an ImageFolder tree") for name in top_files
    ]
    for label, name in enumerate(class_dirs):
        for rel in _walk_files(root / name, root, hidden):
            listing.inputs.append(InputFile(rel, label))
    listing.hidden = hidden
    return listing
