"""Located errors: every user mistake becomes a SpecError pointing at file:line:col.

A SpecError carries a Span (where), a message (what), an optional hint (how to fix it) and notes (context such as
"in block 'gpt_block' called at ..."). Several independent errors travel together as one SpecError whose `errors`
lists them all; `str()` renders every one with its source line and a caret, like a compiler.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .text import printable

_LINES = "\t\n"  # what a message may keep as is


@dataclass(frozen=True)
class Span:
    """A place in a source file: 1-based line and column, `end_col` exclusive (same line).

    `source` is the text the span points into (the one string the parser read, shared by all its spans), so an error
    shows its own line even after another text of the same file name was loaded. It is not part of the span's
    identity (equality and hashing use file, line and columns) and is never shown by repr."""

    file: str
    line: int
    col: int
    end_col: int | None = None
    source: str | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        # Line 0: a mistake on the command line or in a folder, not at a place in a source file.
        return self.file if self.line <= 0 else f"{self.file}:{self.line}:{self.col}"


NO_SPAN = Span("<input>", 1, 1)

def source_line(span: Span) -> str | None:
    """The line a span points at, read from the text it carries; None for a span made without one (a command-line
    flag, a folder, bytes that are not text)."""
    text = span.source
    if text is None:
        return None
    lines = text.split("\n")  # as the parser counts lines: splitlines() also splits on \r, \f, \u2028...
    if 1 <= span.line <= len(lines):
        return lines[span.line - 1]
    return None


@dataclass
class Diagnostic:
    message: str
    span: Span = NO_SPAN
    hint: str | None = None
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        # Everything shown may come from a spec or a file: shown, never obeyed by the terminal (specdsl.text);
        # a message keeps its own line breaks.
        out = [f"{printable(str(self.span))}: error: {printable(self.message, keep=_LINES)}"]
        line = source_line(self.span)
        if line is not None and len(line) <= 400:
            gutter = f"{self.span.line:>5} | "
            out.append(gutter + printable(line.rstrip()))
            width = 1
            if self.span.end_col and self.span.end_col > self.span.col:
                width = self.span.end_col - self.span.col
            # Tabs in the prefix keep the caret under the culprit.
            prefix = "".join(c if c == "\t" else " " for c in line[: self.span.col - 1])
            out.append(" " * (len(gutter) - 2) + "| " + prefix + "^" * width)
        for note in self.notes:
            out.append(f"note: {printable(note, keep=_LINES)}")
        if self.hint:
            out.append(f"hint: {printable(self.hint, keep=_LINES)}")
        return "\n".join(out)


class SpecError(Exception):
    """A mistake in a spec (or in its overrides), with where it is and how to fix it."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None,
                 notes: list[str] | None = None, errors: list[Diagnostic] | None = None):
        if errors is None:
            errors = [Diagnostic(message, span or NO_SPAN, hint, list(notes or []))]
        self.errors = errors
        first = errors[0]
        super().__init__(first.message)

    @property
    def message(self) -> str:
        return self.errors[0].message

    @property
    def span(self) -> Span:
        return self.errors[0].span

    @property
    def hint(self) -> str | None:
        return self.errors[0].hint

    def add_note(self, note: str) -> None:  # type: ignore[override]
        for d in self.errors:
            d.notes.append(note)

    def __str__(self) -> str:
        text = "\n\n".join(d.render() for d in self.errors)
        if len(self.errors) > 1:
            text += f"\n\n{len(self.errors)} errors"
        return text

    @classmethod
    def combine(cls, errors: list[SpecError]) -> SpecError:
        diagnostics = [d for e in errors for d in e.errors]
        return cls(diagnostics[0].message, errors=diagnostics)


def did_you_mean(word: str, candidates) -> str | None:
    """'did you mean X?' for the closest candidate, or None when nothing is close."""
    candidates = sorted(set(candidates))
    lowered = {c.lower(): c for c in candidates}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return f"did you mean '{lowered[word.lower()]}'?"
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if not close:
        close = [c for c in difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)]
        close = [lowered[c] for c in close]
    return f"did you mean '{close[0]}'?" if close else None
