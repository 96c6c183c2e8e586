"""A catalogue of bad specs: each must fail with a SpecError at the right line and column, with the right words
(and hint), and nothing of Lark's internals in what the user reads. Then the `specc compile` command on bad and
nasty files: exit status 2, `path:line:col: error:` on stderr, never a traceback.

Each case is (id, spec text, line, col, words in the message, words in the hint). Unless a case says otherwise it
expects exactly one error: a follow-on error is a bug too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import specdsl
from specdsl import SpecError

ROOT = Path(__file__).resolve().parent.parent
FILE = "bad.spec"

# ---------------------------------------------------------------- spec builders

# Six lines of a valid model; model(...) adds statements from line 7, each indented by 4 (so a column in the
# statement as written is 4 more in the file), then `return x`.
HEAD = """\
param d = 64
param vocab = 100
param heads = 4
model m {
    input tokens: int[batch, seq <= 16]
    x = tokens -> wte: Embedding(vocab, d)
"""
# A block for the cases that need one; it goes after the model, so it moves no model line.
BLOCK = """
block resid(d: int, scale: float = 1.0) {
    input x
    return x + (x -> LayerNorm(d) -> Linear(d, d))
}
"""
# A model that uses no hyperparameter, for cases whose error is in the top-level lines before it.
PLAIN = """\
model m {
    input x: float[b, 8]
    return x
}
"""


def model(*body: str, after: str = "") -> str:
    return HEAD + "".join(f"    {line}\n" for line in body) + "    return x\n}\n" + after


def top(*lines: str) -> str:
    return "".join(f"{line}\n" for line in lines) + PLAIN


@dataclass
class Bad:
    text: str
    line: int
    col: int
    words: tuple[str, ...]
    hint: str | None = None  # words the hint must contain; None: not checked
    preset: str | None = None
    overrides: dict = field(default_factory=dict)
    file: str = FILE  # the file the error is in ("--set" and "--preset", line 0, for command-line mistakes)
    count: int = 1  # errors expected in all


def case(id_, text, line, col, words, hint=None, **kw):
    words = (words,) if isinstance(words, str) else tuple(words)
    return pytest.param(Bad(text, line, col, words, hint, **kw), id=id_)


# ---------------------------------------------------------------- the catalogue

SYNTAX = [
    case("missing-closing-brace", "param d = 64\nmodel m {\n    input x: float[b, d]\n    return x\n",
         4, 13, ("unexpected end of file", "'}'"), hint="'{' is never closed"),
    case("missing-equals-in-param", "param d = 64\nparam heads 4\n" + PLAIN,
         2, 13, ("unexpected '4'", "'='"), hint="param NAME = VALUE"),
    case("assign-instead-of-compare-in-assert", 'param d = 64\nassert d = 64, "d"\n' + PLAIN,
         2, 10, ("unexpected '='",), hint="use '==' to compare"),
    case("less-equal-written-backwards", "param d = 64\nassert d =< 128\n" + PLAIN,
         2, 10, ("unexpected '='",), hint="did you mean '<='?"),
    case("stray-dollar", "param d = 64 $\n" + PLAIN, 1, 14, "unexpected character '$'"),
    case("stray-at-sign-in-model", model("y = x @ x"), 7, 11, "unexpected character '@'"),
    case("single-quoted-string", "param act = 'gelu'\n" + PLAIN,
         1, 13, "unexpected character \"'\"", hint="double quotes"),
    case("unterminated-string", 'param act = "gelu\n' + PLAIN,
         1, 13, "unexpected character '\"'", hint="must end"),
    case("unclosed-paren-at-eof", "param d = (64 + 1\n", 1, 18, ("unexpected end of file", "')'"),
         hint="'(' is never closed"),
    case("missing-comma-between-arguments", model("y = x -> Linear(d d)"),
         7, 23, ("unexpected 'd'", "','"), hint="',' missing"),
    case("missing-arrow-before-layer", model("y = x -> Linear(d, d) Dropout(0.1)"),
         7, 34, ("unexpected '('", "'='"), hint="'->' missing before 'Dropout'"),
    case("arrow-with-nothing-on-its-left", model("y = -> Linear(d, d)"),
         7, 9, "unexpected '->'", hint="needs a tensor on its left"),
    case("arrow-then-arrow", model("y = x -> -> Linear(d, d)"),
         7, 14, ("unexpected '->'", "a name"), hint="layer or block call"),
    case("arrow-at-end-of-line", model("y = x ->", "z = x"),
         8, 7, "unexpected '='", hint="'z' was read as a stage of the '->' before it"),
    case("arrow-before-return", HEAD + "    x = x -> LayerNorm(d) ->\n    return x\n}\n",
         8, 5, ("unexpected 'return'", "after '->'"), hint="unfinished"),
    case("assert-message-not-a-string", "param d = 64\nassert d > 0, d\n" + PLAIN,
         2, 15, ("unexpected 'd'", "a string")),
    case("assert-message-without-comma", 'param d = 64\nassert d > 0 "positive"\n' + PLAIN,
         2, 14, ("unexpected '\"positive\"'", "','"), hint="',' missing"),
    case("param-inside-model", model("param e = 3"), 7, 5, "'param' is not allowed inside a model or block",
         hint="top level"),
    case("param-first-in-model", "model m {\n    param e = 3\n}\n", 2, 5, "'param' is not allowed inside a model",
         hint="top level"),
    case("use-inside-block", PLAIN + 'block b(d: int) {\n    use "std/transformer.spec"\n}\n', 6, 5,
         "'use' is not allowed inside a model or block"),
    case("block-inside-model", model("block b(d: int) {", "}"), 7, 5, "'block' is not allowed inside a model"),
    case("return-at-top-level", "param d = 64\nreturn d\n", 2, 1, ("unexpected 'return'", "'model'", "'param'")),
    case("input-at-top-level", "input x: float[b, 8]\n", 1, 1, ("unexpected 'input'", "'model'")),
    case("block-without-parentheses", "block b {\n    input x\n    return x\n}\n" + PLAIN,
         1, 9, ("unexpected '{'", "'('")),
    case("model-without-name", "model {\n}\n", 1, 7, ("unexpected '{'", "a name")),
    case("empty-repeat-body", model("y = x -> repeat 2 { }"), 7, 25, "unexpected '}'"),
    case("non-ascii-name", "param d = 64\nparam é = 2\n" + PLAIN, 2, 7, "unexpected character 'é'"),
    case("number-with-5000-digits", "param d = " + "9" * 5000 + "\n" + PLAIN, 1, 11, ("number", "too large")),
    case("float-literal-overflows", "param d = 1e999\n" + PLAIN, 1, 11, "number 1e999 is too large"),
    case("parentheses-nested-too-deep", "param x = " + "(" * 150 + "1" + ")" * 150 + "\n" + PLAIN,
         1, 111, ("nesting", "100 levels")),
]

NAMES = [
    case("unknown-layer-did-you-mean", model("y = x -> Atention(d, heads)"),
         7, 14, "unknown layer 'Atention'", hint="did you mean 'Attention'?"),
    case("unknown-layer-wrong-case", model("y = x -> layernorm(d)"),
         7, 14, "unknown layer 'layernorm'", hint="did you mean 'LayerNorm'?"),
    case("unknown-block-did-you-mean", model("y = x -> resd(d)", after=BLOCK),
         7, 14, "unknown layer 'resd'", hint="did you mean 'resid'?"),
    case("unknown-name-did-you-mean", model("y = x -> Linear(dd, d)"),
         7, 21, "unknown name 'dd'", hint="did you mean 'd'?"),
    case("unknown-name-in-hyperparameter", top("param d = 64", "param ffn = 4 * dim"),
         2, 17, "unknown name 'dim'"),
    case("unknown-function-did-you-mean", top("param d = maxx(64, 32)"),
         1, 11, "unknown function 'maxx'", hint="did you mean 'max'?"),
    case("layer-called-as-function", top("param p = Linear(1, 2)"),
         1, 11, "'Linear' is a layer", hint="x -> Linear(...)"),
    case("unknown-argument-did-you-mean", model("y = x -> Linear(d, d, bais = false)"),
         7, 27, "Linear has no argument 'bais'", hint="did you mean 'bias'?"),
    case("unknown-block-argument-did-you-mean", model("y = x -> resid(d, scal = 0.5)", after=BLOCK),
         7, 23, "block 'resid' has no argument 'scal'", hint="did you mean 'scale'?"),
    case("unknown-preset-did-you-mean", top("param d = 64", "preset small { d = 32 }"),
         0, 0, "unknown preset 'smal'", hint="did you mean 'small'?", preset="smal", file="--preset"),
    case("unknown-preset-none-defined", top("param d = 64"),
         0, 0, "unknown preset 'big'", hint="defines no presets", preset="big", file="--preset"),
    case("preset-sets-unknown-hyperparameter", top("param d = 64", "preset wide { dd = 128 }"),
         2, 15, "preset 'wide' sets unknown hyperparameter 'dd'", hint="did you mean 'd'?", preset="wide"),
    case("set-unknown-hyperparameter", top("param heads = 4"),
         0, 0, ("--set head", "no hyperparameter 'head'"), hint="did you mean 'heads'?",
         overrides={"head": 8}, file="--set"),
    case("set-wrong-type", top("param d = 64"),
         0, 0, ("--set d=wide", "expected int", "got string"), overrides={"d": "wide"}, file="--set"),
    case("set-float-for-typed-int", top("param d: int = 64"),
         1, 7, ("'d' is declared int", "1.5"), overrides={"d": 1.5}),
    case("use-missing-file", 'use "nope/missing.spec"\n' + PLAIN,
         1, 5, "cannot find 'nope/missing.spec'", hint="relative to the spec's folder"),
]

ARGUMENTS = [
    case("float-for-int-argument", model("y = x -> Linear(d, 1.5)"), 7, 24, ("'out' must be int", "float 1.5")),
    case("int-for-bool-argument", model("y = x -> Linear(d, d, bias = 3)"), 7, 34, ("'bias' must be bool", "int 3")),
    case("string-for-int-argument", model('y = x -> Linear(d, "wide")'), 7, 24, ("'out' must be int", "string")),
    case("tensor-for-int-argument", model("y = x -> Linear(x, d)"), 7, 21, ("'in' must be int", "a tensor")),
    case("bad-choice-did-you-mean", model("y = x -> MLP(d, 4 * d, act = gelo)"),
         7, 34, ("'act' must be one of", "gelu_tanh", "'gelo'"), hint="did you mean 'gelu'?"),
    case("bad-qk-norm-scope-did-you-mean",
         model('y = x -> Attention(d, heads, qk_norm = true, qk_norm_scope = "heads")'),
         7, 66, ("'qk_norm_scope' must be one of head, full", "'heads'"), hint="did you mean 'head'?"),
    case("qk-norm-scope-without-qk-norm", model('y = x -> Attention(d, heads, qk_norm_scope = "full")'),
         7, 14, ('qk_norm_scope = "full"', "add qk_norm = true")),
    case("missing-required-argument", model("y = x -> Linear(d)"),
         7, 14, "Linear needs argument 'out'", hint="Linear(in, out)"),
    case("missing-block-argument", model("y = x -> resid()", after=BLOCK),
         7, 14, "block 'resid' needs argument 'd'", hint="resid(d)"),
    case("too-many-positional-arguments", model("y = x -> LayerNorm(d, 1e-5, true, 3)"),
         7, 39, ("LayerNorm takes at most 3 positional", "got 4")),
    case("argument-given-twice", model("y = x -> Linear(d, d, in = d)"), 7, 27,
         "argument 'in' of Linear is given twice"),
    case("argument-not-positive", model("y = x -> Linear(d, 0)"), 7, 24, ("Linear argument out=0", "positive")),
    case("dropout-not-a-probability", model("y = x -> Dropout(1.5)"), 7, 22, ("p=1.5", "[0, 1)")),
    case("function-keyword-argument", top("param d = max(1, b = 2)"), 1, 18, "max() takes no keyword arguments"),
    case("function-too-many-arguments", top("param d = abs(1, 2)"), 1, 11, ("abs() takes 1 argument", "got 2")),
    case("frozen-on-block-call", model("y = x -> resid(d, frozen = true)", after=BLOCK), 7, 14,
         "`frozen` applies to layers"),
]

DUPLICATES = [
    case("duplicate-label", model("y = x -> a: Linear(d, d) -> a: Linear(d, d)"),
         7, 33, ("name 'a' is already used", f"{FILE}:7:14")),
    case("duplicate-hyperparameter", top("param d = 64", "param d = 32"),
         2, 7, ("hyperparameter 'd' is declared twice", f"{FILE}:1:7")),
    case("duplicate-block", model(after=BLOCK + BLOCK), 15, 7, ("block 'resid' is defined twice", f"{FILE}:10:7")),
    case("second-model", PLAIN + "model n {\n    input x: float[b, 8]\n    return x\n}\n",
         5, 7, "a second model 'n'"),
    case("second-return", model("return x"), 8, 5, "a second return"),
    case("block-named-like-a-layer", PLAIN + "block Linear(d: int) {\n    input x\n    return x\n}\n",
         5, 7, "block 'Linear' has the name of a built-in layer"),
    case("duplicate-preset", top("param d = 64", "preset a { d = 1 }", "preset a { d = 2 }"),
         3, 8, ("preset 'a' is defined twice", f"{FILE}:2:8")),
    case("keyword-as-hyperparameter", top("param true = 1"), 1, 7, "'true' is a keyword", hint="true_"),
    case("statement-after-return", PLAIN.replace("    return x\n", "    return x\n    y = x\n"), 4, 5,
         "a statement after `return`", hint="before the return"),
    case("value-named-like-a-hyperparameter", model("d = x -> Linear(d, d)"), 7, 5, "'d' is a hyperparameter"),
    case("block-input-of-another-dtype",
         model("y = x -> b(d)", after="\nblock b(d: int) {\n    input x: int[batch, seq, d]\n    return x\n}\n"),
         12, 11, "block 'b' expects input int[batch, seq, 64] but got float"),
]

ASSERTS = [
    case("failing-assert-with-message",
         top("param d = 64", "param heads = 5", 'assert d % heads == 0, "d must be divisible by heads"'),
         3, 1, ("assertion failed: d must be divisible by heads",)),
    case("failing-assert-without-message", top("param d = 64", "assert d < 10"),
         2, 1, "assertion failed: condition is false"),
    case("failing-assert-in-block",
         model("y = x -> b(d, 5)",
               after='\nblock b(d: int, h: int) {\n    input x\n    assert d % h == 0, "heads must divide d"\n'
                     '    return x\n}\n'),
         13, 5, "assertion failed: heads must divide d"),
    case("assert-not-a-condition", top("param d = 64", "assert d"), 2, 1, "assert needs a true/false condition"),
]

SHAPES = [
    case("linear-expects-other-width", model("y = x -> Linear(32, d)"),
         7, 14, ("Linear(32, 64)", "[..., 32]", "float[batch, seq<=16, 64]")),
    case("add-of-different-shapes", model("y = x -> Linear(d, 32)", "x = x + y"),
         8, 9, ("shape mismatch in '+'", "[batch, seq<=16, 64]", "[batch, seq<=16, 32]")),
    case("add-of-different-dtypes",
         "model m {\n    input t: int[b, 4]\n    input f: float[b, 4]\n    y = t + f\n    return y\n}\n",
         4, 9, ("dtype mismatch in '+'", "int[b, 4]", "float[b, 4]")),
    case("embedding-fed-floats", model("y = x -> Embedding(vocab, d)"),
         7, 14, ("Embedding expects int token ids", "float[batch, seq<=16, 64]")),
    case("layer-fed-token-ids", model("y = tokens -> LayerNorm(d)"),
         7, 19, ("LayerNorm expects a float tensor", "int[batch, seq<=16]")),
    case("tie-to-missing-layer", model("y = x -> Linear(d, vocab, tie = wt)"),
         7, 37, "no layer labelled 'wt' to tie to", hint="did you mean 'wte'?"),
    case("tie-shape-mismatch", model("y = x -> Linear(d, 50, tie = wte)"),
         7, 34, ("cannot tie Linear weight [50, 64]", "'wte' weight [100, 64]", "shapes differ")),
    case("tie-to-layer-without-weight", model("y = x -> ln: LayerNorm(d) -> Linear(d, d, tie = ln)"),
         7, 53, "'ln' is a LayerNorm, which has no weight to tie"),
    case("tie-inside-repeat-body", model("y = x -> repeat 2 { ReLU -> e: Linear(d, d) -> Linear(d, d, tie = e) }"),
         7, 71, "cannot tie to 'e': it is inside a repeat"),
    case("tie-into-repeat-from-outside",
         model("y = x -> repeat 2 { ReLU -> e: Linear(d, d) } -> Linear(d, d, tie = e)"), 7, 73,
         "cannot tie to 'e': it is inside a repeat"),
    case("repeat-count-zero", model("y = x -> repeat 0 { Linear(d, d) }"), 7, 21,
         "repeat count must be at least 1, got 0"),
    case("repeat-count-float", model("y = x -> repeat 2.5 { Linear(d, d) }"), 7, 21,
         "repeat count must be an int, got float 2.5"),
    case("repeat-body-changes-shape", model("y = x -> repeat 2 { Linear(d, 32) }"),
         7, 14, ("repeated body must keep its input's shape", "float[batch, seq<=16, 64]",
                 "float[batch, seq<=16, 32]")),
    case("block-without-input", model("y = x -> b(d)", after="\nblock b(d: int) {\n    return 1\n}\n"),
         11, 7, "block 'b' has no `input`"),
    case("block-without-return", model("y = x -> b(d)", after="\nblock b(d: int) {\n    input x\n}\n"),
         11, 7, "block 'b' has no `return`"),
    case("block-returns-a-number", model("y = x -> b(d)", after="\nblock b(d: int) {\n    input x\n    return d\n}\n"),
         13, 12, "block 'b' must return one tensor"),
    case("block-calls-itself",
         model("y = x -> b(d)", after="\nblock b(d: int) {\n    input x\n    return x -> b(d)\n}\n"), 13, 17,
         ("blocks nest more than", "does 'b' call itself?")),
    case("model-without-return", "model m {\n    input x: float[b, 8]\n}\n", 1, 7, "model 'm' has no `return`"),
    case("model-without-input", "model m {\n    return 1\n}\n", 1, 7, "model 'm' has no `input`"),
    case("model-input-without-type", "model m {\n    input x\n    return x\n}\n", 2, 11,
         "model input 'x' needs a type"),
    case("no-model-at-all", "param d = 64\n", 1, 1, "no model in this file"),
    case("int-param-given-float", top("param d: int = 1.5"), 1, 7, ("'d' is declared int", "1.5", "float")),
    case("string-param-given-int", top("param act: string = 3"), 1, 7, ("'act' is declared string", "int")),
    case("division-by-zero", top("param d = 64 / (4 - 4)"), 1, 11, "division by zero in '/'"),
    case("modulo-by-zero", top("param d = 64 % 0"), 1, 11, "division by zero in '%'"),
    case("power-tower-too-large", top("param n = 10**10**10"), 1, 11, "too large"),
    case("product-too-large", top("param n = 2**200 * 2**200"), 1, 11, "too large (more than 2**256)"),
    case("function-result-too-large", top("param n = int(1e300)"), 1, 11, "too large (more than 2**256)"),
    case("sqrt-of-negative", top("param n = sqrt(0 - 1)"), 1, 11, "sqrt()"),
    case("pipeline-in-hyperparameter", top("param p = 3 -> Linear(1, 1)"), 1, 16,
         "a layer pipeline is only allowed inside a model or block"),
    case("arrow-from-a-number", model("y = d -> Linear(d, d)"), 7, 14, ("'->' needs a tensor on its left", "int 64")),
    case("negating-a-tensor", model("y = -x"), 7, 9, "unary '-' on a tensor"),
    case("logical-and-of-tensors", model("y = x and x"), 7, 9, "expected true or false, got tensor float[batch"),
    case("function-of-a-tensor", model("y = max(x, 1)"), 7, 13, "max() needs numbers, got tensor float[batch"),
    case("kv-heads-not-dividing-heads", model("y = x -> Attention(d, 8, kv_heads = 3)"),
         7, 14, "heads=8 is not a multiple of kv_heads=3"),
    case("d-not-divisible-by-heads", model("y = x -> Attention(d, 6)"),
         7, 14, ("d=64 is not divisible by heads=6",)),
    case("top-k-more-than-experts", model("y = x -> MoE(d, 128, 4, 8)"), 7, 14, "top_k=8 is more than experts=4"),
    case("conv-channel-mismatch",
         "model cnn {\n    input img: float[b, 3, 32, 32]\n    y = img -> Conv2d(1, 8, 5)\n    return y\n}\n",
         3, 16, ("Conv2d(1, 8) expects 1 input channels", "float[b, 3, 32, 32]")),
    case("flatten-symbolic-dim",
         "model cnn {\n    input img: float[b, 3, h, 32]\n    y = img -> Flatten()\n    return y\n}\n",
         3, 16, ("Flatten can only merge fixed dims", "float[b, 3, h, 32]")),
    case("positional-embedding-shorter-than-sequence", model("y = x -> PositionalEmbedding(8, d)"),
         7, 14, ("up to 16 positions", "only 8")),
    case("dimension-not-positive", "model m {\n    input x: float[b, 0]\n    return x\n}\n", 2, 23,
         "a dimension must be a positive int"),
]

# The `train { ... }` section: settings checked by name, type and range (specdsl/settings.py) at their lines.
TRAIN = [
    case("train-unknown-setting", PLAIN + "train { step = 10 }\n", 5, 9, "unknown training setting 'step'",
         hint="did you mean 'steps'?"),
    case("train-wrong-type", PLAIN + 'train { steps = "many" }\n', 5, 17, "'steps' must be int, got string 'many'"),
    case("train-negative-lr", PLAIN + "train { lr = -0.1 }\n", 5, 14, ("'lr' must be positive", "-0.1")),
    case("train-beta-out-of-range", PLAIN + "train { beta2 = 1.0 }\n", 5, 17, "'beta2' must be in [0, 1)"),
    case("train-unknown-tokenizer", PLAIN + 'train { tokenizer = "word" }\n', 5, 21,
         "'tokenizer': it must be char, byte, bpe:VOCAB"),
    case("train-setting-twice", PLAIN + "train { steps = 1, steps = 2 }\n", 5, 20, "'steps' is given twice"),
]

# A tensor named and never read: its layers would be counted and trained for nothing (and DDP refuses them).
LEAKY = "block leaky(d: int) {\n    input x\n    h = x -> Linear(d, d)\n    return x\n}\n"
UNUSED = [
    case("unused-value", model("y = x -> Linear(d, d)"), 7, 5, "'y' is computed but never used",
         hint="use 'y', return it, or delete the line"),
    case("value-replaced-before-use", model("y = x -> Linear(d, d)", "y = x -> LayerNorm(d)", "x = y"), 7, 5,
         "'y' is computed but never used"),
    case("unused-value-in-block", model("x = x -> leaky(d)", after=LEAKY), 12, 5, "'h' is computed but never used"),
]

# Layers and blocks that read a second tensor (cross-attention's memory): the column of `word` in a model
# statement (4 spaces of indent in the file).
def at(stmt: str, word: str) -> int:
    return 5 + stmt.index(word)


DEC_BLOCK = """
block dec(d: int, memory: tensor) {
    input x
    return x + (x -> cross: CrossAttention(d, 4, memory = memory))
}
"""
_S1 = "y = x -> CrossAttention(d, heads, memory = 3)"
_S2 = "x = x -> CrossAttention(d, heads, memory = m)"
_S3 = "x = x -> CrossAttention(d, heads, memory = x, causal = true)"
_S4 = "x = x -> CrossAttention(d, heads, memory = tokens)"
_S5 = "x = x -> dec(d, memory = 3)"
CROSS = [
    case("memory-not-a-tensor", model(_S1), 7, at(_S1, "3"), "argument 'memory' must be a tensor, got int 3",
         hint="name a tensor value in scope"),
    case("memory-of-the-wrong-width", model("m = x -> Linear(d, 32)", _S2), 8, at(_S2, "CrossAttention"),
         ("32 wide, but memory_dim is 64",), hint=None),
    case("memory-missing", model("x = x -> CrossAttention(d, heads)"), 7, 14, "needs argument 'memory', a tensor",
         hint="memory = enc"),
    case("causal-given-to-cross-attention", model(_S3), 7, at(_S3, "causal"), "has no argument 'causal'",
         hint="no causal mask"),
    case("memory-of-token-ids", model(_S4), 7, at(_S4, "CrossAttention"), "memory must be a float tensor"),
    case("memory-of-another-rank", model("m = x -> Select(dim = 1, index = 0)", _S2), 8, at(_S2, "CrossAttention"),
         "must be [..., mem_len, 64] like the input"),
    case("block-tensor-parameter-given-a-number", model(_S5, after=DEC_BLOCK), 7, at(_S5, "3"),
         "block argument 'memory' of 'dec' is a tensor, got int 3"),
    case("block-tensor-parameter-missing", model("x = x -> dec(d)", after=DEC_BLOCK), 7, 14,
         "block 'dec' needs argument 'memory' (a tensor)"),
    case("block-tensor-parameter-with-a-default",
         model("x = x -> dec(d)", after=DEC_BLOCK.replace("memory: tensor", "memory: tensor = 1")), 11, 36,
         "tensor parameter 'memory' of block 'dec' cannot have a default"),
    case("tensor-given-to-an-untyped-block-parameter", model("x = x -> resid(x)", after=BLOCK), 7, 20,
         "must be a hyperparameter, got a tensor", hint="declare it `d: tensor`"),
    case("hyperparameter-declared-tensor", top("param t: tensor = 3"), 1, 7,
         "only a block's parameter may be a tensor"),
]

CASES = SYNTAX + NAMES + ARGUMENTS + DUPLICATES + ASSERTS + SHAPES + TRAIN + UNUSED + CROSS

# Lark's vocabulary, which must never reach a user: anonymous terminals, token reprs, end-of-input, rule and
# terminal names (RPAR, LBRACE, NAME...). A word the user typed may be echoed back; one they didn't is a leak.
_TERMINALS = ("RPAR", "LPAR", "RBRACE", "LBRACE", "RSQB", "LSQB", "COMMA", "COLON", "EQUAL", "NAME", "NUMBER",
              "STRING", "COMP_OP", "DTYPE", "TYPE", "SHARED", "MINUS", "PLUS", "STAR", "SLASH", "DSLASH", "PERCENT",
              "POW", "RETURN", "ASSERT", "REPEAT", "USE", "IF", "AND", "OR", "NOT", "TRUE", "FALSE", "ARROW")
LARK_LEAK = re.compile(r"__ANON|Token\(|\$END|\bstart\b|\b(?:" + "|".join(_TERMINALS) + r")\b"
                       # and Python's: reprs of the compiler's own objects
                       r"|\b(?:TVal|TensorType|Sym|Tree|Span|Diagnostic)\(|object at 0x|<specdsl\.")


def lark_leaks(text: str, source: str) -> list[str]:
    text = re.sub(r"`[^`]*`", "", text)  # hints show templates in backticks: `param NAME = VALUE`
    return [m.group() for m in LARK_LEAK.finditer(text) if m.group() not in source]


def compile_error(bad: Bad) -> SpecError:
    with pytest.raises(SpecError) as info:
        specdsl.loads(bad.text, preset=bad.preset, overrides=bad.overrides, name=FILE)
    return info.value


@pytest.mark.parametrize("bad", CASES)
def test_bad_spec(bad: Bad):
    err = compile_error(bad)
    first = err.errors[0]
    where = f"{first.span.file}:{first.span.line}:{first.span.col}"
    assert (first.span.file, first.span.line, first.span.col) == (bad.file, bad.line, bad.col), \
        f"reported at {where}: {first.message}"
    for word in bad.words:
        assert word in first.message, f"{word!r} not in {first.message!r}"
    if bad.hint is not None:
        assert first.hint is not None and bad.hint in first.hint, f"{bad.hint!r} not in hint {first.hint!r}"
    assert len(err.errors) == bad.count, "errors:\n" + str(err)


@pytest.mark.parametrize("bad", CASES)
def test_no_lark_internals(bad: Bad):
    err = compile_error(bad)
    rendered = str(err)
    leaked = lark_leaks(rendered, bad.text)
    assert not leaked, f"{leaked} in:\n{rendered}"
    assert "Traceback" not in rendered


def test_catalogue_is_large_enough():
    assert len(CASES) >= 45
    assert len({p.id for p in CASES}) == len(CASES), "case ids must be unique"


# ---------------------------------------------------------------- how errors read

def test_rendering_shows_line_caret_and_hint():
    bad = model("y = x -> Atention(d, heads)")
    err = compile_error(Bad(bad, 7, 14, ()))
    text = str(err)
    lines = text.splitlines()
    assert lines[0] == f"{FILE}:7:14: error: unknown layer 'Atention'"
    assert lines[1].endswith("|     y = x -> Atention(d, heads)")
    caret = lines[2]
    assert caret.index("^") == lines[1].index("Atention") and caret.count("^") == len("Atention")
    assert lines[-1] == "hint: did you mean 'Attention'?"


def test_failing_assert_notes_the_values():
    err = compile_error(Bad(top("param d = 64", "param heads = 5", 'assert d % heads == 0, "divisible"'), 3, 1, ()))
    assert "d = 64, heads = 5" in " ".join(err.errors[0].notes)


def test_error_in_block_notes_the_call_site():
    text = model("y = x -> b(d, 5)", after='\nblock b(d: int, h: int) {\n    input x\n'
                                          '    assert d % h == 0, "heads must divide d"\n    return x\n}\n')
    err = compile_error(Bad(text, 13, 5, ()))
    assert f"in block 'b' called at {FILE}:7:14" in err.errors[0].notes


def test_unknown_preset_lists_the_presets():
    err = compile_error(Bad(top("param d = 64", "preset small { d = 32 }", "preset large { d = 128 }"), 1, 1, (),
                            preset="medium"))
    assert "small" in err.errors[0].hint and "large" in err.errors[0].hint


def test_errors_in_a_used_file_point_into_that_file(tmp_path):
    (tmp_path / "lib.spec").write_text("block b(d: int) {\n    input x\n    return x ->\n}\n")
    main = tmp_path / "main.spec"
    main.write_text('use "lib.spec"\n' + PLAIN)
    with pytest.raises(SpecError) as info:
        specdsl.load(main)
    d = info.value.errors[0]
    assert (Path(d.span.file).name, d.span.line) == ("lib.spec", 4)
    assert any(f"{main}:1:5" in n for n in d.notes), d.notes  # at the path of the use


# ---------------------------------------------------------------- several errors at once

def test_two_unknown_layers_are_both_reported_in_line_order():
    err = compile_error(Bad(model("y = x -> Atention(d, heads)", "z = x -> LayerNrm(d)"), 7, 14, ()))
    got = [(d.span.line, d.span.col, d.message) for d in err.errors]
    assert got == [(7, 14, "unknown layer 'Atention'"), (8, 14, "unknown layer 'LayerNrm'")]
    assert [d.hint for d in err.errors] == ["did you mean 'Attention'?", "did you mean 'LayerNorm'?"]
    assert str(err).endswith("2 errors")


def test_independent_errors_everywhere_are_all_reported():
    text = ("param d = 64\nparam e = dd\nparam f = 1 / 0\nmodel m {\n    input x: float[b, d]\n"
            "    y = x -> Lnear(d, d)\n    z = x -> Linear(d, d, bais = true)\n    w = x -> Linear(32, d)\n"
            "    return x\n}\n")
    err = compile_error(Bad(text, 2, 11, ()))
    got = [(d.span.line, d.span.col) for d in err.errors]
    assert got == [(2, 11), (3, 11), (6, 14), (7, 27), (8, 14)], str(err)
    assert [w in d.message for w, d in zip(("'dd'", "division by zero", "'Lnear'", "'bais'", "Linear(32, 64)"),
                                             err.errors)] == [True] * 5


def test_a_broken_value_causes_no_follow_on_errors():
    # x is broken on line 7; its uses on lines 8 and 9 must not report again.
    err = compile_error(Bad(model("x = x -> Atention(d, heads)", "x = x -> LayerNorm(d)", "y = x + x"), 7, 14, ()))
    assert len(err.errors) == 1, str(err)


# ---------------------------------------------------------------- the command line

SPECC = [sys.executable, "-m", "specdsl.cli"]


def specc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([*SPECC, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env)


def assert_spec_error(proc: subprocess.CompletedProcess, path, line: int | None = None, col: int | None = None):
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    where = f"{path}:{line}:{col}: error: " if line is not None else f"{path}:"
    assert proc.stderr.startswith(where) or f"\n{where}" in proc.stderr, proc.stderr
    assert re.search(r":\d+:\d+: error: ", proc.stderr), proc.stderr


def test_cli_bad_spec_shows_location_source_caret_and_hint(tmp_path):
    path = tmp_path / "m.spec"
    path.write_text(model("y = x -> Atention(d, heads)"))
    proc = specc("compile", path)
    assert_spec_error(proc, path, 7, 14)
    lines = proc.stderr.splitlines()
    assert lines[0] == f"{path}:7:14: error: unknown layer 'Atention'"
    assert "y = x -> Atention(d, heads)" in lines[1] and "^^^^^^^^" in lines[2]
    assert "hint: did you mean 'Attention'?" in proc.stderr
    assert proc.stdout == ""


def test_cli_syntax_error(tmp_path):
    path = tmp_path / "m.spec"
    path.write_text("param d = 64\nassert d = 64\n" + PLAIN)
    proc = specc("compile", path, "--json")
    assert_spec_error(proc, path, 2, 10)
    assert "use '==' to compare" in proc.stderr


def test_cli_several_errors(tmp_path):
    path = tmp_path / "m.spec"
    path.write_text(model("y = x -> Atention(d, heads)", "z = x -> LayerNrm(d)"))
    proc = specc("compile", path)
    assert_spec_error(proc, path, 7, 14)
    assert f"{path}:8:14: error: unknown layer 'LayerNrm'" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args, words", [
    (("--set", "head=8"), ("--set: error:", "no hyperparameter 'head'", "did you mean 'heads'?")),
    (("--set", "d=wide"), ("--set: error:", "expected int")),
    (("--set", "d"), ("--set: error:", "NAME=VALUE")),
    (("--preset", "smal"), ("--preset: error:", "unknown preset 'smal'", "did you mean 'small'?")),
], ids=["set-unknown", "set-wrong-type", "set-without-value", "unknown-preset"])
def test_cli_bad_command_line(tmp_path, args, words):
    path = tmp_path / "m.spec"
    path.write_text(top("param d = 64", "param heads = 4", "preset small { d = 32 }"))
    proc = specc("compile", path, *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


def _nasty_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["binary"] = tmp_path / "binary.spec"
    files["binary"].write_bytes(bytes(range(256)) * 4 + b"\x00\xff\xfe" * 100)
    files["text-with-nul"] = tmp_path / "nul.spec"
    files["text-with-nul"].write_bytes(b"param d = 64\x00\n" + PLAIN.encode())
    files["not-utf8"] = tmp_path / "latin1.spec"
    files["not-utf8"].write_bytes("param d = 64  # d\xe9faut\n".encode("latin-1") + PLAIN.encode())
    files["empty"] = tmp_path / "empty.spec"
    files["empty"].write_bytes(b"")
    files["ten-megabytes"] = tmp_path / "big.spec"
    files["ten-megabytes"].write_bytes((b"# " + b"x" * 97 + b"\n") * 100_000)
    files["nested-parens"] = tmp_path / "nested.spec"
    files["nested-parens"].write_text("param x = " + "(" * 10_000 + "1" + ")" * 10_000 + "\n" + PLAIN)
    files["long-sum"] = tmp_path / "sum.spec"
    files["long-sum"].write_text("param x = " + "+".join(["1"] * 20_000) + "\n" + PLAIN)
    return files


@pytest.mark.slow
@pytest.mark.parametrize("which", ["missing", "directory", "binary", "text-with-nul", "not-utf8", "empty",
                                   "ten-megabytes", "nested-parens", "long-sum"])
def test_cli_nasty_inputs(tmp_path, which):
    files = _nasty_files(tmp_path)
    path = {"missing": tmp_path / "no-such.spec", "directory": tmp_path}.get(which) or files[which]
    proc = specc("compile", path)
    assert_spec_error(proc, path)
    assert proc.stdout == ""


def test_nasty_inputs_through_the_library(tmp_path):
    """The same files through specdsl.load: a SpecError each, located in the file."""
    for which, path in _nasty_files(tmp_path).items():
        with pytest.raises(SpecError) as info:
            specdsl.load(path)
        assert info.value.errors[0].span.file == str(path), which


def test_not_utf8_points_at_the_byte(tmp_path):
    path = tmp_path / "latin1.spec"
    path.write_bytes(b"param d = 64\nparam e = 1  # d\xe9faut\n")
    with pytest.raises(SpecError) as info:
        specdsl.load(path)
    d = info.value.errors[0]
    assert (d.span.line, d.span.col) == (2, 17) and "not UTF-8" in d.message


def test_a_windows_file_with_a_byte_order_mark_and_crlf_compiles_and_locates_as_shown(tmp_path):
    """Notepad's "UTF-8 with BOM" and CRLF line ends: the same model as the plain file, and an error's column is
    the one an editor shows (the mark is not counted)."""
    text = "param d = 4\nmodel m {\n    input x: float[b, d]\n    return x -> Linear(d, 2)\n}\n"
    plain, windows = tmp_path / "plain.spec", tmp_path / "windows.spec"
    plain.write_text(text)
    windows.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert specdsl.load(windows).analysis.total == specdsl.load(plain).analysis.total == 10
    windows.write_bytes(b"\xef\xbb\xbfparam d = 4 +\r\n")
    with pytest.raises(SpecError) as info:
        specdsl.load(windows)
    assert info.value.errors[0].span.line == 1 and "\ufeff" not in str(info.value)


def test_long_sum_is_located(tmp_path):
    path = tmp_path / "sum.spec"
    path.write_text("param d = 64\n\nparam x = " + "+".join(["1"] * 20_000) + "\n" + PLAIN)
    with pytest.raises(SpecError) as info:
        specdsl.load(path)
    assert info.value.errors[0].span.line == 3


def test_cli_report_of_an_astronomically_large_model(tmp_path):
    path = tmp_path / "astronomical.spec"
    path.write_text("param d = 2**128\nmodel m {\n    input x: float[b, d]\n"
                    "    y = x -> repeat 2**255 { Linear(d, d) }\n    return y\n}\n")
    proc = specc("compile", path, timeout=30)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_cli_huge_repeat_is_valid(tmp_path):
    """10**15 layers is a count, not a loop: it compiles, and the JSON has the exact parameter count."""
    d = 8
    path = tmp_path / "huge.spec"
    path.write_text(f"param d = {d}\nmodel m {{\n    input x: float[b, d]\n"
                    "    y = x -> repeat 10**15 { Linear(d, d) }\n    return y\n}\n")
    proc = specc("compile", path, "--json", timeout=30)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["params"]["total"] == 10**15 * (d * d + d)
