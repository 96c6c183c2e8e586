"""`specc compile`: the report (or its JSON), and the standalone PyTorch file of `--emit-torch`. Needs no torch."""

from __future__ import annotations

import json
import sys

from ..compiled import load
from ..errors import Span, SpecError
from ..text import printable


def compile_command(file: str, preset: str | None, overrides: dict, as_json: bool, emit_torch: str | None,
                    lora: dict | None = None) -> None:
    compiled = load(file, preset=preset, overrides=overrides, lora=lora)
    if emit_torch:
        from ..backends.emit_torch import emit_torch as emit
        from ..io import check_output, write_text_atomic
        if emit_torch == "-":  # the source is all of stdout: `specc compile S --emit-torch - > model.py`
            if as_json:
                raise SpecError("--emit-torch - writes the source to stdout, which cannot also carry --json",
                                Span("--emit-torch", 0, 0))
            sys.stdout.write(emit(compiled.model))
            return
        check_output(emit_torch)
        try:
            write_text_atomic(emit_torch, emit(compiled.model))
        except OSError as e:  # after the check: a full disk, or the folder changed meanwhile
            raise SpecError(f"cannot write '{emit_torch}': {e.strerror}", Span(emit_torch, 0, 0)) from None
        print(f"wrote {printable(emit_torch)}", file=sys.stderr)
    if as_json:
        print(json.dumps(compiled.to_json(), indent=2))
    else:
        from ..render import report
        report(compiled.analysis, file)
