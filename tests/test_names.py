"""File names that are not UTF-8: the reversible text form, the shown form, JSON's round trip."""

from __future__ import annotations

import json
import os

import pytest

from cbir.core.names import from_key, from_text, is_text, shown, to_key, to_text

ODD = [
    os.fsdecode(b"bad\xff.jpg"),
    os.fsdecode(b"\xc3(\\x41.jpg"),
    "back\\slash.jpg",
    "a\\xff.jpg",
    "quote'\"%.jpg",
    "caf\u00e9.jpg",
    "cafe\u0301.jpg",
    "\\\\",
    "plain.jpg",
]


@pytest.mark.parametrize("name", ODD)
def test_text_form_round_trips_and_is_valid_unicode(name: str) -> None:
    text = to_text(name)
    text.encode("utf-8")  # valid Unicode, whatever the name's bytes
    assert from_text(text) == name
    assert os.fsencode(from_text(text)) == os.fsencode(name)


@pytest.mark.parametrize("name", ODD)
def test_json_round_trips_names_losslessly(name: str) -> None:
    assert json.loads(json.dumps({"path": name}))["path"] == name


def test_clean_names_keep_their_text_form_except_backslashes() -> None:
    assert to_text("caf\u00e9 1.jpg") == "caf\u00e9 1.jpg"
    assert to_text("a\\b") == "a\\\\b"


def test_shown_escapes_only_undecodable_bytes() -> None:
    assert shown(os.fsdecode(b"bad\xff.jpg")) == "bad\\xff.jpg"
    assert shown("caf\u00e9.jpg") == "caf\u00e9.jpg"
    assert not is_text(os.fsdecode(b"\xff"))
    assert is_text("\u00e9")


@pytest.mark.parametrize("text", ["a\\b", "trailing\\", "\\xZZ", "\\xFF"])
def test_from_text_refuses_what_to_text_cannot_write(text: str) -> None:
    with pytest.raises(ValueError, match="not an escaped file name"):
        from_text(text)


@pytest.mark.parametrize("name", ODD)
def test_key_form_round_trips_without_backslashes_or_double_quotes(name: str) -> None:
    key = to_key(name)
    key.encode("utf-8")
    assert "\\" not in key and '"' not in key
    assert from_key(key) == name


@pytest.mark.parametrize("key", ["back\\slash", "100%", "%zz", "%41", 'a"b'])
def test_a_key_to_key_cannot_have_made_is_refused(key: str) -> None:
    with pytest.raises(ValueError):
        from_key(key)
