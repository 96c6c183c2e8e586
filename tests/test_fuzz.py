"""Property-based fuzzing of the front end: whatever the text, `specdsl.loads` either compiles it or raises a
SpecError, never another exception, never a hang, and never leaks Lark's internal names into a message.

(a) random text: arbitrary unicode, and text assembled from the language's own keywords, names and punctuation;
(b) mutations of every zoo spec in specs/*.spec (globbed at collection time): delete/duplicate/swap lines,
    delete/duplicate/swap tokens, replace a token with another token of the same file.

Each example must finish in under a second (measured here: hypothesis' own deadline is off so that a slow first
parse, which builds the LALR tables, is not a flaky failure). Runs are derandomized and database-free, so CI sees
the same examples every time. FUZZ_EXAMPLES=<n> scales the example counts for a longer local hunt.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specdsl
from specdsl.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
ZOO = sorted((ROOT / "specs").glob("*.spec"))
TIME_LIMIT_S = 1.0
SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))
# Mutation examples for the whole zoo, shared out among its specs: the file's run time stays put as the zoo grows.
ZOO_SINGLE_EXAMPLES = 3000
ZOO_STACKED_EXAMPLES = 1500


def per_spec(total: int) -> int:
    return max(10, total // max(1, len(ZOO)))


# Lark's names (anonymous terminals, token reprs, end of input, terminal names) and reprs of the compiler's objects.
LARK_INTERNALS = re.compile(r"__ANON|Token\(|\$END|\b(?:RPAR|LPAR|LBRACE|RBRACE|LSQB|RSQB|COMMA|COLON|EQUAL|"
                            r"NAME|NUMBER|STRING|COMP_OP|DTYPE|TYPE|SHARED|MINUS|PLUS|STAR|SLASH|DSLASH|PERCENT|POW|"
                            r"RETURN|ASSERT|REPEAT|USE|IF|AND|OR|NOT|TRUE|FALSE)\b"
                            r"|\b(?:TVal|TensorType|Sym|Tree|Span|Diagnostic)\(|object at 0x|<specdsl\.")


def _settings(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def check_loads(text: str, name: str = "<fuzz>") -> None:
    """The property: loads() returns or raises SpecError, quickly, with clean messages."""
    start = time.perf_counter()
    try:
        specdsl.loads(text, name=name)
    except SpecError as e:
        assert e.errors, "a SpecError with no diagnostics"
        for d in e.errors:
            assert d.message, "an empty error message"
            assert d.span.line >= 1 and d.span.col >= 1, f"span {d.span} is not 1-based"
            if d.span.file == name:  # a place in this text: on one of its lines, at most one past the line's end
                lines = text.split("\n")
                assert d.span.line <= len(lines), f"{d.span} is past the last line"
                assert d.span.col <= len(lines[d.span.line - 1]) + 1, f"{d.span} is past the end of its line"
            # Hints may show a template in backticks (`param NAME = VALUE`): that NAME is meant for people.
            # A word the user typed may be echoed back ("unexpected 'NAME'"); one they didn't is a leak.
            for part in (d.message, re.sub(r"`[^`]*`", "", d.hint or "")):
                leaked = [m.group() for m in LARK_INTERNALS.finditer(part) if m.group() not in text]
                assert not leaked, f"Lark internals {leaked} in {part!r}"
        str(e)  # rendering (source line, caret) must not fail either
    elapsed = time.perf_counter() - start
    if elapsed >= TIME_LIMIT_S:
        # Once more from cold (parse cache cleared) before failing: a busy CI machine is not a slow compiler, and
        # a real hang or blow-up is slow every time.
        elapsed = min(elapsed, _cold_load_time(text, name))
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.2f}s on {text[:200]!r}"


def _cold_load_time(text: str, name: str) -> float:
    from specdsl import parse
    parse._CACHE.clear()
    start = time.perf_counter()
    try:
        str(specdsl.loads(text, name=name))
    except SpecError as e:
        str(e)
    return time.perf_counter() - start


# ---------------------------------------------------------------- (a) random text

KEYWORDS = ["use", "param", "preset", "assert", "block", "model", "input", "return", "repeat", "shared", "if",
            "else", "true", "false", "and", "or", "not", "int", "float", "bool", "string"]
PUNCT = ["{", "}", "(", ")", "[", "]", ",", ":", "=", "==", "!=", "<", "<=", ">", ">=", "->", "+", "-", "*",
         "/", "//", "%", "**", '"', "#", "'", "."]
NAMES = ["d", "x", "y", "heads", "vocab", "ctx", "batch", "seq", "tokens", "logits", "m", "b", "wte", "h",
         "Linear", "Embedding", "PositionalEmbedding", "LayerNorm", "RMSNorm", "Attention", "MLP", "GatedMLP",
         "MoE", "Dropout", "GELU", "Conv2d", "Flatten", "Select", "Softmax", "gpt_block", "tie", "bias",
         "min", "max", "sqrt", "int", "float", "frozen", "gelu", "silu"]
NUMBERS = ["0", "1", "2", "8", "64", "1.5", "1e-5", "10", "0.0", "1_000", ".5", "100000000000000000000"]
STRINGS = ['"hi"', '"std/transformer.spec"', '""', '"a\\"b"']
WS = [" ", " ", " ", "\n", "\n    ", "\t"]

token = st.sampled_from(KEYWORDS + PUNCT + NAMES + NUMBERS + STRINGS)
token_text = st.lists(st.tuples(token, st.sampled_from(WS)), max_size=60).map(
    lambda parts: "".join(t + w for t, w in parts))

# Statements that are each almost right, glued in random order: gets deeper into the elaborator than tokens.
SNIPPETS = [
    "param d = 64\n", "param heads = 4\n", "param vocab = 100\n", "param ctx = 16\n", "param d: int = 1.5\n",
    "param x = d // heads\n", "param f: float = d / 3\n", "param s: string = \"a\" + \"b\"\n",
    "preset small { d = 32 }\n", "preset big { d = 128, heads = 8, }\n", "assert d % heads == 0, \"div\"\n",
    "assert d > 0\n", 'use "std/transformer.spec"\n', 'use "nope.spec"\n',
    "block b(d: int, k: float = 0.5) {\n input x\n x = x -> LayerNorm(d)\n return x\n}\n",
    "block c(d: int) {\n input x\n return x + (x -> Linear(d, d))\n}\n",
    "model m {\n input tokens: int[batch, seq <= ctx]\n x = tokens -> wte: Embedding(vocab, d)\n"
    " x = x -> repeat 2 { b(d) -> Linear(d, d) }\n logits = x -> Linear(d, vocab, tie = wte)\n return logits\n}\n",
    "model n {\n input img: float[b, 3, 8, 8]\n y = img -> Conv2d(3, 4, 3) -> Flatten() -> Linear(144, 10)\n"
    " return y\n}\n",
    "model g {\n input t: int[batch, seq <= ctx]\n x = t -> Embedding(vocab, d) -> PositionalEmbedding(ctx, d)\n"
    " x = x -> h: repeat 2 { gpt_block(d, heads) }\n return x\n}\n",
    "model i {\n input x: float[b, d]\n input mask: float[b, d] = 1\n if d > 32 { x = x * mask } else if d > 8 {"
    " x = x -> RMSNorm(d) } else { assert false, \"small\" }\n return x\n}\n",
    'preset "7b" { d = 4096, heads = 32 }\n',
]
snippet_text = st.lists(st.sampled_from(SNIPPETS), max_size=6).map("".join)


@_settings(1000)
@given(st.text(max_size=200))
def test_random_unicode_text(text):
    check_loads(text)


@pytest.mark.slow
@_settings(2000)
@given(token_text)
def test_random_token_soup(text):
    check_loads(text)


@pytest.mark.slow
@_settings(1000)
@given(snippet_text)
def test_random_statement_mixes(text):
    check_loads(text, name=str(ROOT / "specs" / "fuzz.spec"))


# ---------------------------------------------------------------- (b) mutations of the zoo

TOKEN_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?|[A-Za-z_]\w*|->|==|!=|<=|>=|'
                      r"//|\*\*|\S")


def _tokens(text: str) -> list[re.Match]:
    return list(TOKEN_RE.finditer(text))


def _lines_op(text: str, op: str, i: int, j: int) -> str:
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    i, j = i % len(lines), j % len(lines)
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(i, lines[i])
    else:  # swap
        lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines)


def _tokens_op(text: str, op: str, i: int, j: int) -> str:
    toks = _tokens(text)
    if not toks:
        return text
    a, b = toks[i % len(toks)], toks[j % len(toks)]
    if op == "delete":
        return text[: a.start()] + text[a.end():]
    if op == "duplicate":
        return text[: a.end()] + " " + a.group() + text[a.end():]
    if op == "replace":  # a becomes (the text of) b
        return text[: a.start()] + b.group() + text[a.end():]
    if a.start() > b.start():
        a, b = b, a
    if a.start() == b.start():
        return text
    return text[: a.start()] + b.group() + text[a.end(): b.start()] + a.group() + text[b.end():]


LINE_OPS = ("delete", "duplicate", "swap")
TOKEN_OPS = ("delete", "duplicate", "swap", "replace")
index = st.integers(min_value=0, max_value=10_000)
mutation = st.one_of(
    st.tuples(st.just("line"), st.sampled_from(LINE_OPS), index, index),
    st.tuples(st.just("token"), st.sampled_from(TOKEN_OPS), index, index),
)


def mutate(text: str, steps) -> str:
    for unit, op, i, j in steps:
        text = (_lines_op if unit == "line" else _tokens_op)(text, op, i, j)
    return text


def test_zoo_is_not_empty():
    assert ZOO, "no specs/*.spec to fuzz"


def test_mutators_do_what_they_say():
    text = "a b\nc d\n"
    assert _lines_op(text, "delete", 0, 0) == "c d\n"
    assert _lines_op(text, "duplicate", 1, 0) == "a b\nc d\nc d\n"
    assert _lines_op(text, "swap", 0, 1) == "c d\na b\n"
    assert _tokens_op(text, "delete", 1, 0) == "a \nc d\n"
    assert _tokens_op(text, "duplicate", 0, 0) == "a a b\nc d\n"
    assert _tokens_op(text, "swap", 3, 0) == "d b\nc a\n"
    assert _tokens_op(text, "replace", 2, 0) == "a b\na d\n"
    assert [m.group() for m in _tokens('x -> f(1_000, "a b") # c\n')] == \
        ["x", "->", "f", "(", "1_000", ",", '"a b"', ")", "# c"]


@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_zoo_spec_compiles_unmutated(path):
    """The baseline the mutations start from: every zoo spec is valid as written."""
    specdsl.loads(path.read_text(encoding="utf-8"), name=str(path))


@pytest.mark.slow
@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_zoo_single_mutations(path):
    original = path.read_text(encoding="utf-8")

    @_settings(per_spec(ZOO_SINGLE_EXAMPLES))
    @given(mutation)
    def run(step):
        check_loads(mutate(original, [step]), name=str(path))

    run()


@pytest.mark.slow
@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_zoo_stacked_mutations(path):
    original = path.read_text(encoding="utf-8")

    @_settings(per_spec(ZOO_STACKED_EXAMPLES))
    @given(st.lists(mutation, min_size=2, max_size=6))
    def run(steps):
        check_loads(mutate(original, steps), name=str(path))

    run()
