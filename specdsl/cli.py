"""The `specc` command. Thin: each command calls the library and renders; torch is imported only by the commands
that need it, so `specc compile` and `specc --help` stay fast."""

from __future__ import annotations

import errno
import os
import signal
import sys
from enum import Enum
from typing import Optional

import typer

from .context_window import DEFAULT_OVERFLOW, OVERFLOW_POLICIES
from .errors import SpecError
from .version import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="specc: compile declarative model specs to exact counts, PyTorch and ONNX.")

# Exit codes: 2 for bad input (a located or named error), 1 for a failure that is not the input's (an internal
# error, a full disk), 128 + N for a signal (130 after Ctrl-C, with the last completed step saved).
EXIT_SPEC_ERROR = 2
EXIT_FAILURE = 1
_debug = bool(os.environ.get("SPECC_DEBUG"))

# OSErrors that say a path given to specc is wrong, not that the machine failed.
_BAD_PATH = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EACCES, errno.EPERM}
# What each optional dependency comes with: a command that needs one says how to install it.
_EXTRAS = {"torch": "train", "numpy": "train", "safetensors": "train", "sklearn": "train", "tokenizers": "train",
           "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "tensorboard": "tensorboard"}


def _exit(code: int, message: str = "") -> None:
    """Print a report once and exit: under `--nproc`, workers hand it to the launcher, which prints rank 0's."""
    from .launch import report
    from .text import printable
    message = printable(message, keep="\t\n")  # file names and values in it are the user's, or a file's
    if not report(code, message) and message and (os.environ.get("RANK", "0") == "0" or code == EXIT_FAILURE):
        print(message, file=sys.stderr)
    sys.exit(code)


def _fail(err: SpecError) -> None:
    _exit(EXIT_SPEC_ERROR, str(err))


def _overrides(sets: list[str]) -> dict:
    from .elaborate import parse_override
    out = {}
    for s in sets:
        name, value = parse_override(s)
        out[name] = value
    return out


# LoRA (docs/language.md, "LoRA"): the same flags for `specc compile` (counts) and `specc train` (fine-tuning); each
# overrides the spec's `lora { ... }` section.
LORA_RANK = typer.Option(None, "--lora", metavar="RANK", help="LoRA fine-tuning with adapters of this rank (the "
                         "base model frozen).")
LORA_ALPHA = typer.Option(None, "--lora-alpha", help="LoRA's alpha: the adapters are scaled by alpha / rank "
                          "(default 8, as peft).")
LORA_TARGETS = typer.Option(None, "--lora-targets", metavar="T1,T2", help="The matrices to adapt: globs over "
                            "their paths (*.attn.q, h.*.mlp.fc) or kinds (Attention.v, Linear), comma-separated.")
LORA_DROPOUT = typer.Option(None, "--lora-dropout", help="Dropout on the adapters' input (default 0).")


def _lora(rank: int | None, alpha: float | None, targets: str | None, dropout: float | None) -> dict | None:
    """The --lora flags given, for the elaborator (which checks them over the spec's section); None when none."""
    given = {"rank": rank, "alpha": alpha, "targets": targets, "dropout": dropout}
    return given if any(v is not None for v in given.values()) else None


def _version(value: bool) -> None:
    if value:
        print(f"specc {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                                help="Print the version and exit."),
         debug: bool = typer.Option(False, "--debug", help="Show the traceback of an internal error.")) -> None:
    global _debug
    _debug = _debug or debug


@app.command("compile")
def compile_(
    file: str = typer.Argument(..., help="The spec file."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="A named preset of the spec."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Override a hyperparameter: --set d=1024 (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the report."),
    emit_torch: Optional[str] = typer.Option(None, "--emit-torch", metavar="OUT.py",
                                             help="Also write a standalone PyTorch file of the model."),
    lora: Optional[int] = LORA_RANK,
    lora_alpha: Optional[float] = LORA_ALPHA,
    lora_targets: Optional[str] = LORA_TARGETS,
    lora_dropout: Optional[float] = LORA_DROPOUT,
) -> None:
    """Parse, check and analyse a spec: exact parameter counts, FLOPs per token and memory."""
    from .commands.compile import compile_command
    try:
        compile_command(file, preset, _overrides(sets), as_json, emit_torch,
                        _lora(lora, lora_alpha, lora_targets, lora_dropout))
    except SpecError as e:
        _fail(e)


SEVERAL_MACHINES = "Several machines (docs/training.md)"
# The options of `specc train` that the launcher turns into torchrun's (launch.py, rendezvous.py); each takes a value.
LAUNCHER_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-id", "--rdzv-backend")


@app.command("train")
def train_cmd(
    spec: str = typer.Argument(..., help="The spec file."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="A named preset of the spec."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Override a hyperparameter: --set dropout=0.2."),
    data: Optional[str] = typer.Option(None, "--data", help="A text file, a folder of .txt files, a .jsonl or "
                                       "nanoGPT's .bin token ids; without it, the built-in corpus."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="char (default; with --init-from, the "
                                            "tokenizer that came with it), byte, bpe:VOCAB, or a tokenizer.json."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Sequences per step (global, all processes)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed: a CPU run is deterministic."),
    out: Optional[str] = typer.Option(None, "--out", help="Run directory (default runs/<model>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="Processes, through torchrun (DDP; gloo on "
                                        "CPU); with --nnodes, on each node."),
    fsdp: bool = typer.Option(False, "--fsdp", help="Shard parameters with FSDP2 (with --nproc)."),
    nnodes: Optional[str] = typer.Option(None, "--nnodes", metavar="N|MIN:MAX", rich_help_panel=SEVERAL_MACHINES,
                                         help="Machines the run spans: run the command on each, with the same "
                                              "--rdzv-endpoint; --out on a filesystem they share."),
    node_rank: Optional[int] = typer.Option(None, "--node-rank", min=0, rich_help_panel=SEVERAL_MACHINES,
                                            help="This machine's number, 0 to N-1 (torchrun's static rendezvous; "
                                                 "without it the nodes are numbered as they join, c10d)."),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", metavar="HOST:PORT",
                                                rich_help_panel=SEVERAL_MACHINES,
                                                help="Where the nodes meet: one node's address and a free port."),
    rdzv_id: Optional[str] = typer.Option(None, "--rdzv-id", rich_help_panel=SEVERAL_MACHINES,
                                          help="A name for the run, the same on every node."),
    rdzv_backend: Optional[str] = typer.Option(None, "--rdzv-backend", metavar="c10d|static",
                                               rich_help_panel=SEVERAL_MACHINES,
                                               help="c10d (default), or static with --node-rank (the default then)."),
    init_from: Optional[str] = typer.Option(None, "--init-from",
                                            help="Start from these weights (fine-tuning): a Hugging Face checkpoint "
                                                 "folder, a .safetensors file or a specc run directory."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Steps between evaluations."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Evaluations without improvement to stop."),
    accum: Optional[int] = typer.Option(None, "--accum", help="Gradient accumulation micro-batches."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warmup steps."),
    decay_steps: Optional[int] = typer.Option(None, "--decay-steps",
                                              help="Step where the cosine ends (default: steps)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32, bf16 or fp16 (autocast on the device; fp16 "
                                                          "on a GPU)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, mps or auto (default: cuda, else mps, "
                                                                "else cpu)."),
    log_every: Optional[int] = typer.Option(None, "--log-every", min=0,
                                            help="Steps between status lines when not on a terminal (default: "
                                                 "eval-every / 5; 0: none)."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write TensorBoard events to RUN/tensorboard."),
    lora: Optional[int] = LORA_RANK,
    lora_alpha: Optional[float] = LORA_ALPHA,
    lora_targets: Optional[str] = LORA_TARGETS,
    lora_dropout: Optional[float] = LORA_DROPOUT,
) -> None:
    """Train a spec: checkpoints, evaluation on held-out data, a loss plot and a summary."""
    from .rendezvous import check
    try:
        rendezvous = check(nproc, nnodes, node_rank, rdzv_endpoint, rdzv_id, rdzv_backend)
    except SpecError as e:
        _fail(e)
    if (nproc or 1) > 1 or rendezvous is not None:
        from .launch import launch
        argv = sys.argv[1:]
        for launcher_only in LAUNCHER_OPTIONS:  # the workers must not start workers again
            argv = _without_option(argv, launcher_only)
        raise typer.Exit(launch(nproc, argv, rendezvous))
    flags = dict(data=data, tokenizer=tokenizer, steps=steps, batch=batch, lr=lr, seed=seed, out=out,
                 eval_every=eval_every, patience=patience, accum=accum, warmup=warmup, decay_steps=decay_steps,
                 dtype=dtype, fsdp=fsdp or None, init_from=init_from)
    from .launch import register_worker
    from .train.loop import PeerLost, ReportedByRankZero, TrainingInterrupted, train
    register_worker()
    try:
        train(spec, preset=preset, overrides=_overrides(sets), flags=flags, resume=resume, log_every=log_every,
              tensorboard=tensorboard, device=device, lora=_lora(lora, lora_alpha, lora_targets, lora_dropout))
    except SpecError as e:
        _fail(e)
    except ReportedByRankZero:
        _exit(EXIT_SPEC_ERROR)
    except PeerLost as e:
        _exit(EXIT_FAILURE, str(e))
    except TrainingInterrupted as e:
        _exit(128 + e.signum)


def _without_option(argv: list[str], name: str) -> list[str]:
    """argv less `name VALUE` and `name=VALUE`."""
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
SEED = typer.Option(0, "--seed", min=0, max=2**63 - 1)  # what both torch's and numpy's generators take
OVERFLOW = typer.Option(Overflow(DEFAULT_OVERFLOW), "--overflow", help=OVERFLOW_HELP)


@app.command("sample")
def sample_cmd(
    run_dir: str = typer.Argument(..., help="A run directory of `specc train`."),
    prompt: str = PROMPT,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    top_k: Optional[int] = TOP_K,
    seed: int = SEED,
    overflow: Overflow = OVERFLOW,
    device: str = typer.Option("auto", "--device", help="cpu, cuda, mps or auto (cuda, else mps, else cpu)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16: the weights and the KV cache in that "
                              "precision (fp16 on a GPU only)."),
) -> None:
    """Generate text from a trained run with PyTorch, streaming tokens as they come."""
    from .commands.generate import sample_command
    try:
        sample_command(run_dir, prompt, max_new_tokens, temperature, top_k, seed, overflow.value, device, dtype)
    except SpecError as e:
        _fail(e)


@app.command("export")
def export_cmd(
    spec: str = typer.Argument(..., help="The spec file."),
    onnx: bool = typer.Option(False, "--onnx", help="Export to ONNX (the one format for now)."),
    output: str = typer.Option(..., "-o", "--output", help="The .onnx file to write."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="A named preset of the spec."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Override a hyperparameter."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="A run directory of `specc train`."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: also write OUT.int8.onnx."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, or fp16: half-precision weights and compute, "
                                                      "checked against the fp32 model (bf16 is refused)."),
    external_data: bool = typer.Option(False, "--external-data",
                                       help="Store each graph's weights in one data file beside it (OUT.onnx.data); "
                                            "automatic past 1 GiB of weights."),
) -> None:
    """Export a spec to ONNX, check it and compare it with PyTorch on onnxruntime."""
    if not onnx:
        print("error: choose a format: --onnx", file=sys.stderr)
        raise typer.Exit(EXIT_SPEC_ERROR)
    try:
        from .commands.export import export_command
        export_command(spec, output, preset, _overrides(sets), checkpoint, quantize, dtype, external_data)
    except SpecError as e:
        _fail(e)


@app.command("inspect")
def inspect_cmd(path: str = typer.Argument(..., help="An ONNX file written by `specc export`.")) -> None:
    """Print what an exported file says about itself, and the parameter count read back from it."""
    try:
        from .commands.export import inspect_command
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
    from .commands.generate import generate_command
    try:
        generate_command(path, prompt, max_new_tokens, temperature, top_k, seed, overflow.value)
    except SpecError as e:
        _fail(e)


@app.command("import")
def import_cmd(
    path: str = typer.Argument(..., help="A Hugging Face checkpoint folder (its config.json) or a config file."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="The .spec file to write (default: stdout)."),
    force: bool = typer.Option(False, "--force", help="Replace the -o file if it exists."),
) -> None:
    """Write a spec from a Hugging Face config.json: std blocks under the zoo's names, the same parameter count."""
    from .commands.import_ import import_command
    try:
        import_command(path, output, force)
    except SpecError as e:
        _fail(e)


def run() -> None:
    """Entry point: never a traceback for bad input; an internal error is reported as one line."""
    try:
        app()
    except SpecError as e:  # pragma: no cover - commands catch their own
        _fail(e)
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM: run_process says which)
        _exit(130)
    except RecursionError:
        _exit(EXIT_SPEC_ERROR, "error: input nests too deeply")
    except ModuleNotFoundError as e:
        extra = _EXTRAS.get((e.name or "").split(".")[0])
        if extra is None or _debug:
            raise
        torch_first = "install PyTorch first (pip install torch; see README), then " if e.name == "torch" else ""
        _exit(EXIT_FAILURE, f"error: this command needs {e.name}, which is not installed\n"
                            f"hint: {torch_first}pip install 'specdsl[{extra}]'")
    except MemoryError:
        _exit(EXIT_FAILURE, "error: out of memory\nhint: a smaller model (--set), batch or input")
    except OSError as e:  # said in one line: a path the user gave (exit 2), or the machine's trouble (a full disk)
        if _debug:
            raise
        where = f": '{e.filename}'" if e.filename else ""
        _exit(EXIT_SPEC_ERROR if e.errno in _BAD_PATH else EXIT_FAILURE, f"error: {e.strerror or e}{where}")
    except Exception as e:
        if _debug:
            raise
        kinds = sys.modules.get("specdsl.kinds.base")  # loaded if a kind can have failed: --help never loads it
        if kinds is not None and isinstance(e, kinds.KindError):  # another package's kinds: not specc's bug
            _exit(EXIT_FAILURE, f"error: {e}\nhint: fix or uninstall that package")
        first = (str(e).strip().splitlines() or [""])[0][:300]
        _exit(EXIT_FAILURE, f"specc: internal error: {type(e).__name__}: {first}\nhint: this is a bug in specc; "
                            "rerun with `specc --debug ...` for the traceback and report it")


_terminated: list[int] = []  # the SIGTERM that stopped the command, if one did


def _terminate(signum, frame):
    """SIGTERM (what schedulers and `kill` send) stops any command as Ctrl-C does: files being written are removed
    on the way out. Typer turns every KeyboardInterrupt into exit 130; run_process makes it 143. Training handles
    both signals itself, saving the step under way first (train/loop.py)."""
    _terminated.append(signum)
    raise KeyboardInterrupt


def run_process() -> None:
    """The console script and `python -m specdsl.cli`: `run`, then the process ends without the interpreter's
    teardown once torch is loaded (quick_exit.py says what it saves). Tests call `run` in-process."""
    from .quick_exit import leave
    signal.signal(signal.SIGTERM, _terminate)
    try:
        run()
        code = None
    except SystemExit as e:
        code = 128 + _terminated[0] if e.code == 128 + signal.SIGINT and _terminated else e.code
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the command is done: a late SIGTERM lets it exit with its code
    leave(code)


if __name__ == "__main__":
    run_process()
