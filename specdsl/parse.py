"""Spec text -> syntax tree: reading a spec file, the checks before parsing (size, encoding, nesting), and two
caches of parsed files, this process's and one on disk (parse_cache.py), so that a `specc compile` of a file it has
seen imports no Lark at all. Text not seen before goes to grammar_parser.py, the only module that talks to Lark.
"""

from __future__ import annotations

import hashlib
import os

from . import parse_cache
from . import syntax as S
from .errors import Span, SpecError
from .io import open_regular

MAX_SOURCE_BYTES = 1_000_000  # a spec is a page of text; a megabyte is a mistake (a data file, a binary)
MAX_NESTING = 100  # parentheses and braces; deeper is a generated file gone wrong


def _check_nesting(text: str, file: str) -> None:
    """Refuse absurd nesting before Lark and the recursive tree walk meet it."""
    depth, line, col, in_str, in_comment = 0, 1, 0, False, False
    for ch in text:
        col += 1
        if ch == "\n":
            line, col, in_comment, in_str = line + 1, 0, False, False
            continue
        if in_comment:
            continue
        if in_str:
            in_str = ch != '"'
            continue
        if ch == "#":
            in_comment = True
        elif ch == '"':
            in_str = True
        elif ch in "({[":
            depth += 1
            if depth > MAX_NESTING:
                where = Span(file, line, col, source=text)
                raise SpecError(f"nesting is more than {MAX_NESTING} levels deep", where,
                                hint="split the expression with named values (`h = ...`)")
        elif ch in ")}]":
            depth = max(0, depth - 1)


def decode_source(data: bytes, file: str) -> str:
    """Bytes -> text, or a located SpecError for binary or non-UTF-8 input."""
    if len(data) > MAX_SOURCE_BYTES:
        raise SpecError(f"spec file is {len(data):,} bytes; specs larger than {MAX_SOURCE_BYTES:,} bytes are refused",
                        Span(file, 1, 1), hint="is this the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        col = e.start - (before.rfind(b"\n") + 1) + 1
        raise SpecError(f"file is not UTF-8 text (byte 0x{data[e.start]:02x})", Span(file, line, col),
                        hint="specs are UTF-8 text files") from None
    if "\x00" in text:
        at = text.index("\x00")
        line = text.count("\n", 0, at) + 1
        col = at - (text.rfind("\n", 0, at) + 1) + 1
        raise SpecError("file contains a NUL byte: is it a binary file?", Span(file, line, col))
    # A UTF-8 byte order mark opens files saved by Windows editors (Notepad's "UTF-8 with BOM"); it is no
    # character of the spec, and editors do not show it, so columns count from what follows it.
    return text.removeprefix("\ufeff")


_CACHE: dict[tuple[str, str], S.SpecFile] = {}


def parse_text(text: str, file: str = "<input>") -> S.SpecFile:
    """Parse spec text to a SpecFile. Cached by (file, content hash): in this process a re-parse of the same text is
    free, and across processes it is read back from the disk cache (parse_cache.py) without Lark."""
    key = (file, hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest())
    cached = _CACHE.get(key)
    if cached is None:
        cached = parse_cache.load(text, file)
    if cached is None:
        _check_nesting(text, file)
        from . import grammar_parser
        cached = grammar_parser.parse(text, file)
        parse_cache.store(text, file, cached)
    if len(_CACHE) > 256:
        _CACHE.clear()
    _CACHE[key] = cached
    return cached


def read_source(path: str | os.PathLike) -> tuple[str, str]:
    """Read a spec file: (display name, text). Every failure is a SpecError naming the path."""
    name = str(path)
    where = Span(name, 1, 1)
    with open_regular(path, where, hint="a spec is a text file") as f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_SOURCE_BYTES:
                raise SpecError(f"spec file is {size:,} bytes; specs larger than {MAX_SOURCE_BYTES:,} bytes are "
                                "refused", where, hint="is this the right file?")
            data = f.read(MAX_SOURCE_BYTES + 1)  # one byte past the limit at most: a file may grow as it is read
        except OSError as e:
            raise SpecError(f"cannot read '{name}': {e.strerror or e}", where) from None
    if len(data) > MAX_SOURCE_BYTES:
        raise SpecError(f"spec file is larger than {MAX_SOURCE_BYTES:,} bytes", where, hint="is this the right file?")
    return name, decode_source(data, name)


def parse_file(path: str | os.PathLike) -> S.SpecFile:
    name, text = read_source(path)
    return parse_text(text, name)


if __name__ == "__main__":  # `python -m specdsl.parse` regenerates the parser tables, as before
    from .grammar_parser import write_parser_tables
    print(f"wrote {write_parser_tables()}")
