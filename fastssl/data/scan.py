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


def _walk_files(folder: Path, root: Path, listing: SourceListing) -> list[str]:
    """Every non-hidden file below `folder`, sorted, relative to root.

    Folders that cannot be listed are refused as `unreadable`; linked folders are followed,
    and one that leads back into a folder already walked is refused as `link_loop`.
    """
    found: list[str] = []
    seen: set[tuple[int, int]] = set()

    def unreadable(err: OSError) -> None:
        rel = os.path.relpath(err.filename or folder, root)
        listing.refused.append((rel, "unreadable", f"cannot list folder: {err.strerror or err}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        here = os.stat(dirpath)
        seen.add((here.st_dev, here.st_ino))
        keep = []
        for name in sorted(dirnames):
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if _is_hidden(name):
                listing.hidden.append(rel)
                continue
            try:
                target = os.stat(os.path.join(dirpath, name))
            except OSError as err:
                listing.refused.append((rel, "unreadable", f"cannot stat folder: {err.strerror}"))
                continue
            if (target.st_dev, target.st_ino) in seen:
                listing.refused.append((rel, "link_loop", "folder link leads back into the tree"))
                continue
            keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            (listing.hidden if _is_hidden(name) else found).append(rel)
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
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as err:
        raise NotADirectoryError(f"cannot list source folder {root}: {err.strerror}") from err
    hidden = [e.name for e in entries if _is_hidden(e.name)]
    visible = [e for e in entries if not _is_hidden(e.name)]
    class_dirs = [e.name for e in visible if e.is_dir()]
    top_files = [e.name for e in visible if not e.is_dir()]
    if not class_dirs:
        inputs = [InputFile(name, None) for name in top_files]
        return SourceListing(root, None, inputs=inputs, hidden=hidden)
    listing = SourceListing(root, tuple(class_dirs), hidden=hidden)
    listing.refused = [
        (name, "unlabelled", "file outside any class folder of an ImageFolder tree") for name in top_files
    ]
    for label, name in enumerate(class_dirs):
        for rel in _walk_files(root / name, root, listing):
            listing.inputs.append(InputFile(rel, label))
    return listing
