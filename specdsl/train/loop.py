"""`specc train`: a spec compiled to torch and trained by backpropagation, with evaluation on unseen data.

Settings come from, in order of precedence: command-line flags, the spec's `train { ... }` section, then the
defaults of TrainConfig (nanoGPT's shakespeare_char values where they apply). Language models train on text
(a file, or the built-in corpus); classifiers (a float input, 10 outputs) on scikit-learn's digits.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.markup import escape

from .. import ir
from ..backends.torch_backend import to_torch
from ..compiled import context_hyperparameter, load, vocabulary_hyperparameter
from ..contract import contract
from ..errors import Span, SpecError
from ..settings import RESUME_INVARIANTS, TrainConfig, resolve_config
from ..system import available_memory
from ..text import printable
from ..version import __version__
from . import checkpoint, rundir
from .data import (
    IGNORE,
    TRAIN_FRACTION,
    TokenData,
    Tokenizer,
    builtin_text,
    digits_dataset,
    encode_array,
    mask_tokens,
    read_corpus,
)

# ---- tasks: what a batch is, what the loss is ----

class LanguageModelling:
    ignore_index = IGNORE  # a target that is not scored (none here; the masked objective's unchosen positions)

    def __init__(self, data: TokenData, tokenizer: Tokenizer, ctx: int):
        self.data, self.tokenizer, self.ctx = data, tokenizer, ctx

    def batch(self, split, size, generator, rank=0, world=1):
        return self.data.batch(split, size, self.ctx, generator, rank, world)

    def loss(self, module, x, y):
        logits = module(x)
        logits = logits[0] if isinstance(logits, tuple) else logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    def tokens(self, size):
        return size * self.ctx

    def metrics(self, module, split, batches, size, seed):
        gen = torch.Generator().manual_seed(seed)
        losses = [self.loss(module, *self.batch(split, size, gen)).item() for _ in range(batches)]
        return {"loss": sum(losses) / len(losses)}


class MaskedLanguageModelling(LanguageModelling):
    """BERT's objective: windows of ctx tokens, 15% of them chosen and mostly replaced by [MASK]; the loss is on the
    chosen positions only (data.mask_tokens)."""

    def batch(self, split, size, generator, rank=0, world=1):
        x, _ = self.data.batch(split, size, self.ctx, generator)  # the global batch, so every rank masks the same
        x, y = mask_tokens(x, self.tokenizer, generator)
        return (x[rank::world], y[rank::world]) if world > 1 else (x, y)

    def metrics(self, module, split, batches, size, seed):
        gen = torch.Generator().manual_seed(seed)
        losses, right, total = [], 0, 0
        for _ in range(batches):
            x, y = self.batch(split, size, gen)
            logits = module(x)
            logits = logits[0] if isinstance(logits, tuple) else logits
            chosen = y != IGNORE
            losses.append(F.cross_entropy(logits[chosen].float(), y[chosen]).item())
            right += int((logits[chosen].argmax(-1) == y[chosen]).sum())
            total += int(chosen.sum())
        return {"loss": sum(losses) / len(losses), "accuracy": right / total}


def language_task(data: TokenData, tokenizer: Tokenizer, ctx: int) -> LanguageModelling:
    """Next-token prediction, or masked tokens when the tokenizer has a [MASK] id (a bidirectional model)."""
    return (MaskedLanguageModelling if tokenizer.mask else LanguageModelling)(data, tokenizer, ctx)


class Classification:
    def __init__(self, image: bool, seed: int):
        (self.x, self.y), (self.vx, self.vy) = digits_dataset(image, seed)

    def batch(self, split, size, generator, rank=0, world=1):
        x, y = (self.x, self.y) if split == "train" else (self.vx, self.vy)
        idx = torch.randint(len(x), (size,), generator=generator)
        idx = idx[rank::world] if world > 1 else idx
        return x[idx], y[idx]

    def loss(self, module, x, y):
        return F.cross_entropy(module(x).float(), y)

    def tokens(self, size):
        return size

    def metrics(self, module, split, batches, size, seed):
        x, y = (self.x, self.y) if split == "train" else (self.vx, self.vy)
        logits = module(x).float()
        return {"loss": F.cross_entropy(logits, y).item(),
                "accuracy": (logits.argmax(-1) == y).float().mean().item()}


def _decay_groups(module, model: ir.Model, weight_decay: float):
    """AdamW groups: matrices decay; biases, norms and embeddings don't (nanoGPT; Loshchilov & Hutter 2019)."""
    embedding = {f"{path}.{p.name}" for path, layer in ir.layers_with_paths(model.root) for p in layer.params
                 if p.embedding}
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and name not in embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training; the last completed step was saved first (`signum` says which)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class ReportedByRankZero(Exception):
    """Raised on the other ranks when rank 0 failed: rank 0 reports the error, once."""


