"""Sample keys: unique, readable, and safe for WebDataset and DALI's index format."""

import re

from hypothesis import given
from hypothesis import strategies as st

from fastssl.data.keys import MAX_KEY_LENGTH, key_stem, make_keys

SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def test_key_keeps_folder_and_stem_and_drops_extension():
    assert key_stem("dog/img.001.jpg") == "dog__img"
    assert key_stem("n01440764/n01440764_10026.JPEG") == "n01440764__n01440764_10026"
    assert key_stem("a b/ç.png") == "a_b__x"


def test_collisions_get_numbered_suffixes():
    assert make_keys(["a.jpg", "a.png", "a.b.jpg", "b.jpg"]) == ["a", "a-1", "a-2", "b"]


@given(st.lists(st.text(min_size=1, max_size=150), max_size=40))
def test_keys_are_unique_and_safe(paths):
    keys = make_keys(paths)
    assert len(keys) == len(paths)
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert SAFE.match(key), key
        assert len(key) <= MAX_KEY_LENGTH
