"""Syntax tree -> IR: resolve `use`, hyperparameters, presets and overrides, check assertions, expand blocks and
repeats, infer every tensor's shape, and name every parameter.

This package's entry points: `elaborate` (a parsed spec), `load`, `loads` and `load_saved` (text to IR),
`parse_override` (`--set NAME=VALUE`) and the limits a spec cannot exceed. The elaborator itself is
elaborator.py, which says where each of its concerns lives.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from .. import ir
from .. import syntax as S
from ..errors import SpecError
from ..parse import parse_text, read_source
from .blocks import MAX_BLOCK_DEPTH
from .elaborator import Elaborator
from .expressions import MAX_INT_BITS, MAX_STRING_CHARS
from .hyperparameters import RESERVED, parse_override
from .layers import UNIVERSAL_ARGS
from .state import MAX_LAYERS, MAX_STEPS
from .uses import SavedSources

__all__ = ["MAX_BLOCK_DEPTH", "MAX_INT_BITS", "MAX_LAYERS", "MAX_STEPS", "MAX_STRING_CHARS", "RESERVED",
           "UNIVERSAL_ARGS", "Elaborator", "SavedSources", "elaborate", "load", "load_saved", "loads",
           "parse_override"]


def elaborate(spec: S.SpecFile, preset: str | None = None, overrides: dict[str, Any] | None = None,
              saved: SavedSources | None = None, lora: dict[str, Any] | None = None) -> ir.Model:
    """`lora`: LoRA settings over the spec's `lora` section (rank, alpha, dropout, targets; None: not given), as
    the --lora flags give them."""
    try:
        return Elaborator(spec, saved).model(preset, dict(overrides or {}), lora)
    except RecursionError:
        raise SpecError("the spec nests too deeply to elaborate", spec.start) from None


def load(path: str | os.PathLike, preset: str | None = None, overrides: dict[str, Any] | None = None,
         lora: dict[str, Any] | None = None) -> ir.Model:
    """Read, parse and elaborate a spec file. Raises SpecError (with every error found) on bad input."""
    name, text = read_source(path)
    return _with_source(elaborate(parse_text(text, name), preset, overrides, lora=lora), text)


def loads(text: str, preset: str | None = None, overrides: dict[str, Any] | None = None,
          name: str = "<string>", lora: dict[str, Any] | None = None) -> ir.Model:
    return _with_source(elaborate(parse_text(text, name), preset, overrides, lora=lora), text)


def load_saved(sources: list[tuple[str, str]], uses: list[tuple[str, str, str]], preset: str | None = None,
               overrides: dict[str, Any] | None = None, lora: dict[str, Any] | None = None) -> ir.Model:
    """Elaborate a spec from saved sources (a run directory's): `sources` is (name, text), the main file first;
    `uses` says which saved file each `use` resolved to when they were saved."""
    (name, text), files = sources[0], dict(sources)
    saved = SavedSources(files, {(using, written): to for using, written, to in uses})
    return _with_source(elaborate(parse_text(text, name), preset, overrides, saved, lora), text)


def _with_source(model: ir.Model, source: str) -> ir.Model:
    return replace(model, source=source, sources=((model.path, source),) + model.sources)