class _StopRequest:
    """SIGINT and SIGTERM while training: the step under way finishes, is saved with the generator state that goes
    with it, and training stops; a second SIGINT stops at once (the checkpoint on disk is whole either way)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, world: int) -> bool:
        if world == 1:
            return self.signum is not None
        import torch.distributed as dist
        flag = torch.tensor([0 if self.signum is None else self.signum])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops after the same step
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())


@dataclass
class Session:
    """What a run needs, resolved and checked before anything is written."""

    spec_path: str
    compiled: Any
    module: Any  # torch.nn.Module, built with the run's seed
    config: TrainConfig
    plan: rundir.Plan
    record: dict  # run.json: the run's identity
    tokenizer: Tokenizer | None
    ids: Any = None  # the tokenized corpus, for a run that starts (None when it resumes)
    sources: tuple = ()

    @property
    def out(self) -> Path:
        return self.plan.path

    @property
    def resuming(self) -> bool:
        return self.plan.last_step is not None


def _distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _all_mean(value: float, world: int) -> float:
    if world == 1:
        return value
    import torch.distributed as dist
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / world


def _from_rank_zero(obj, world: int):
    """rank 0's `obj` on every rank; None from rank 0 means it failed (and reports why), so the others stop."""
    if world == 1:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None and dist.get_rank() != 0:
        raise ReportedByRankZero
    return box[0]


def train(spec_path: str, preset: str | None = None, overrides: dict | None = None, flags: dict | None = None,
          resume: bool = False, console=None, progress: bool = True) -> dict:
    """Train a spec; returns the summary (also written to <out>/summary.json). Everything is checked before the run
    directory is written (train/rundir.py); SIGINT and SIGTERM save the last completed step and raise
    TrainingInterrupted."""
    import sys

    from rich.console import Console
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    rank, world = _distributed()
    if rank == 0:
        try:
            session = _prepare(spec_path, preset, dict(overrides or {}), dict(flags or {}), resume, world)
            run = _start(session)
        except BaseException:
            _from_rank_zero(None, world)
            raise
        _from_rank_zero({"out": str(session.out), "config": asdict(session.config),
                         "overrides": session.record["overrides"], "preset": session.record["preset"],
                         "resuming": session.resuming}, world)
    else:
        session, run = _follow(spec_path, _from_rank_zero(None, world))
    try:
        with _StopRequest() as stop:  # from here on, SIGINT and SIGTERM stop training cleanly
            return _loop(session, run, stop, console, progress, rank, world)
    finally:
        run.unlock()


