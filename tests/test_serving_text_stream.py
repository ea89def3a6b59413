"""Streamed text: whole UTF-8 characters only, stop strings decided before anything is sent."""

import pytest
from serving_api_helpers import byte_tokenizer

from llmos_jax.serving.text_stream import TextStream

TOKENIZER = byte_tokenizer()


def stream_all(text: str, stop=()) -> tuple[list[str], TextStream]:
    stream = TextStream(TOKENIZER, stop)
    pieces = [stream.add(t) for t in TOKENIZER.encode(text)]
    pieces.append(stream.finish())
    return pieces, stream


def test_chinese_over_a_byte_vocabulary_never_sends_half_a_character():
    text = "床前明月光，疑是地上霜。"
    pieces, stream = stream_all(text)
    assert "".join(pieces) == text == stream.text
    assert all("\ufffd" not in p for p in pieces)
    sent = [p for p in pieces if p]
    assert len(sent) == 12  # one piece per character, each sent once its 3 bytes arrived


@pytest.mark.parametrize("text, stop, expected", [
    ("hello world. bye", ["."], "hello world"),
    ("hello world. bye", ["world", "hello"], ""),
    ("abc END def", [" END"], "abc"),
    ("no stop here", ["zzz"], "no stop here"),
    ("月光。下", ["。"], "月光"),
])
def test_stop_strings_cut_the_text_and_are_never_sent(text, stop, expected):
    pieces, stream = stream_all(text, stop)
    assert "".join(pieces) == expected == stream.text
    assert stream.stopped == (expected != text)


def test_text_that_may_start_a_stop_string_is_held_back_until_decided():
    stream = TextStream(TOKENIZER, ["STOP"])
    sent = [stream.add(t) for t in TOKENIZER.encode("abST")]
    assert "".join(sent) == "ab"          # "ST" could still become "STOP"
    assert stream.add(TOKENIZER.encode("x")[0]) == "STx"  # it did not
    assert [stream.add(t) for t in TOKENIZER.encode("STOP")][-1] == ""
    assert stream.stopped and stream.text == "abSTx"


def test_a_sequence_cut_inside_a_character_ends_with_the_replacement_character():
    stream = TextStream(TOKENIZER)
    ids = TOKENIZER.encode("é")
    assert stream.add(ids[0]) == ""
    assert stream.finish() == "\ufffd"
