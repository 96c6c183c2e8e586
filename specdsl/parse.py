"""Text -> syntax tree. The only module that talks to Lark; Lark's exceptions become SpecErrors here.

Terminal names never reach the user: each expected terminal is shown as its literal text ('->', '{') or as a word
("a name", "a number"), and a few common mistakes get a hint chosen by example (lark's examples/advanced style).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from functools import lru_cache

import lark
from lark import Token, Transformer

from . import syntax as S
from .errors import Span, SpecError, register_source
from .resources import grammar_path

MAX_SOURCE_BYTES = 1_000_000  # a spec is a page of text; a megabyte is a mistake (a data file, a binary)
MAX_NESTING = 100  # parentheses and braces; deeper is a generated file gone wrong

_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "TYPE": "a type (int, float, bool, string)",
    "DTYPE": "a tensor type (int, float)",
    "COMP_OP": "a comparison",
    "SHARED": "'shared'",
    "$END": "end of file",
}


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    with open(grammar_path(), encoding="utf-8") as f:
        grammar = f.read()
    return lark.Lark(grammar, parser="lalr", maybe_placeholders=True)


def _terminal_text(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    try:
        term = _parser().get_terminal(name)
    except KeyError:
        return name.lower()
    if term.pattern.type == "str":
        return f"'{term.pattern.value}'"
    return name.lower()


def _expected_text(expected) -> str:
    words = sorted({_terminal_text(t) for t in expected}, key=lambda w: (not w.startswith("a "), w))
    if len(words) > 8:
        words = words[:8] + ["..."]
    return ", ".join(words)


# Hints for common mistakes, chosen by what the parser saw and what it wanted.
def _hint_for(token_text: str, expected: set[str]) -> str | None:
    lits = {_terminal_text(t) for t in expected}
    if token_text == "=" and "a comparison" in lits:
        return "use '==' to compare"
    if token_text == "=" and ("'{'" in lits or "'('" in lits):
        return None
    if "'='" in lits and token_text not in ("=",):
        return "a hyperparameter is declared as `param NAME = VALUE`"
    if "'}'" in lits and token_text == "end of file":
        return "a '{' is never closed"
    if "')'" in lits and token_text == "end of file":
        return "a '(' is never closed"
    if token_text == "->" and "a name" in lits:
        return "a pipeline stage is a layer or block call, e.g. `x -> LayerNorm(d)`"
    return None


def _span(file: str, line: int, col: int, end_col: int | None = None) -> Span:
    return Span(file, line or 1, col or 1, end_col)


def _join(first: Span, last: Span) -> Span:
    """The span from the start of `first` to the end of `last` when both are on one line."""
    end = last.end_col if last.line == first.line else None
    return Span(first.file, first.line, first.col, end)


class _ToAst(Transformer):
    """Lark tree -> syntax dataclasses. Every span comes from a token (keywords and operators are named terminals),
    so the parser runs without propagate_positions, at less than half the cost."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _t(self, tok: Token) -> Span:
        end = tok.end_column if tok.end_line == tok.line else None
        return Span(self.file, tok.line, tok.column, end)

    # ---- atoms ----
    def number(self, children):
        tok = children[0]
        text = str(tok).replace("_", "")
        value: int | float = float(text) if any(c in text for c in ".eE") else int(text)
        return S.Number(value, self._t(tok))

    def string(self, children):
        tok = children[0]
        return S.String(_unquote(str(tok)), self._t(tok))

    def true(self, children):
        return S.Bool(True, self._t(children[0]))

    def false(self, children):
        return S.Bool(False, self._t(children[0]))

    def name(self, children):
        tok = children[0]
        return S.Name(str(tok), self._t(tok))

    def arguments(self, children):
        positional, keyword = [], []
        for c in children:
            if isinstance(c, tuple):
                keyword.append(c)
            else:
                positional.append(c)
        return S.Arguments(tuple(positional), tuple(keyword))

    def kwarg(self, children):
        tok, value = children
        return (str(tok), value, self._t(tok))

    def call(self, children):
        tok, args = children
        return S.Call(str(tok), args or S.Arguments((), ()), self._t(tok))

    # ---- operators: [left, operator token, right]; the span is the whole expression ----
    def _bin(op):  # noqa: N805 - a factory of methods
        def method(self, children):
            left, _, right = children
            return S.BinOp(op, left, right, _join(left.span, right.span))
        return method

    add, sub, mul, div = _bin("+"), _bin("-"), _bin("*"), _bin("/")
    floordiv, mod, power = _bin("//"), _bin("%"), _bin("**")
    or_op, and_op = _bin("or"), _bin("and")

    def compare(self, children):
        left, op, right = children
        return S.BinOp(str(op), left, right, _join(left.span, right.span))

    def _unary(op):  # noqa: N805
        def method(self, children):
            tok, operand = children
            return S.UnaryOp(op, operand, _join(self._t(tok), operand.span))
        return method

    neg, pos, not_op = _unary("-"), _unary("+"), _unary("not")

    # ---- pipelines ----
    def layer_call(self, children):
        tok, args = children
        return S.LayerCall(str(tok), args or S.Arguments((), ()), None, self._t(tok))

    def repeat_stage(self, children):
        keyword, count, shared, *body = children
        return S.Repeat(count, shared is not None, tuple(body), None, self._t(keyword))

    def labelled_stage(self, children):
        tok, stage = children
        return replace(stage, label=str(tok), label_span=self._t(tok))

    def pipe(self, children):
        source, stage = children
        return S.Pipe(source, stage, stage.label_span or stage.span)

    # ---- statements ----
    def tensor_type(self, children):
        dtype, *dims = children
        span = self._t(dtype) if dtype is not None else dims[0].span
        return S.TensorType(str(dtype) if dtype is not None else None, tuple(dims), span)

    def dim(self, children):
        return children[0]

    def input_decl(self, children):
        tok, ttype, default = children
        return S.Input(str(tok), ttype, self._t(tok), default)

    def if_stmt(self, children):
        keyword, cond, then, otherwise = children
        if isinstance(otherwise, S.If):
            otherwise = (otherwise,)
        return S.If(cond, then, otherwise or (), self._t(keyword))

    def let_stmt(self, children):
        tok, value = children
        return S.Let(str(tok), value, self._t(tok))

    def return_stmt(self, children):
        keyword, *values = children
        return S.Return(tuple(values), self._t(keyword))

    def assert_stmt(self, children):
        keyword, cond, msg = children
        return S.Assert(cond, _unquote(str(msg)) if msg is not None else None, _join(self._t(keyword), cond.span))

    def body(self, children):
        return tuple(children)

    # ---- top level ----
    def use_stmt(self, children):
        keyword, path = children
        return S.Use(_unquote(str(path)), _join(self._t(keyword), self._t(path)))

    def param_decl(self, children):
        tok, typ, value = children
        return S.ParamDecl(str(tok), str(typ) if typ is not None else None, value, self._t(tok))

    def assign(self, children):
        tok, value = children
        return (str(tok), value, self._t(tok))

    def preset_decl(self, children):
        tok, *assigns = children
        name = _unquote(str(tok)) if tok.type == "STRING" else str(tok)
        return S.Preset(name, tuple(a for a in assigns if a is not None), self._t(tok))

    def block_param(self, children):
        tok, typ, default = children
        return S.BlockParam(str(tok), str(typ) if typ is not None else None, default, self._t(tok))

    def block_def(self, children):
        tok, *rest = children
        body = rest[-1]
        params = tuple(p for p in rest[:-1] if p is not None)
        return S.BlockDef(str(tok), params, body, self._t(tok))

    def model_def(self, children):
        tok, body = children
        return S.ModelDef(str(tok), body, self._t(tok))

    def start(self, children):
        return children