def _prepare(spec_path: str, preset: str | None, overrides: dict, flags: dict, resume: bool, world: int) -> Session:
    """Resolve and check everything (spec, settings, run directory, data, model) without writing anything."""
    probe = load(spec_path, preset=preset, overrides=overrides)
    from .trainable import check_trainable  # a model the loop cannot train is refused here, at its line
    check_trainable(probe.model)
    config = resolve_config(probe.model.train, flags)
    plan = rundir.plan(config.out or f"runs/{probe.model.name}", resume)
    saved = plan.record if plan.state == "run" and (resume or plan.last_step is not None) else None
    if saved is not None:  # a resume: the run's own settings, spec and data, unless a flag changes what may change
        config = resolve_config(saved["config"], flags)
        _check_unchanged(saved, plan.path, preset, overrides, config, _source_list(probe.model))
        preset, overrides = saved["preset"], dict(saved["overrides"])
    if config.batch % world:
        raise SpecError(f"batch {config.batch} is not divisible by {world} processes", Span("--batch", 0, 0))
    if config.batch % config.accum:
        raise SpecError(f"batch {config.batch} is not divisible by accum {config.accum}", Span("--accum", 0, 0))

    tokenizer, ids, data = None, None, {"builtin": "digits"}
    compiled = probe
    if contract(probe.model).language_model:
        run = rundir.RunDir(plan.path)
        if plan.last_step is not None:  # resuming: the run's own tokenizer and tokens
            tokenizer = run.tokenizer()
            data = saved["data"]
            _check_data(saved, config)
        else:
            text = read_corpus(config.data) if config.data else builtin_text()
            data = rundir.fingerprint_file(config.data) if config.data else {"builtin": rundir.sha256(
                text.encode())}
            if saved is not None and saved.get("data") != data:
                raise SpecError(f"cannot resume '{plan.path}': the data changed since the run started",
                                Span("--data", 0, 0), hint="resume with the data the run started from")
            # A model that attends to later positions would read the next token: it learns masked tokens instead.
            tokenizer = Tokenizer.fit(config.tokenizer, text, mask=not contract(probe.model).causal)
            ids = encode_array(tokenizer, text)
        # The data decides the vocabulary, as nanoGPT's meta.pkl, through whichever hyperparameter the model's
        # vocabulary follows (whatever its name); an explicit --set of it wins.
        vocab_name = vocabulary_hyperparameter(probe.model, overrides)
        if vocab_name is not None and vocab_name not in overrides:
            overrides[vocab_name] = tokenizer.vocab_size
        compiled = load(spec_path, preset=preset, overrides=overrides)
        vocab = contract(compiled.model).vocab
        if vocab is not None and vocab < tokenizer.vocab_size:
            needs = f"{tokenizer.data_size} distinct tokens" + (" and [MASK]" if tokenizer.mask else "")
            raise SpecError(f"the data has {needs} but the model's vocabulary is {vocab}",
                            compiled.model.inputs[0].span,
                            hint=f"--set {vocab_name}=... or drop the override" if vocab_name else
                            "the spec fixes its vocabulary: make it as large as the data's")
        if ids is not None:
            _check_splits(len(ids), compiled.model, overrides, config.data)
        _check_batch_memory(config, contract(compiled.model).context)
    elif saved is not None:
        compiled = load(spec_path, preset=preset, overrides=overrides)
    record = {"format": rundir.FORMAT, "specc": __version__, "spec": str(spec_path),
              "sources": _source_list(compiled.model),
              "uses": [list(link) for link in compiled.model.uses], "preset": preset, "overrides": overrides,
              "config": asdict(config), "data": data, "tokenizer": tokenizer.to_json() if tokenizer else None,
              "world_size": world}
    torch.manual_seed(config.seed)
    module = to_torch(compiled)  # the memory guard speaks now, before anything is written
    return Session(str(spec_path), compiled, module, config, plan, record, tokenizer, ids, compiled.model.sources)


def _source_list(model: ir.Model) -> list[dict]:
    return [{"name": name, "sha256": rundir.sha256(text.encode())} for name, text in model.sources]


def _check_unchanged(saved: dict, out: Path, preset, overrides: dict, config: TrainConfig,
                     sources: list[dict]) -> None:
    """A resume refuses any change of what the model or its data is: the spec's files, preset, --set values,
    invariant settings."""
    changed = rundir.source_changes(saved["sources"], sources)
    changed += rundir.changes(saved["config"], asdict(config), RESUME_INVARIANTS)
    if preset is not None and preset != saved["preset"]:
        changed.append(f"preset: {saved['preset']!r} -> {preset!r}")
    changed += [f"--set {k}: {saved['overrides'].get(k)!r} -> {v!r}" for k, v in overrides.items()
                if saved["overrides"].get(k) != v]
    if changed:
        raise SpecError(f"cannot resume '{out}': " + "; ".join(changed), Span("--resume", 0, 0),
                        hint=f"a resumed run keeps its spec (saved in {out}), model and data; start a new run "
                        "(another --out) to change them")


