"""The host-side checks every backend relies on: JPEG completeness (a property test over cut points),
EXIF thumbnails that carry their own end marker, and errors that survive pickling whole."""

from __future__ import annotations

import io
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fastssl import errors
from fastssl.data.faults import small_jpeg
from fastssl.data.header import _scan_start, check_image, jpeg_is_complete

BASELINE = small_jpeg(96, 64, seed=4)


def _progressive() -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(BASELINE)).save(out, "JPEG", progressive=True, quality=90)
    return out.getvalue()


def _with_thumbnail(jpeg: bytes) -> bytes:
    """`jpeg` with an APP1 segment holding a whole JPEG (as EXIF thumbnails do), end marker included."""
    payload = b"Exif\0\0" + small_jpeg(16, 16, seed=9)
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


SAMPLES = {"baseline": BASELINE, "progressive": _progressive(), "thumbnail": _with_thumbnail(BASELINE)}


@pytest.mark.parametrize("name", SAMPLES)
def test_whole_jpegs_pass_with_their_size(name) -> None:
    data = SAMPLES[name]
    assert jpeg_is_complete(data) and jpeg_is_complete(data + b"\0" * 100)  # trailing padding is fine
    assert check_image(data, max_pixels=10**6, shard="s", key="k") == (64, 96)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(SAMPLES)), cut=st.floats(0, 1, exclude_max=True))
def test_a_jpeg_cut_anywhere_after_its_scan_starts_is_incomplete(name, cut) -> None:
    data = SAMPLES[name]
    scan = _scan_start(data)
    end = scan + 2 + int(cut * (len(data) - scan - 2))  # from the scan marker to one byte short
    assert not jpeg_is_complete(data[:end])


def test_a_truncated_jpeg_with_a_thumbnail_is_refused_naming_the_sample() -> None:
    data = SAMPLES["thumbnail"]
    with pytest.raises(errors.ImageHeaderError, match="truncated JPEG") as info:
        check_image(data[: len(data) - 300], max_pixels=10**6, shard="shard-7.tar", key="img_42")
    assert (info.value.shard, info.value.key) == ("shard-7.tar", "img_42")


@pytest.mark.parametrize(
    "kind", [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.DataError)]
)
def test_data_errors_survive_pickling_whole(kind) -> None:
    err = kind("something is wrong", shard="shard-1.tar", key="k7", path="/data/x")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is kind and str(back) == str(err)
    assert (back.shard, back.key, back.path, back.reason) == (
        "shard-1.tar",
        "k7",
        "/data/x",
        "something is wrong",
    )


def test_a_multi_picture_jpeg_and_stray_bytes_between_segments_are_accepted() -> None:
    first = Image.open(io.BytesIO(BASELINE))
    out = io.BytesIO()
    first.save(out, "MPO", save_all=True, append_images=[first.rotate(90)])
    mpo = out.getvalue()
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    assert check_image(mpo, max_pixels=10**6, shard="s", key="k") == (64, 96)
    app0_end = 4 + int.from_bytes(BASELINE[4:6], "big")
    stray = BASELINE[:app0_end] + b"\x00\x13" + BASELINE[app0_end:]  # junk after the first segment
    Image.open(io.BytesIO(stray)).load()  # PIL decodes it (libjpeg warns), so fastssl must accept it
    assert check_image(stray, max_pixels=10**6, shard="s", key="k") == (64, 96)
