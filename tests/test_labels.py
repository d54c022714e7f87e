"""Label sidecars: written and read back, refused when malformed or made for other shards, and
read by the loader in place of the shards' `.cls` on both backends, labelled shards or not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastssl import SSLLoader
from fastssl.data.labels import label_file_classes, label_table, read_label_file, write_label_file
from fastssl.data.source import ByteSource
from fastssl.data.subset import sample_keys
from fastssl.data.writer import write_shards
from fastssl.loader import resolve_data
from fastssl.recipes import Crop
from tests.conftest import make_image_folder


def _keys(shards: Path) -> list[str]:
    source = ByteSource(resolve_data(shards))
    try:
        return sample_keys(source)
    finally:
        source.close()


def test_a_label_file_round_trips_with_its_header(tmp_path: Path) -> None:
    path = write_label_file(tmp_path / "l.tsv", ["a", "b", "c"], np.array([2, 0, 1]), classes=3, run="r")
    got = read_label_file(path)
    assert got.keys == ["a", "b", "c"] and got.labels.tolist() == [2, 0, 1]
    assert got.classes == 3 and got.meta == {"run": "r"} and label_file_classes(path) == 3
    assert not (tmp_path / "l.tsv.tmp").exists()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("a\t0\nb\t7\n", "line 3: expected 'key<TAB>label', 0 <= label < 3"),
        ("a\t0\nb\n", "line 3"),
        ("a\t0\na\t1\n", "line 3: key 'a' is labelled twice"),
        ("a\tx\n", "line 2"),
    ],
)
def test_a_malformed_label_file_is_refused_naming_its_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text('# fastssl labels {"classes": 3}\n' + body)
    with pytest.raises(ValueError, match=message):
        read_label_file(path)


def test_a_file_without_the_header_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain.tsv").write_text("a\t0\n")
    with pytest.raises(ValueError, match="not a fastssl label file"):
        read_label_file(tmp_path / "plain.tsv")
    with pytest.raises(ValueError, match="labels must lie in"):
        write_label_file(tmp_path / "x.tsv", ["a"], np.array([3]), classes=3)


def test_label_tables_refuse_foreign_keys_and_unlabelled_samples(tmp_path: Path) -> None:
    path = write_label_file(tmp_path / "l.tsv", ["a", "b", "zzz"], np.array([0, 1, 1]), classes=2)
    with pytest.raises(ValueError, match=r"1 key\(s\) that name no sample.*'zzz'"):
        label_table(path, ["a", "b", "c"])
    path = write_label_file(tmp_path / "l.tsv", ["a", "b"], np.array([0, 1]), classes=2)
    with pytest.raises(ValueError, match=r"no label for 1 sample\(s\).*'c'"):
        label_table(path, ["a", "b", "c"])
    table = label_table(path, ["a", "b", "c"], wanted=np.array([1, 0]))  # c is not read: fine
    assert table.labels.tolist() == [0, 1, -1]


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 15 images as labelled shards (3 classes) and as unlabelled ones (a flat folder)."""
    root = tmp_path_factory.mktemp("label-sidecars")
    folder = make_image_folder(root / "src")
    flat = root / "flat"
    flat.mkdir()
    for image in sorted(folder.rglob("*.jpg")):
        (flat / image.name).write_bytes(image.read_bytes())
    sets = {"labelled": root / "labelled", "unlabelled": root / "unlabelled"}
    write_shards(folder, sets["labelled"], shard_size=4, workers=1, progress=False)
    write_shards(flat, sets["unlabelled"], shard_size=4, workers=1, progress=False)
    return sets


@pytest.mark.parametrize("kind", ["labelled", "unlabelled"])
def test_the_loader_reads_a_sidecar_in_place_of_cls(shard_sets, tmp_path: Path, backend, kind) -> None:
    name, device = backend
    shards = shard_sets[kind]
    keys = _keys(shards)
    sidecar = {k: (7 * i + 3) % 5 for i, k in enumerate(keys)}  # unlike any .cls label
    path = write_label_file(tmp_path / "l.tsv", list(sidecar), np.array(list(sidecar.values())), classes=5)
    seen: dict[str, int] = {}
    with SSLLoader(
        shards, Crop(size=32), 4, backend=name, device=device, rank=0, world_size=1, num_threads=1,
        labels=path,
    ) as loader:  # fmt: skip
        assert loader.num_classes == 5
        for batch in loader:
            for key, label, ok in zip(
                batch["key"], batch["label"].tolist(), batch["valid"].tolist(), strict=True
            ):
                if ok:
                    seen[key] = label
    assert seen == sidecar


def test_a_sidecar_covers_a_subset_only(shard_sets, tmp_path: Path) -> None:
    shards = shard_sets["unlabelled"]
    keys = _keys(shards)[:6]
    path = write_label_file(tmp_path / "l.tsv", keys, np.arange(6) % 2, classes=2)
    with SSLLoader(
        shards, Crop(size=32), 4, backend="kornia", device="cpu", rank=0, world_size=1, num_threads=1,
        subset=keys, labels=path,
    ) as loader:  # fmt: skip
        labels = {k: v for b in loader for k, v in zip(b["key"], b["label"].tolist(), strict=True)}
    assert labels == {k: i % 2 for i, k in enumerate(keys)}
    with pytest.raises(ValueError, match="no label for 9 sample"):
        SSLLoader(shards, Crop(size=32), 4, backend="kornia", device="cpu", labels=path)