def _check_data(saved: dict, config: TrainConfig) -> None:
    """The data file a run started from, if it is still there, must be unchanged (the run trains on its own copy of
    the tokens; a changed file would mean another run)."""
    if not config.data or not os.path.isfile(config.data):
        return
    now = rundir.fingerprint_file(config.data)
    if now != saved.get("data"):
        raise SpecError(f"cannot resume: '{config.data}' changed since the run started ({saved['data'].get('bytes')} "
                        f"bytes, sha256 {str(saved['data'].get('sha256'))[:12]}... -> {now['bytes']} bytes, sha256 "
                        f"{now['sha256'][:12]}...)", Span("--data", 0, 0),
                        hint="resume with the data the run started from, or start a new run")


# A batch of windows is held about four times as int64 at once (the offsets' gather, its int64 copy, inputs and
# targets); the model's activations come on top, so this only refuses what can never fit.
BATCH_COPIES = 4


def _check_batch_memory(config: TrainConfig, ctx: int) -> None:
    free = available_memory()
    need = config.batch // config.accum * (ctx + 1) * 8 * BATCH_COPIES
    if free is not None and need > free:
        raise SpecError(f"batch {config.batch} of {ctx}-token windows needs {need / 2**30:,.1f} GiB for its token ids "
                        f"alone; {free / 2**30:,.1f} GiB are free", Span("--batch", 0, 0),
                        hint="a smaller --batch, or --accum to split it into micro-batches")


def _check_splits(tokens: int, model: ir.Model, overrides: dict, data: str | None) -> None:
    ctx = contract(model).context
    split = int(tokens * TRAIN_FRACTION)
    for name, size in (("training", split), ("validation", tokens - split)):
        if size <= ctx + 1:
            context_name = context_hyperparameter(model, overrides)  # only now: it elaborates the spec again
            raise SpecError(f"the data is too short: {tokens:,} tokens leave {size:,} for {name}, and a window needs "
                            f"{ctx + 1:,}", Span("--data", 0, 0) if data else Span("--set", 0, 0),
                            hint="more text, or a shorter context" + (f" (--set {context_name}=...)" if context_name
                                                                      else ""))


def _start(session: Session) -> rundir.RunDir:
    """Create and lock the run directory; a new run writes its identity, sources and data, a resumed one trims its
    metrics to its checkpoint."""
    run = rundir.open_for_writing(session.plan)
    try:
        if session.resuming:
            kept = _metrics_until(run, session.plan.last_step)
        else:
            run.write_json(rundir.RECORD, session.record)  # first: from now on the folder is a (new) run
            _write_sources(run, session)
            if session.ids is not None:
                (run.path / rundir.DATA).mkdir(exist_ok=True)
                TokenData.prepare(session.ids, session.tokenizer, lambda name, data: run.write_bytes(
                    Path(rundir.DATA) / name, data))
            session.ids = None  # on disk now; the loop reads it through a memory map
            kept = ""
        run.write_bytes(rundir.METRICS, kept.encode("utf-8"))
    except BaseException:
        run.unlock()
        raise
    return run


def _write_sources(run: rundir.RunDir, session: Session) -> None:
    """spec.spec (the main file) and sources/N.spec (the files it uses): the run compiles from its own copies."""
    folder = run.path / rundir.SOURCES
    if os.path.lexists(folder):
        run.discard(folder)
    if len(session.sources) > 1:
        folder.mkdir()
    for i, (_, text) in enumerate(session.sources):
        run.write_bytes(rundir.source_file(i), text.encode("utf-8"))


def _metrics_until(run: rundir.RunDir, step: int) -> str:
    """metrics.jsonl up to a checkpoint's step, so a resumed run's log reads as one run (a line a crash cut short
    is dropped)."""
    if not os.path.lexists(run.path / rundir.METRICS):
        return ""
    kept = []
    for line in run.read_bytes(rundir.METRICS).decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    return "".join(kept)