def _unquote(text: str) -> str:
    body = text[1:-1]
    if "\\" not in body:
        return body
    out, i = [], 0
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


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
                raise SpecError(f"nesting is more than {MAX_NESTING} levels deep", Span(file, line, col),
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
    return text


_CACHE: dict[tuple[str, str], S.SpecFile] = {}


def parse_text(text: str, file: str = "<input>") -> S.SpecFile:
    """Parse spec text to a SpecFile. Cached by (file, content hash): a re-parse of the same text is free."""
    register_source(file, text)
    key = (file, hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest())
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    _check_nesting(text, file)
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":
            lines = text.splitlines() or [""]
            span = Span(file, len(lines), len(lines[-1]) + 1)
            got = "end of file"
        else:
            span = _span(file, tok.line, tok.column, getattr(tok, "end_column", None))
            got = f"'{tok}'"
        expected = set(e.expected or ())
        hint = _hint_for(got.strip("'"), expected)
        raise SpecError(f"unexpected {got}; expected {_expected_text(expected)}", span, hint=hint) from None
    except lark.exceptions.UnexpectedCharacters as e:
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        hint = "strings use double quotes" if ch == "'" else None
        if ch == "=" and e.pos_in_stream + 1 < len(text) and text[e.pos_in_stream + 1] == "<":
            hint = "did you mean '<='?"
        raise SpecError(f"unexpected character {ch!r}", _span(file, e.line, e.column, e.column + 1),
                        hint=hint) from None
    except lark.exceptions.UnexpectedEOF as e:
        lines = text.splitlines() or [""]
        raise SpecError(f"unexpected end of file; expected {_expected_text(e.expected)}",
                        Span(file, len(lines), len(lines[-1]) + 1)) from None
    try:
        items = _ToAst(file).transform(tree)
    except RecursionError:
        raise SpecError("expression is too deeply nested", Span(file, 1, 1),
                        hint="split long expressions with named values") from None
    except lark.exceptions.VisitError as e:
        if isinstance(e.orig_exc, RecursionError):
            raise SpecError("expression is too deeply nested", Span(file, 1, 1),
                            hint="split long expressions with named values") from None
        raise
    spec = S.SpecFile(
        path=file,
        uses=tuple(i for i in items if isinstance(i, S.Use)),
        params=tuple(i for i in items if isinstance(i, S.ParamDecl)),
        presets=tuple(i for i in items if isinstance(i, S.Preset)),
        asserts=tuple(i for i in items if isinstance(i, S.Assert)),
        blocks=tuple(i for i in items if isinstance(i, S.BlockDef)),
        models=tuple(i for i in items if isinstance(i, S.ModelDef)),
    )
    if len(_CACHE) > 256:
        _CACHE.clear()
    _CACHE[key] = spec
    return spec


def read_source(path: str | os.PathLike) -> tuple[str, str]:
    """Read a spec file: (display name, text). Every failure is a SpecError naming the path."""
    name = str(path)
    where = Span(name, 1, 1)
    try:
        if os.path.isdir(path):
            raise SpecError(f"'{name}' is a directory, not a spec file", where)
        size = os.path.getsize(path)
        if size > MAX_SOURCE_BYTES:
            raise SpecError(f"spec file is {size:,} bytes; specs larger than {MAX_SOURCE_BYTES:,} bytes are refused",
                            where, hint="is this the right file?")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SpecError(f"no such file: '{name}'", where) from None
    except PermissionError:
        raise SpecError(f"permission denied: '{name}'", where) from None
    except OSError as e:
        raise SpecError(f"cannot read '{name}': {e.strerror or e}", where) from None
    return name, decode_source(data, name)


def parse_file(path: str | os.PathLike) -> S.SpecFile:
    name, text = read_source(path)
    return parse_text(text, name)
