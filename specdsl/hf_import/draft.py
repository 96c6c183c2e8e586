"""An imported spec before it is text, and the one place that writes it as text.

A family's recipe fills a `Draft`: hyperparameters (each with a comment saying which config field it came from),
the model's body and notes for the header. `render` writes it. Nothing from config.json reaches the text unescaped:
numbers and booleans are formatted here from Python values the readers typed, strings (an activation) are written
as spec string literals, and every text from the file that the header quotes (a path, `_name_or_path`, a version)
is shown as a JSON string literal (ASCII, every control character escaped), cut to a length, inside a comment:
a newline in a model_type or a name cannot end the comment and start spec text.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field

from .config import Value

QUOTE_LIMIT = 120  # characters of a quoted text from the file, before "..."
WIDTH = 116  # characters of a spec line the importer aims at (the zoo's files keep to 120)


@dataclass(frozen=True)
class Param:
    name: str
    expr: str     # spec expression text, made by `literal` or written by a recipe from hyperparameter names
    source: str   # the comment: the config field(s) it came from


@dataclass
class Draft:
    """What a recipe declares: the model's name, the zoo spec whose names it follows, its hyperparameters, the
    lines of its body (indented by `render`) and notes (what the spec does not carry, such as a second dropout)."""
    model: str
    zoo: str | None  # the zoo spec whose names it follows (None: no zoo spec of the family)
    params: list[Param] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def param(self, name: str, value: Value | object, source: str | None = None) -> str:
        """Declare a hyperparameter from a Value (or a plain value with its `source`); returns its name, for the
        body to use."""
        if isinstance(value, Value):
            value, source = value.value, source or value.source
        self.params.append(Param(name, literal(value), source or ""))
        return name

    def derived(self, name: str, expr: str, source: str) -> str:
        """A hyperparameter written as an expression of earlier ones (`4 * d`): it follows them under --set."""
        self.params.append(Param(name, expr, source))
        return name


def literal(value) -> str:
    """A Python value as spec text: true/false, an int, a float that reads back as itself, a string literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:  # 1e-05 -> 1e-5, 1e+16 -> 1e16: the spelling of the zoo
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e{int(exponent)}"
        return text
    if isinstance(value, str):
        # The language's escapes are \n \t \" \\ (docs/language.md, Strings); anything else is not written.
        if any(c not in _PLAIN for c in value):
            raise ValueError(f"not a plain string for a spec: {value!r}")
        return '"' + value + '"'
    raise TypeError(f"no spec literal for {type(value).__name__}")


_PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def call(head: str, args: list[str], indent: int = 0, width: int = WIDTH) -> list[str]:
    """`head(arg, arg, ...)` as body lines, the arguments wrapped under the first when the line is long."""
    one = f"{head}({', '.join(args)})"
    if indent + len(one) <= width:
        return [one]
    lines, line = [], f"{head}("
    pad = " " * len(line)
    for i, arg in enumerate(args):
        piece = arg + (", " if i < len(args) - 1 else ")")
        if len(line) + len(piece.rstrip()) + indent > width and line.strip() not in ("", f"{head}("):
            lines.append(line.rstrip())
            line = pad
        line += piece
    return lines + [line]


def repeat(label: str, block: str, args: list[str], shared: bool = False) -> list[str]:
    """`x = x -> label: repeat layers { block(args) }`, on one line when it fits, else the call on its own lines."""
    opening = f"x = x -> {label}: repeat layers{' shared' if shared else ''} {{"
    one = f"{opening} {block}({', '.join(args)}) }}"
    if len(one) + 4 <= WIDTH:
        return [one]
    return [opening, *("    " + line for line in call(block, args, indent=8)), "}"]


def head(draft: Draft, arch: str, final: str, embed: str, tie: bool, bias: bool = False) -> None:
    """The final norm (if any), then the LM head (tied to `embed` or not), or a base model's hidden states."""
    norm = f" -> {final}" if final else ""
    if is_base(arch):
        draft.body.append(f"return x{norm}")
        return
    lm_head = f"lm_head: Linear(d, vocab, bias = {literal(bias)}{f', tie = {embed}' if tie else ''})"
    if len(f"    logits = x{norm} -> {lm_head}") <= WIDTH:
        draft.body += [f"logits = x{norm} -> {lm_head}", "return logits"]
    else:
        draft.body += [f"x = x{norm}", f"logits = x -> {lm_head}", "return logits"]


def is_base(arch: str) -> bool:
    """A model without a task head (LlamaModel, GPT2Model, BertModel), not GPT2LMHeadModel."""
    return arch.endswith("Model") and not arch.endswith("LMHeadModel")


def quote(text) -> str:
    """A text from the file as a JSON string literal for a comment: ASCII, escaped, at most QUOTE_LIMIT long."""
    text = str(text)
    if len(text) > QUOTE_LIMIT:
        text = text[:QUOTE_LIMIT] + "..."
    return json.dumps(text, ensure_ascii=True)


def render(draft: Draft, header: list[str]) -> str:
    """The spec text: the header as comments, `use` of the library, the hyperparameters with their sources
    aligned, and the model."""
    lines = [f"# {part}" for line in header for part in textwrap.wrap(line, WIDTH - 2)]
    lines += [f"# {part}" for note in draft.notes for part in textwrap.wrap(f"Note: {note}", WIDTH - 2)]
    lines += ['use "std/transformer.spec"', ""]
    width = max(len(f"param {p.name} = {p.expr}") for p in draft.params)
    for p in draft.params:
        decl = f"param {p.name} = {p.expr}"
        lines.append(f"{decl.ljust(width)}  # {p.source}" if p.source else decl)
    lines += ["", f"model {draft.model} {{"]
    lines += [f"    {line}" for line in draft.body]
    lines += ["}", ""]
    for line in lines:
        assert "\n" not in line and "\r" not in line, line  # a line break here is a bug in a recipe, not input
    return "\n".join(lines)
