"""The `specc` command. Thin: each command calls the library and renders; torch is imported only by the commands
that need it, so `specc compile` and `specc --help` stay fast."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Optional

import typer

from . import __version__
from .context_window import DEFAULT_OVERFLOW, OVERFLOW_POLICIES
from .errors import Span, SpecError

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


@app.command("train")
def train_cmd(
    spec: str = typer.Argument(..., help="The spec file."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="A named preset of the spec."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Override a hyperparameter: --set dropout=0.2."),
    data: Optional[str] = typer.Option(None, "--data", help="A text file; without it, the built-in corpus."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="char (default) or byte."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Sequences per step (global, all processes)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed: a CPU run is deterministic."),
    out: Optional[str] = typer.Option(None, "--out", help="Run directory (default runs/<model>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    nproc: int = typer.Option(1, "--nproc", help="Processes, through torchrun (DDP; gloo on CPU)."),
    fsdp: bool = typer.Option(False, "--fsdp", help="Shard parameters with FSDP2 (with --nproc)."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Steps between evaluations."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Evaluations without improvement to stop."),
    accum: Optional[int] = typer.Option(None, "--accum", help="Gradient accumulation micro-batches."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warmup steps."),
    decay_steps: Optional[int] = typer.Option(None, "--decay-steps",
                                              help="Step where the cosine ends (default: steps)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 or bf16 (autocast)."),
) -> None:
    """Train a spec: checkpoints, evaluation on held-out data, a loss plot and a summary."""
    if nproc > 1:
        import os
        import subprocess
        argv = _without_option(sys.argv[1:], "--nproc")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "specdsl.cli"] + argv
        raise typer.Exit(subprocess.call(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}))
    flags = dict(data=data, tokenizer=tokenizer, steps=steps, batch=batch, lr=lr, seed=seed, out=out,
                 eval_every=eval_every, patience=patience, accum=accum, warmup=warmup, decay_steps=decay_steps,
                 dtype=dtype,
                 fsdp=fsdp or None)
    try:
        from .train.loop import train
        train(spec, preset=preset, overrides=_overrides(sets), flags=flags, resume=resume)
    except SpecError as e:
        _fail(e)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_SPEC_ERROR) from None


def _without_option(argv: list[str], name: str) -> list[str]:
    """argv less `name VALUE` and `name=VALUE`: the workers torchrun starts must not start workers again."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


Overflow = Enum("Overflow", {p: p for p in OVERFLOW_POLICIES}, type=str)  # choices that typer checks


OVERFLOW_HELP = ("Once the text outgrows the context: 'shift' keeps the last ctx/2 tokens and goes on with the "
                 "cache (llama.cpp's context shift); 'slide' runs the last ctx tokens for every new token (nanoGPT's "
                 "generate: no cache can help past the context).")


# The options `specc sample` and `specc generate` share; typer checks the bounds (a usage error, exit 2).
PROMPT = typer.Option("\n", "--prompt", help="Text to continue (at least one token).")
MAX_NEW_TOKENS = typer.Option(200, "--max-new-tokens", min=0, help="Tokens to generate.")
TEMPERATURE = typer.Option(0.8, "--temperature", min=0.0, help="0 is greedy.")
TOP_K = typer.Option(None, "--top-k", min=0, help="Sample among the k most likely tokens (0: all).")
SEED = typer.Option(0, "--seed")
OVERFLOW = typer.Option(Overflow(DEFAULT_OVERFLOW), "--overflow", help=OVERFLOW_HELP)


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    where = Span("--prompt", 0, 0)
    try:
        ids = tokenizer.encode(prompt)
    except ValueError as e:
        raise SpecError(f"the prompt has {e}", where) from None
    if not ids:
        raise SpecError("the prompt is empty: a model needs at least one token to continue", where,
                        hint="the default prompt is a newline")
    return ids


def _stream(prompt: str, tokens, tokenizer) -> None:
    sys.stdout.write(prompt)
    for token in tokens:
        sys.stdout.write(tokenizer.decode([token]))
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command("sample")
def sample_cmd(
    run_dir: str = typer.Argument(..., help="A run directory of `specc train`."),
    prompt: str = PROMPT,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    top_k: Optional[int] = TOP_K,
    seed: int = SEED,
    overflow: Overflow = OVERFLOW,
) -> None:
    """Generate text from a trained run with PyTorch, streaming tokens as they come."""
    try:
        from .train.sample import generate, load_run
        module, tokenizer, ctx = load_run(run_dir)
        ids = _prompt_ids(tokenizer, prompt)
    except SpecError as e:
        _fail(e)
    _stream(prompt, generate(module, ids, max_new_tokens, ctx, temperature, top_k, seed, overflow.value), tokenizer)


@app.command("export")
def export_cmd(
    spec: str = typer.Argument(..., help="The spec file."),
    onnx: bool = typer.Option(False, "--onnx", help="Export to ONNX (the one format for now)."),
    output: str = typer.Option(..., "-o", "--output", help="The .onnx file to write."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="A named preset of the spec."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Override a hyperparameter."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="A run directory of `specc train`."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: also write OUT.int8.onnx."),
) -> None:
    """Export a spec to ONNX, check it and compare it with PyTorch on onnxruntime."""
    if not onnx:
        print("error: choose a format: --onnx", file=sys.stderr)
        raise typer.Exit(EXIT_SPEC_ERROR)
    try:
        from .backends.onnx_cli import export_command
        export_command(spec, output, preset, _overrides(sets), checkpoint, quantize)
    except SpecError as e:
        _fail(e)


@app.command("inspect")
def inspect_cmd(path: str = typer.Argument(..., help="An ONNX file written by `specc export`.")) -> None:
    """Print what an exported file says about itself, and the parameter count read back from it."""
    try:
        from .backends.onnx_cli import inspect_command
        inspect_command(path)
    except SpecError as e:
        _fail(e)


@app.command("generate")
def generate_cmd(
    path: str = typer.Argument(..., help="An ONNX file written by `specc export --checkpoint`."),
    prompt: str = PROMPT,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    top_k: Optional[int] = TOP_K,
    seed: int = SEED,
    overflow: Overflow = OVERFLOW,
) -> None:
    """Generate text on onnxruntime with the KV cache, streaming tokens as they come."""
    try:
        from .backends.onnx_generate import OnnxGenerator
        generator = OnnxGenerator(path)
        ids = _prompt_ids(generator.tokenizer, prompt)
    except SpecError as e:
        _fail(e)
    _stream(prompt, generator.generate(ids, max_new_tokens, temperature, top_k, seed, overflow.value),
            generator.tokenizer)


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
