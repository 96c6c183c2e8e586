"""`specc train`: a spec compiled to torch and trained by backpropagation, with evaluation on unseen data.

Settings come from, in order of precedence: command-line flags, the spec's `train { ... }` section, then the
defaults of TrainConfig (nanoGPT's shakespeare_char values where they apply). Language models train on text
(a file, or the built-in corpus); classifiers (a float input, 10 outputs) on scikit-learn's digits.

`train` runs named stages: prepare (session.py: resolve and check everything, then start the run directory), build
(the task, module, optimizer and batch generator: `Trainer.build`), resume (`Trainer.resume`), then `Trainer.fit`,
which repeats step and, every eval_every steps, evaluate and save; and summarize. What each objective's batches and
losses are lives in tasks.py; what is printed and plotted, in report.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.markup import escape

from .. import ir
from ..contract import contract
from ..errors import Span, SpecError
from ..settings import TrainConfig
from ..text import printable
from . import checkpoint, report, rundir
from .data import TokenData
from .device import autocast, check_dtype, grad_scaler, process_group_backend, resolve_device
from .followers import RunSeen, as_error, failures
from .session import Session, follow, prepare, start
from .tasks import Classification, Seq2Seq, language_task


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


class PeerLost(Exception):
    """Another process of the run stopped without a word (killed, or its machine lost): not the input's fault, and
    not a bug of specc. The message says so in one paragraph."""


# What gloo and nccl say when the process at the other end of a collective is gone (gloo's tcp/pair.cc: "Read error
# ...: Connection reset by peer"; nccl: "remote process exited", an aborted communicator).
_GONE = re.compile(r"Connection (reset|closed) by peer|Broken pipe|remote process exited|communicator was aborted")


@contextlib.contextmanager
def _peer_lost(world: int, trainer):
    """A collective that fails because another process is gone becomes PeerLost, naming what is saved."""
    try:
        yield
    except RuntimeError as e:
        if world == 1 or not _GONE.search(str(e)):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        saved = f"step {trainer.saved_step}" if trainer.saved_step else "none yet"
        raise PeerLost(f"error: another process of this run stopped (killed, or its machine lost): {first}\n"
                       f"hint: the last checkpoint ({saved}) is whole; continue with --resume, on every node") \
            from None


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


def _distributed(device: torch.device):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(process_group_backend(device))
    return dist.get_rank(), dist.get_world_size()


def _all_mean(value: float, world: int, device: torch.device) -> float:
    if world == 1:
        return value
    import torch.distributed as dist
    t = torch.tensor([value], dtype=torch.float64, device=device)  # nccl reduces GPU tensors only
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
          resume: bool = False, console=None, progress: bool = True, log_every: int | None = None,
          tensorboard: bool = False, device: str | None = None, lora: dict | None = None) -> dict:
    """Train a spec; returns the summary (also written to <out>/summary.json). Everything is checked before the run
    directory is written (train/session.py); SIGINT and SIGTERM save the last completed step and raise
    TrainingInterrupted. `progress`: a progress bar on a terminal, else a status line every `log_every` steps
    (report.default_log_every; 0: none); `tensorboard`: event files in RUN/tensorboard too; `device`: cpu, cuda,
    mps or auto (train/device.py); `lora`: the --lora flags (LoRA fine-tuning over the spec's `lora` section:
    train/adapters.py)."""
    import sys

    from rich.console import Console
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    where = resolve_device(device)
    rank, world = _distributed(where)
    if tensorboard:
        report.check_tensorboard()
    session, run = _prepare_every_rank(spec_path, preset, dict(overrides or {}), dict(flags or {}), resume, rank,
                                       world, where, lora)
    try:
        with _StopRequest() as stop:  # from here on, SIGINT and SIGTERM stop training cleanly
            trainer = Trainer.build(session, run, console, rank, world, where)
            trainer.resume()
            if progress:
                trainer.log_every = report.default_log_every(session.config.eval_every) if log_every is None \
                    else log_every
            with _peer_lost(world, trainer):
                wall = trainer.fit(stop, progress, tensorboard)
            return trainer.summarize(wall)
    finally:
        run.unlock()


def _prepare_every_rank(spec_path: str, preset: str | None, overrides: dict, flags: dict, resume: bool, rank: int,
                        world: int, device: torch.device, lora: dict | None = None) -> tuple[Session, rundir.RunDir]:
    """Rank 0 resolves and checks everything, then starts the run directory; the other ranks read back what it
    resolved (or stop, when it failed: it reports why, once). A rank that cannot follow (another machine that does
    not see the run directory) stops them all, and rank 0 says which it was (train/followers.py)."""
    if rank != 0:
        shared = _from_rank_zero(None, world)
        try:
            followed, problem = follow(spec_path, shared), None
        except SpecError as e:
            followed, problem = None, e
        _stop_unless_all_followed(problem, rank, world)
        return followed
    run = None
    try:
        session = prepare(spec_path, preset, overrides, flags, resume, world, lora)
        check_dtype(session.config.dtype, device)
        run = start(session)
        shared = _for_the_followers(session, run)
    except BaseException:
        if run is not None:
            run.unlock()
        _from_rank_zero(None, world)
        raise
    try:
        _from_rank_zero(shared, world)
        _stop_unless_all_followed(None, rank, world)
    except BaseException:
        run.unlock()
        raise
    return session, run


def _for_the_followers(session: Session, run: rundir.RunDir) -> dict:
    """What rank 0 tells the other ranks (session.follow reads the rest from the run directory)."""
    config = asdict(session.config)  # paths as absolute as the run's: another node may start elsewhere
    config["init_from"] = config["init_from"] and os.path.abspath(config["init_from"])
    return {"seen": asdict(RunSeen.of(run, session.plan.last_step)), "config": config,
            "resuming": session.resuming}


def _stop_unless_all_followed(problem: SpecError | None, rank: int, world: int) -> None:
    """Return when every rank followed rank 0; otherwise the rank that could not raises its error (its node prints
    it), rank 0 raises the first such error, naming the rank, and the others stop quietly."""
    if world == 1:
        return
    failed = failures(problem, world)
    if problem is not None:
        raise problem
    if failed:
        if rank == 0:
            raise as_error(failed[0])
        raise ReportedByRankZero


@dataclass
class Trainer:
    """A run in progress: what trains (the task, the module, the module the steps run through, the optimizer, the
    batch generator) and how far it got (steps completed and saved, the best validation loss, the history of
    evaluations). Each stage of `train` after prepare is one method."""

    session: Session
    run: rundir.RunDir
    task: Any  # tasks.LanguageModelling, MaskedLanguageModelling, Seq2Seq or Classification
    module: torch.nn.Module
    stepped: torch.nn.Module  # what a step runs: the module, or its DDP/FSDP wrapper with several processes
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # draws the training batches; its state is saved with each checkpoint
    console: Any
    rank: int
    world: int
    autocast: Any  # bf16 or fp16 autocast on the device, or nothing
    device: torch.device = torch.device("cpu")
    scaler: Any = None  # fp16's GradScaler
    completed: int = 0  # steps done
    saved_step: int = 0  # the step of the last checkpoint written
    best_val: float = math.inf
    best_step: int | None = None
    history: list[dict] = field(default_factory=list)  # {"step", "train", "val"} of every evaluation
    overfit_step: int | None = None  # the first evaluation whose validation loss rose while training loss fell
    stopped_early: bool = False
    step_times: list[float] = field(default_factory=list)
    metrics: Any = None  # metrics.jsonl, open for appending on rank 0 while `fit` runs
    events: Any = None  # report.EventLog (--tensorboard) on rank 0 while `fit` runs
    log_every: int = 0  # a status line every log_every steps where there is no progress bar; 0: none

    @property
    def config(self) -> TrainConfig:
        return self.session.config

    def say(self, *args, **kwargs) -> None:
        """Print on rank 0 only: one report, however many processes."""
        if self.rank == 0:
            self.console.print(*args, **kwargs)

    # ---- build and resume ----

    @classmethod
    def build(cls, session: Session, run: rundir.RunDir, console, rank: int, world: int,
              device: torch.device = torch.device("cpu")) -> Trainer:
        """The task, the optimizer and the batch generator around the session's module."""
        compiled, config, tokenizer = session.compiled, session.config, session.tokenizer
        if session.pairs is not None:
            task = Seq2Seq(session.pairs)
        elif tokenizer is not None:
            data = TokenData(run.path / rundir.DATA, tokenizer)
            task = language_task(data, tokenizer, contract(compiled.model).context)
        else:
            task = Classification(image=compiled.model.inputs[0].type.rank == 4, seed=config.seed)
        task.device = device
        module = session.module.to(device)  # built and initialised on the CPU: the same weights on any device
        stepped = _parallel(module, config, device) if world > 1 else module
        # fused: one kernel for the whole update instead of a Python loop over tensors (~2 ms of a 58 ms step of
        # the Shakespeare model on 2 cores; bench/shakespeare.py)
        optimizer = torch.optim.AdamW(_decay_groups(module, compiled.model, config.weight_decay), lr=config.lr,
                                      betas=(config.beta1, config.beta2), fused=device.type in ("cpu", "cuda"))
        generator = torch.Generator().manual_seed(config.seed)
        return cls(session, run, task, module, stepped, optimizer, generator, console, rank, world,
                   autocast(config.dtype, device), device, grad_scaler(config.dtype, device))

    def resume(self) -> None:
        """A resumed run: weights, optimizer, every generator and the trainer's state from its last checkpoint, so
        the steps that follow are bit for bit those of a run never stopped."""
        if not self.session.resuming:
            return
        state = checkpoint.load(self.run.complete("last"), self.module, self.optimizer, self.generator)
        self.completed = self.saved_step = state["step"]
        self.best_step, self.history = state["best_step"], state["history"]
        self.best_val = math.inf if state["best_val"] is None else state["best_val"]
        self.overfit_step = state.get("overfitting_step")
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.say(f"[bold]resumed[/bold] {escape(printable(str(self.session.out)))} at step {self.completed}")

    def state(self, step: int) -> dict:
        """trainer.json of a checkpoint at `step`: how far the run got, and what it is (settings, spec, data)."""
        record = self.session.record
        return {"step": step, "best_val": self.best_val, "best_step": self.best_step, "history": self.history,
                "overfitting_step": self.overfit_step, "config": asdict(self.config),
                "spec_hash": rundir.sha256(json.dumps(record["sources"]).encode()),
                "overrides": record["overrides"], "preset": record["preset"],
                "tokenizer": self.session.tokenizer.to_json() if self.session.tokenizer else None,
                **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {})}

    # ---- the steps ----

    def fit(self, stop: _StopRequest, progress: bool, tensorboard: bool = False) -> float:
        """Steps from the one reached to config.steps, evaluating and saving every eval_every steps and after the
        last; stops early when the validation loss stops improving (patience), and at SIGINT/SIGTERM after the
        step under way (TrainingInterrupted). Returns its wall time in seconds."""
        config = self.config
        if self.rank == 0:
            report.print_settings(self.console, self.session, self.world)
        self.metrics = self.run.append(rundir.METRICS) if self.rank == 0 else None
        if tensorboard and self.rank == 0:
            self.events = report.EventLog(self.run.path / rundir.TENSORBOARD, self.completed)
        started = time.perf_counter()
        bar = report.progress_bar(self.console, progress and self.rank == 0, self.completed, config.steps)
        self.module.train()
        try:
            with _out_of_memory(config):
                for step in range(self.completed, config.steps):
                    if stop.requested(self.world):
                        self.interrupt(stop.signum)
                    record = self.step(step)
                    if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                        improved = self.evaluate(step + 1, record)
                        self.save(step + 1, record, improved)
                        if self.out_of_patience(step + 1):
                            self.completed = step + 1
                            break
                    elif self.rank == 0:
                        self.write_metrics(record)
                    if bar is not None:
                        self._show_progress(bar, step + 1, record["train_loss"])
                    elif self.log_every and (step + 1) % self.log_every == 0 and step + 1 != config.steps:
                        self._say_status(step + 1, record["train_loss"])
                    self.completed = step + 1
        finally:
            if bar is not None:
                bar.stop()
            if self.metrics:
                self.metrics.close()
            if self.events:
                self.events.close()
        return time.perf_counter() - started

    def step(self, step: int) -> dict:
        """One optimizer step (config.accum micro-batches of gradient); returns its metrics.jsonl row. A loss that
        is not finite stops training before the update, so the last checkpoint stays a good one."""
        config = self.config
        started = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        total = 0.0
        for _ in range(config.accum):
            x, y = self.task.batch("train", config.batch // config.accum, self.generator, self.rank, self.world)
            with self.autocast:
                loss = self.task.loss(self.stepped, x, y)
                aux = self.module.aux_loss()
                objective = loss + config.aux_loss * aux if isinstance(aux, torch.Tensor) else loss
            scaled = objective / config.accum
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.item() / config.accum
        train_loss = _all_mean(total, self.world, self.device)
        if not math.isfinite(train_loss):
            raise SpecError(f"training diverged at step {step + 1}: the loss is {train_loss}",
                            Span(str(self.session.out), 0, 0),
                            hint=f"lower the learning rate (--lr {config.lr:g}) or raise warmup; "
                            + (f"the last checkpoint (step {self.saved_step}) is kept" if self.saved_step else
                               "no checkpoint was written"))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), config.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips a step whose gradients overflowed, and adjusts the scale
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_times.append(time.perf_counter() - started)
        return {"step": step + 1, "train_loss": train_loss, "lr": config.lr_at(step), "step_s": self.step_times[-1]}

    def _speed(self) -> tuple[float, float]:
        """Tokens a second and seconds a step, over the last 20 steps."""
        recent = self.step_times[-20:]
        return self.task.tokens(self.config.batch) * len(recent) / sum(recent), sum(recent) / len(recent)

    def _show_progress(self, bar, step: int, train_loss: float) -> None:
        speed, _ = self._speed()
        bar.update(bar.task_ids[0], completed=step, description=f"loss {train_loss:.4f}  {speed:,.0f} tok/s")

    def _say_status(self, step: int, train_loss: float) -> None:
        speed, per_step = self._speed()
        self.say(report.status_line(step, self.config.steps, train_loss, speed, per_step * (self.config.steps - step)),
                 markup=False, highlight=False)

    def write_metrics(self, record: dict) -> None:
        """A step's metrics.jsonl row (rank 0), and its TensorBoard scalars with --tensorboard."""
        _write_metrics(self.metrics, record)
        if self.events:
            self.events.write(record)

    # ---- evaluate and save ----

    def evaluate(self, step: int, record: dict) -> bool:
        """The validation and training metrics after `step` (fixed batches: every evaluation sees the same), into
        `record` and the history, and printed; says whether the validation loss is the best yet."""
        config = self.config
        self.module.eval()
        with torch.no_grad(), self.autocast:
            val = self.task.metrics(self.module, "val", config.eval_batches, config.batch, config.seed + 1)
            trn = self.task.metrics(self.module, "train", config.eval_batches, config.batch, config.seed + 2)
        self.module.train()
        record.update({"val_loss": val["loss"], "train_eval_loss": trn["loss"]})
        if "accuracy" in val:
            record["val_accuracy"] = val["accuracy"]
        self.history.append({"step": step, "train": trn["loss"], "val": val["loss"]})
        improved = val["loss"] < self.best_val
        if improved:
            self.best_val, self.best_step = val["loss"], step
        self._watch_overfitting(step)
        self.say(f"step {step:>6}  train {trn['loss']:.4f}  val {val['loss']:.4f}"
                 + (f"  acc {val['accuracy']:.3f}" if "accuracy" in val else "")
                 + ("  [green]best[/green]" if improved else ""))
        return improved

    def _watch_overfitting(self, step: int) -> None:
        """Warn once, at the first evaluation whose validation loss rose while the training loss fell."""
        if len(self.history) < 2 or self.overfit_step is not None:
            return
        before, now = self.history[-2], self.history[-1]
        if now["val"] > before["val"] and now["train"] < before["train"]:
            self.overfit_step = step
            self.say(f"[yellow]warning: overfitting? at step {step} validation loss rose "
                     f"({before['val']:.4f} -> {now['val']:.4f}) while training loss fell "
                     f"({before['train']:.4f} -> {now['train']:.4f})[/yellow]")

    def save(self, step: int, record: dict, improved: bool) -> None:
        """After an evaluation: its metrics line, then `best` (when it improved) and `last`, on rank 0; every rank
        takes part (FSDP gathers the shards) and waits for the others."""
        captured = checkpoint.capture(self.module, self.optimizer)  # every rank: FSDP gathers the shards
        if self.rank == 0:
            self.write_metrics(record)
            self.metrics.flush()
            if self.events:
                self.events.flush()
            rows = report.metrics_rows(self.run)  # the plot, redrawn with each evaluation
            self.run.write_bytes(rundir.PLOT, report.plot_svg(rows, self.session.compiled.name).encode())
            if improved:  # written once: `last` is the same checkpoint, its files linked (checkpoint.duplicate)
                checkpoint.save(self.run, "best", self.module, self.optimizer, self.generator, self.state(step),
                                captured)
                checkpoint.duplicate(self.run, "best", "last")
            else:
                checkpoint.save(self.run, "last", self.module, self.optimizer, self.generator, self.state(step),
                                captured)
        self.saved_step = step
        _barrier(self.world)

    def out_of_patience(self, step: int) -> bool:
        """No better validation loss for config.patience evaluations (0: never stop early)."""
        config = self.config
        if config.patience and self.best_step is not None and \
                (step - self.best_step) >= config.patience * config.eval_every:
            self.stopped_early = True
            self.say(f"stopping early: no improvement for {config.patience} evaluations")
        return self.stopped_early

    def interrupt(self, signum: int) -> None:
        """SIGINT or SIGTERM: the last completed step saved as `last` (unless it is saved already), then
        TrainingInterrupted."""
        if self.completed > self.saved_step:
            captured = checkpoint.capture(self.module, self.optimizer)
            if self.rank == 0:
                self.metrics.flush()
                checkpoint.save(self.run, "last", self.module, self.optimizer, self.generator,
                                self.state(self.completed), captured)
            _barrier(self.world)  # no rank exits before rank 0 saved: torchrun stops the rest when one exits
        self.say(f"\ninterrupted after step {self.completed}; continue with --resume")
        raise TrainingInterrupted(signum)

    # ---- summarize ----

    def summarize(self, wall: float) -> dict:
        """summary.json and the summary table (rank 0; loss.svg is drawn at each evaluation); returns the summary,
        infinities as None."""
        compiled, times = self.session.compiled, self.step_times
        summary = {
            "model": compiled.name, "params": compiled.analysis.total, "steps": self.completed,
            "best_val_loss": self.best_val, "best_step": self.best_step,
            "final_train_loss": self.history[-1]["train"] if self.history else None,
            "tokens_per_s": self.task.tokens(self.config.batch) * len(times) / max(sum(times), 1e-9),
            "wall_s": wall, "stopped_early": self.stopped_early, "overfitting_step": self.overfit_step,
            "out": str(self.session.out), "world_size": self.world,
        }
        if self.rank == 0:
            self.run.write_json("summary.json", summary)
            report.print_summary(self.console, summary)
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


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def _parallel(module, config: TrainConfig, device: torch.device):
    if config.fsdp:
        from torch.distributed.fsdp import fully_shard

        from ..backends.torch_backend import block_modules
        for block in block_modules(module):  # one unit a block: its weights gathered only while it runs
            fully_shard(block)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def _write_metrics(f, record: dict) -> None:
    # Buffered: flushed with each evaluation's checkpoint (a resume drops lines past the checkpoint anyway).
    f.write(json.dumps(rundir.finite(record)) + "\n")