def _follow(spec_path: str, shared: dict) -> tuple[Session, rundir.RunDir]:
    """A rank other than 0: the session rank 0 resolved, read back from the run directory it wrote."""
    run = rundir.RunDir(shared["out"])
    compiled = load(spec_path, preset=shared["preset"], overrides=shared["overrides"])
    record = run.record()
    tokenizer = run.tokenizer() if record.get("tokenizer") else None
    last = run.complete("last")
    step = run.read_json(last.relative_to(run.path) / rundir.MARKER)["step"] if shared["resuming"] else None
    plan = rundir.Plan(run.path, "run", record, step)
    config = TrainConfig(**shared["config"])
    torch.manual_seed(config.seed)
    return Session(spec_path, compiled, to_torch(compiled), config, plan, record, tokenizer), run


def _loop(session: Session, run: rundir.RunDir, stop: _StopRequest, console, progress: bool, rank: int,
          world: int) -> dict:
    say = console.print if rank == 0 else (lambda *a, **k: None)
    compiled, config, tokenizer = session.compiled, session.config, session.tokenizer
    if tokenizer is not None:
        data = TokenData(run.path / rundir.DATA, tokenizer)
        task = language_task(data, tokenizer, contract(compiled.model).context)
    else:
        task = Classification(image=compiled.model.inputs[0].type.rank == 4, seed=config.seed)

    module = session.module
    model_for_step = _parallel(module, config) if world > 1 else module
    # fused: one kernel for the whole update instead of a Python loop over tensors (~2 ms of a 58 ms step of the
    # Shakespeare model on 2 cores; bench/shakespeare.py)
    optimizer = torch.optim.AdamW(_decay_groups(module, compiled.model, config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2), fused=True)
    generator = torch.Generator().manual_seed(config.seed)
    start, best_val, best_step, history, overfit_step = 0, math.inf, None, [], None
    if session.resuming:
        state = checkpoint.load(run.complete("last"), module, optimizer, generator)
        start, best_step, history = state["step"], state["best_step"], state["history"]
        best_val = math.inf if state["best_val"] is None else state["best_val"]
        overfit_step = state.get("overfitting_step")
        say(f"[bold]resumed[/bold] {escape(printable(str(session.out)))} at step {start}")

    if rank == 0:
        _print_settings(console, compiled, config, session, tokenizer, world)
    autocast = torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16) \
        if config.dtype == "bf16" else contextlib.nullcontext()
    metrics_file = run.append(rundir.METRICS) if rank == 0 else None
    micro = config.batch // config.accum
    tokens_per_step = task.tokens(config.batch)
    stopped_early, started = False, time.perf_counter()
    completed = saved_step = start
    identity = rundir.sha256(json.dumps(session.record["sources"]).encode())

    def trainer_state(step: int) -> dict:
        return {"step": step, "best_val": best_val, "best_step": best_step, "history": history,
                "overfitting_step": overfit_step, "config": asdict(config), "spec_hash": identity,
                "overrides": session.record["overrides"], "preset": session.record["preset"],
                "tokenizer": tokenizer.to_json() if tokenizer else None}

    step_times: list[float] = []
    bar = _progress(console, progress and rank == 0, start, config.steps)
    module.train()
    try:
        with _out_of_memory(config):
            for step in range(start, config.steps):
                if stop.requested(world):
                    if completed > saved_step:
                        captured = checkpoint.capture(module, optimizer)
                        if rank == 0:
                            metrics_file.flush()
                            checkpoint.save(run, "last", module, optimizer, generator, trainer_state(completed),
                                            captured)
                    say(f"\ninterrupted after step {completed}; continue with --resume")
                    raise TrainingInterrupted(stop.signum)
                t0 = time.perf_counter()
                for group in optimizer.param_groups:
                    group["lr"] = config.lr_at(step)
                total = 0.0
                for _ in range(config.accum):
                    x, y = task.batch("train", micro, generator, rank, world)
                    with autocast:
                        loss = task.loss(model_for_step, x, y)
                        aux = module.aux_loss()
                        objective = loss + config.aux_loss * aux if isinstance(aux, torch.Tensor) else loss
                    (objective / config.accum).backward()
                    total += loss.item() / config.accum
                train_loss = _all_mean(total, world)
                if not math.isfinite(train_loss):  # before the update: the last checkpoint stays a good one
                    raise SpecError(f"training diverged at step {step + 1}: the loss is {train_loss}",
                                    Span(str(session.out), 0, 0),
                                    hint=f"lower the learning rate (--lr {config.lr:g}) or raise warmup; "
                                    + (f"the last checkpoint (step {saved_step}) is kept" if saved_step else
                                       "no checkpoint was written"))
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step_times.append(time.perf_counter() - t0)
                record = {"step": step + 1, "train_loss": train_loss, "lr": config.lr_at(step),
                          "step_s": step_times[-1]}
                done = step + 1 == config.steps
                if (step + 1) % config.eval_every == 0 or done:
                    module.eval()
                    with torch.no_grad(), autocast:
                        val = task.metrics(module, "val", config.eval_batches, config.batch, config.seed + 1)
                        trn = task.metrics(module, "train", config.eval_batches, config.batch, config.seed + 2)
                    module.train()
                    record.update({"val_loss": val["loss"], "train_eval_loss": trn["loss"]})
                    if "accuracy" in val:
                        record["val_accuracy"] = val["accuracy"]
                    history.append({"step": step + 1, "train": trn["loss"], "val": val["loss"]})
                    improved = val["loss"] < best_val
                    if improved:
                        best_val, best_step = val["loss"], step + 1
                    if len(history) >= 2 and overfit_step is None and history[-1]["val"] > history[-2]["val"] \
                            and history[-1]["train"] < history[-2]["train"]:
                        overfit_step = step + 1
                        say(f"[yellow]warning: overfitting? at step {step + 1} validation loss rose "
                            f"({history[-2]['val']:.4f} -> {history[-1]['val']:.4f}) while training loss fell "
                            f"({history[-2]['train']:.4f} -> {history[-1]['train']:.4f})[/yellow]")
                    say(f"step {step + 1:>6}  train {trn['loss']:.4f}  val {val['loss']:.4f}"
                        + (f"  acc {val['accuracy']:.3f}" if "accuracy" in val else "")
                        + ("  [green]best[/green]" if improved else ""))
                    captured = checkpoint.capture(module, optimizer)  # every rank: FSDP gathers the shards
                    if rank == 0:
                        _write_metrics(metrics_file, record)
                        metrics_file.flush()
                        if improved:
                            checkpoint.save(run, "best", module, optimizer, generator, trainer_state(step + 1),
                                            captured)
                        checkpoint.save(run, "last", module, optimizer, generator, trainer_state(step + 1),
                                        captured)
                    saved_step = step + 1
                    _barrier(world)
                    if config.patience and best_step is not None and \
                            (step + 1 - best_step) >= config.patience * config.eval_every:
                        stopped_early = True
                        say(f"stopping early: no improvement for {config.patience} evaluations")
                        completed = step + 1
                        break
                elif rank == 0:
                    _write_metrics(metrics_file, record)
                if bar is not None:
                    recent = step_times[-20:]
                    speed = tokens_per_step * len(recent) / sum(recent)
                    bar.update(bar.task_ids[0], completed=step + 1,
                               description=f"loss {train_loss:.4f}  {speed:,.0f} tok/s")
                completed = step + 1
    finally:
        if bar is not None:
            bar.stop()
        if metrics_file:
            metrics_file.close()
    wall = time.perf_counter() - started
    summary = {
        "model": compiled.name, "params": compiled.analysis.total, "steps": completed,
        "best_val_loss": best_val, "best_step": best_step, "final_train_loss": history[-1]["train"] if history
        else None, "tokens_per_s": tokens_per_step * len(step_times) / max(sum(step_times), 1e-9),
        "wall_s": wall, "stopped_early": stopped_early, "overfitting_step": overfit_step, "out": str(session.out),
        "world_size": world,
    }
    if rank == 0:
        run.write_json("summary.json", summary)
        rows = _metrics_rows(run)
        run.write_with("loss.png", lambda path: _plot(rows, path, compiled.name))
        _print_summary(console, summary)
    return rundir.finite(summary)


