"""`specc train`: a spec compiled to torch and trained by backpropagation, with evaluation on unseen data.

Settings come from, in order of precedence: command-line flags, the spec's `train { ... }` section, then the
defaults of TrainConfig (nanoGPT's shakespeare_char values where they apply). Language models train on text
(a file, or the built-in corpus); classifiers (a float input, 10 outputs) on scikit-learn's digits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import ir, load, loads, to_torch
from ..errors import Span, SpecError
from . import checkpoint
from .config import RESUME_INVARIANTS, TrainConfig, resolve_config
from .data import IGNORE, TokenData, Tokenizer, builtin_text, digits_dataset, mask_tokens

# ---- tasks: what a batch is, what the loss is ----

class LanguageModelling:
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


def context_length(model: ir.Model) -> int:
    """The sequence length a language model trains and samples at: its fixed length, or the bound of seq <= ctx."""
    seq = model.inputs[0].type.shape[-1]
    if isinstance(seq, int):
        return seq
    if seq.bound is None:
        raise SpecError("training needs a bounded sequence: declare the input as int[batch, seq <= ctx]",
                        model.inputs[0].span)
    return seq.bound


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


@dataclass
class Run:
    """Everything a run needs, resolved from the spec, the flags and the data."""

    spec_path: str
    source: str
    preset: str | None
    overrides: dict
    config: TrainConfig
    out: Path

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()


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


def train(spec_path: str, preset: str | None = None, overrides: dict | None = None, flags: dict | None = None,
          resume: bool = False, console=None, progress: bool = True) -> dict:
    """Train a spec; returns the summary (also written to <out>/summary.json)."""
    import sys

    from rich.console import Console
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    rank, world = _distributed()
    say = console.print if rank == 0 else (lambda *a, **k: None)
    overrides = dict(overrides or {})
    source = Path(spec_path).read_text(encoding="utf-8")
    probe = load(spec_path, preset=preset, overrides=overrides)
    config = resolve_config(probe.model.train, dict(flags or {}))
    out = Path(config.out or f"runs/{probe.model.name}")
    run = Run(str(spec_path), source, preset, overrides, config, out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecError(f"cannot create the run directory '{out}': {e.strerror}", Span("--out", 0, 0)) from None

    # ---- data, and the vocabulary it implies ----
    if ir.is_language_model(probe.model):
        # A model that attends to later positions would read the next token: it learns masked tokens instead.
        masked = not ir.is_causal(probe.model)
        text = _read_text(config.data) if config.data else builtin_text()
        tokenizer = Tokenizer.fit(config.tokenizer, text, mask=masked)
        if "vocab" in probe.model.hyperparameters and "vocab" not in overrides:
            overrides["vocab"] = tokenizer.vocab_size  # the data decides the vocabulary, as nanoGPT's meta.pkl
        compiled = load(spec_path, preset=preset, overrides=overrides)
        vocab = compiled.model.outputs[0][1].shape[-1]
        if vocab < tokenizer.vocab_size:
            needs = f"{tokenizer.data_size} distinct tokens" + (" and [MASK]" if masked else "")
            raise SpecError(f"the data has {needs} but the model's vocabulary is {vocab}",
                            compiled.model.inputs[0].span, hint="--set vocab=... or drop the override")
        if rank == 0:
            TokenData.prepare(text, tokenizer, out / "data") if not (resume and (out / "data").exists()) else None
        _barrier(world)
        task = language_task(TokenData(out / "data"), tokenizer, context_length(compiled.model))
    else:
        compiled = probe
        tokenizer = None
        task = Classification(image=compiled.model.inputs[0].type.rank == 4, seed=config.seed)
    run.overrides = overrides
    if config.batch % world:
        raise SpecError(f"batch {config.batch} is not divisible by {world} processes", Span("train", 0, 0))

    # ---- model, optimizer, resume ----
    torch.manual_seed(config.seed)
    module = to_torch(compiled)
    model_for_step = module
    if world > 1:
        model_for_step = _parallel(module, config)
    # fused: one kernel for the whole update instead of a Python loop over tensors (~2 ms of a 58 ms step of the
    # Shakespeare model on 2 cores; bench/shakespeare.py)
    optimizer = torch.optim.AdamW(_decay_groups(module, compiled.model, config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2), fused=True)
    generator = torch.Generator().manual_seed(config.seed)
    start, best_val, best_step, history = 0, math.inf, None, []
    last = checkpoint.resolve(out / "last")
    if resume:
        if last is None:
            raise SpecError(f"nothing to resume in {out}: no complete checkpoint", Span(str(out), 0, 0))
        state = checkpoint.read_trainer_state(last)
        _check_resumable(state, run)
        state = checkpoint.load(last, module, optimizer, generator)
        start, best_val, best_step, history = state["step"], state["best_val"], state["best_step"], state["history"]
        _truncate_metrics(out / "metrics.jsonl", start)
        say(f"[bold]resumed[/bold] {out} at step {start}")
    elif last is not None:
        raise SpecError(f"{out} already holds a run (checkpoint at step {checkpoint.read_trainer_state(last)['step']})",
                        Span(str(out), 0, 0), hint="pass --resume to continue it, or --out for a new run")
    out.mkdir(parents=True, exist_ok=True)

    if rank == 0:
        _print_settings(console, compiled, config, run, tokenizer, world)
        (out / "spec.spec").write_text(source, encoding="utf-8")
        (out / "run.json").write_text(json.dumps(_run_record(run, tokenizer, world), indent=1))

    autocast = torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16) \
        if config.dtype == "bf16" else contextlib.nullcontext()
    metrics_file = open(out / "metrics.jsonl", "a", encoding="utf-8") if rank == 0 else None
    micro = config.batch // config.accum if config.batch % config.accum == 0 else None
    if micro is None:
        raise SpecError(f"batch {config.batch} is not divisible by accum {config.accum}", Span("train", 0, 0))
    tokens_per_step = task.tokens(config.batch)
    stopped_early, overfit_step, started = False, None, time.perf_counter()
    completed = saved_step = start

    def trainer_state(step: int) -> dict:
        return {"step": step, "best_val": best_val, "best_step": best_step, "history": history,
                "config": asdict(config), "spec_hash": run.spec_hash, "overrides": run.overrides,
                "preset": run.preset, "tokenizer": tokenizer.to_json() if tokenizer else None}

    step_times: list[float] = []
    bar = _progress(console, progress and rank == 0, start, config.steps)
    module.train()
    try:
        for step in range(start, config.steps):
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
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_loss = _all_mean(total, world)
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
                        checkpoint.save(out / "best", module, optimizer, generator, trainer_state(step + 1),
                                        captured)
                    checkpoint.save(out / "last", module, optimizer, generator, trainer_state(step + 1), captured)
                saved_step = step + 1
                _barrier(world)
                if config.patience and best_step is not None and \
                        (step + 1 - best_step) >= config.patience * config.eval_every:
                    stopped_early = True
                    say(f"stopping early: no improvement for {config.patience} evaluations")
                    break
            elif rank == 0:
                _write_metrics(metrics_file, record)
            if bar is not None:
                recent = step_times[-20:]
                speed = tokens_per_step * len(recent) / sum(recent)
                bar.update(bar.task_ids[0], completed=step + 1,
                           description=f"loss {train_loss:.4f}  {speed:,.0f} tok/s")
            completed = step + 1
    except KeyboardInterrupt:
        # Nothing lost: the steps done so far become the last checkpoint; --resume continues from there.
        if rank == 0 and completed > saved_step:
            checkpoint.save(out / "last", module, optimizer, generator, trainer_state(completed))
        say(f"\ninterrupted at step {completed}; continue with --resume")
        raise
    finally:
        if bar is not None:
            bar.stop()
        if metrics_file:
            metrics_file.close()
    wall = time.perf_counter() - started
    summary = {
        "model": compiled.name, "params": compiled.analysis.total, "steps": len(step_times) + start,
        "best_val_loss": best_val, "best_step": best_step, "final_train_loss": history[-1]["train"] if history
        else None, "tokens_per_s": tokens_per_step * len(step_times) / max(sum(step_times), 1e-9),
        "wall_s": wall, "stopped_early": stopped_early, "overfitting_step": overfit_step, "out": str(out),
        "world_size": world,
    }
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        _plot(out / "metrics.jsonl", out / "loss.png", compiled.name)
        _print_summary(console, summary)
    return summary


def _read_text(path: str) -> str:
    where = Span("--data", 0, 0)
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"no such file: '{path}'", where) from None
    except UnicodeDecodeError as e:
        raise SpecError(f"'{path}' is not UTF-8 text (byte {e.start}): specc trains on text files", where) from None
    except OSError as e:
        raise SpecError(f"cannot read '{path}': {e.strerror}", where) from None


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


def _check_resumable(state: dict, run: Run) -> None:
    where = Span(str(run.out), 0, 0)
    if state["spec_hash"] != run.spec_hash:
        raise SpecError(f"{run.out} was trained from a different spec (its source changed)", where,
                        hint="resume with the spec the run started from (saved as spec.spec in the run)")
    saved = state["config"]
    changed = [f"{k}: {saved.get(k)!r} -> {getattr(run.config, k)!r}" for k in RESUME_INVARIANTS
               if saved.get(k) != getattr(run.config, k)]
    if state.get("preset") != run.preset:
        changed.append(f"preset: {state.get('preset')!r} -> {run.preset!r}")
    user = {k: v for k, v in run.overrides.items() if k != "vocab"}
    saved_user = {k: v for k, v in (state.get("overrides") or {}).items() if k != "vocab"}
    if user != saved_user:
        changed.append(f"--set: {saved_user} -> {user}")
    if changed:
        raise SpecError("cannot resume with different settings: " + "; ".join(changed), where)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the checkpoint's step, so a resumed run's log reads as one run."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _write_metrics(f, record: dict) -> None:
    # Buffered: flushed with each evaluation's checkpoint (a resume drops lines past the checkpoint anyway).
    f.write(json.dumps(record) + "\n")


def _run_record(run: Run, tokenizer, world: int) -> dict:
    return {"spec": run.spec_path, "spec_hash": run.spec_hash, "preset": run.preset, "overrides": run.overrides,
            "config": asdict(run.config), "tokenizer": tokenizer.to_json() if tokenizer else None,
            "world_size": world}


def _progress(console, enabled: bool, start: int, total: int):
    if not enabled or not console.is_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
                   TimeRemainingColumn(), console=console, transient=True)
    bar.add_task("", total=total, completed=start)
    bar.start()
    return bar


def _print_settings(console, compiled, config: TrainConfig, run: Run, tokenizer, world: int) -> None:
    from rich.table import Table
    table = Table(title=f"training {compiled.name} ({compiled.analysis.total:,} parameters)", show_header=False,
                  title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in asdict(config).items():
        table.add_row(key, str(value))
    if run.overrides:
        table.add_row("--set", ", ".join(f"{k}={v}" for k, v in run.overrides.items()))
    if tokenizer:
        table.add_row("vocabulary", f"{tokenizer.vocab_size} ({tokenizer.kind}" + (" + [MASK]" if tokenizer.mask
                                                                                   else "") + ")")
        table.add_row("objective", "masked tokens (15%: 80% [MASK], 10% random, 10% kept; BERT)" if tokenizer.mask
                      else "next token")
    table.add_row("processes", str(world))
    table.add_row("run directory", str(run.out))
    console.print(table)


def _print_summary(console, s: dict) -> None:
    from rich.table import Table
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
    table.add_row("checkpoints", f"{s['out']}/best (step {s['best_step']}), {s['out']}/last")
    console.print(table)


def _plot(metrics: Path, png: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
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
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png)


def loads_for_run(run_dir: Path):
    """The compiled spec of a run directory, as it was trained (its saved source, preset and overrides)."""
    record = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    source = (Path(run_dir) / "spec.spec").read_text(encoding="utf-8")
    return loads(source, preset=record["preset"], overrides=record["overrides"], name=record["spec"]), record
