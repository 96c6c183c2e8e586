"""The `specc` command. Thin: each command calls the library and renders; torch is imported only by the commands
that need it, so `specc compile` and `specc --help` stay fast."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from . import __version__
from .errors import SpecError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="specc: compile declarative model specs to exact counts, PyTorch and ONNX.")

EXIT_SPEC_ERROR = 2


def _fail(err: SpecError) -> None:
    print(str(err), file=sys.stderr)
    raise typer.Exit(EXIT_SPEC_ERROR)


def _overrides(sets: list[str]) -> dict:
    from .elaborate import parse_override
    out = {}
    for s in sets:
        name, value = parse_override(s)
        out[name] = value
    return out


def _version(value: bool) -> None:
    if value:
        print(f"specc {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")) -> None:
    pass


@app.command("compile")
def compile_(
    file: str = typer.Argument(..., help="The spec file."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="A named preset of the spec."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Override a hyperparameter: --set d=1024 (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the report."),
    emit_torch: Optional[str] = typer.Option(None, "--emit-torch", metavar="OUT.py",
                                             help="Also write a standalone PyTorch file of the model."),
) -> None:
    """Parse, check and analyse a spec: exact parameter counts, FLOPs per token and memory."""
    from . import load
    try:
        compiled = load(file, preset=preset, overrides=_overrides(sets))
    except SpecError as e:
        _fail(e)
    if emit_torch:
        from . import emit_torch as emit
        from .io import write_text_atomic
        write_text_atomic(emit_torch, emit(compiled))
        print(f"wrote {emit_torch}", file=sys.stderr)
    if as_json:
        print(json.dumps(compiled.to_json(), indent=2))
    else:
        from .render import report
        report(compiled.analysis, file)


def run() -> None:
    """Entry point: never a traceback for bad input; an internal error is reported as one line."""
    try:
        app()
    except SpecError as e:  # pragma: no cover - commands catch their own
        print(str(e), file=sys.stderr)
        sys.exit(EXIT_SPEC_ERROR)
    except KeyboardInterrupt:
        sys.exit(130)
    except RecursionError:
        print("error: input nests too deeply", file=sys.stderr)
        sys.exit(EXIT_SPEC_ERROR)


if __name__ == "__main__":
    run()