@contextlib.contextmanager
def _out_of_memory(config: TrainConfig):
    """An allocation that fails (a batch too large for this machine) is the user's settings, said as such."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not isinstance(e, torch.OutOfMemoryError) and \
                "allocate" not in str(e) and "out of memory" not in str(e):
            raise
        raise SpecError(f"out of memory with batch {config.batch} (micro-batches of {config.batch // config.accum})",
                        Span("--batch", 0, 0), hint="a smaller --batch, or --accum to split it") from None


def _metrics_rows(run: rundir.RunDir) -> list[dict]:
    rows = []
    for line in run.read_bytes(rundir.METRICS).decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def _parallel(module, config: TrainConfig):
    if config.fsdp:
        from torch.distributed.fsdp import fully_shard
        for m in module.modules():
            if type(m).__name__ == "GraphModule" and m is not module:
                fully_shard(m)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(module)


def _write_metrics(f, record: dict) -> None:
    # Buffered: flushed with each evaluation's checkpoint (a resume drops lines past the checkpoint anyway).
    f.write(json.dumps(rundir.finite(record)) + "\n")


def _progress(console, enabled: bool, start: int, total: int):
    if not enabled or not console.is_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
                   TimeRemainingColumn(), console=console, transient=True)
    bar.add_task("", total=total, completed=start)
    bar.start()
    return bar


def _print_settings(console, compiled, config: TrainConfig, session: Session, tokenizer, world: int) -> None:
    from rich.table import Table
    from rich.text import Text
    table = Table(title=f"training {compiled.name} ({compiled.analysis.total:,} parameters)", show_header=False,
                  title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in asdict(config).items():
        table.add_row(key, Text(printable(str(value))))  # paths and strings are the user's: no markup in them
    if session.record["overrides"]:
        table.add_row("--set", Text(printable(", ".join(f"{k}={v}" for k, v in session.record["overrides"].items()))))
    if tokenizer:
        table.add_row("vocabulary", f"{tokenizer.vocab_size} ({tokenizer.kind}" + (" + [MASK]" if tokenizer.mask
                                                                                   else "") + ")")
        table.add_row("objective", "masked tokens (15%: 80% [MASK], 10% random, 10% kept; BERT)" if tokenizer.mask
                      else "next token")
    table.add_row("processes", str(world))
    table.add_row("run directory", Text(printable(str(session.out))))
    console.print(table)


def _print_summary(console, s: dict) -> None:
    from rich.table import Table
    from rich.text import Text
    table = Table(title="summary", show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("steps", f"{s['steps']:,}" + ("  (stopped early)" if s["stopped_early"] else ""))
    table.add_row("best validation loss", f"{s['best_val_loss']:.4f} at step {s['best_step']}")
    if s["final_train_loss"] is not None:
        table.add_row("last training loss", f"{s['final_train_loss']:.4f}")
    if s["overfitting_step"]:
        table.add_row("overfitting", f"validation loss rose while training loss fell at step {s['overfitting_step']}")
    table.add_row("throughput", f"{s['tokens_per_s']:,.0f} tokens/s, {s['wall_s']:.1f} s")
    table.add_row("checkpoints", Text(printable(f"{s['out']}/best (step {s['best_step']}), {s['out']}/last")))
    console.print(table)


def _plot(rows: list[dict], png: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in rows], [r["train_loss"] for r in rows], lw=0.8, alpha=0.6, label="train (step)")
    evals = [r for r in rows if "val_loss" in r]
    ax.plot([r["step"] for r in evals], [r["train_eval_loss"] for r in evals], "o-", label="train (eval)")
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, format="png")
    plt.close(fig)
