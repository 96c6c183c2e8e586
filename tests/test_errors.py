"""Errors carry the text they point into: an error shows its own source line however many texts of the same file
name were loaded after it (there is no registry of sources by file name to go stale)."""

import pickle

import pytest

import specdsl
from specdsl.errors import Span, SpecError

FIRST = """model first {
    input x: float[batch, 8]
    return x -> Linear(8, 8, bias = maybe)
}
"""

SECOND = """# another text, loaded under the same name
model second {
    input x: float[batch, 8]
    return x -> Linear(8, 8)
}
"""


def error_of(text: str, name: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        specdsl.loads(text, name=name)
    return caught.value


def test_an_error_shows_its_own_text_after_another_load_of_the_same_name():
    err = error_of(FIRST, "same.spec")
    specdsl.loads(SECOND, name="same.spec")
    rendered = str(err)
    assert rendered.startswith("same.spec:3:")
    assert "Linear(8, 8, bias = maybe)" in rendered
    assert "input x: float[batch, 8]" not in rendered  # line 3 of SECOND


def test_a_parse_error_shows_its_own_text_after_another_load_of_the_same_name():
    err = error_of("model m {\n    input x: float[batch, 8]\n    return x ->\n}\n", "parsed.spec")
    specdsl.loads(SECOND, name="parsed.spec")
    assert "    4 | }" in str(err)


def test_an_error_about_the_whole_file_shows_its_first_line():
    err = error_of("param d = 64\n", "nomodel.spec")
    specdsl.loads(SECOND, name="nomodel.spec")
    assert "    1 | param d = 64" in str(err)


def test_the_text_is_not_part_of_a_span():
    text = "model m {}\n"
    with_text, without = Span("f.spec", 1, 7, 8, source=text), Span("f.spec", 1, 7, 8)
    assert with_text == without and hash(with_text) == hash(without)
    assert repr(with_text) == repr(without) and text not in repr(with_text)
    assert pickle.loads(pickle.dumps(with_text)) == with_text


def test_a_span_without_text_shows_no_line():
    assert str(SpecError("bad flag", Span("--set", 0, 0))) == "--set: error: bad flag"
