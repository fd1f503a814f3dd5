"""One-line error messages: the first line of an exception's text, or its type's name when it has none."""

from __future__ import annotations

from bigmodel_cli.errors import first_line, named_line


def test_first_and_named_line():
    long = ValueError("  bad value here\nsecond line")
    assert first_line(long) == "bad value here" and first_line(long, 3) == "bad"
    assert named_line(long) == "ValueError: bad value here" and named_line(long, 3) == "ValueError: bad"
    assert first_line(KeyError()) == "KeyError" and named_line(RuntimeError("  ")) == "RuntimeError"
