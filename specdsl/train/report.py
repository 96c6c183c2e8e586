"""What a training run shows and leaves for people: the settings table, the progress bar, the summary table and
loss.png (the metrics themselves are metrics.jsonl, written by the loop)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

from ..text import printable
from . import rundir


def metrics_rows(run: rundir.RunDir) -> list[dict]:
    """metrics.jsonl's rows, for the plot (a line a crash cut short is skipped)."""
    rows = []
    for line in run.read_bytes(rundir.METRICS).decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def progress_bar(console, enabled: bool, start: int, total: int):
    """A transient bar of steps on a terminal (None elsewhere: logs get the evaluation lines only)."""
    if not enabled or not console.is_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
                   TimeRemainingColumn(), console=console, transient=True)
    bar.add_task("", total=total, completed=start)
    bar.start()
    return bar


def print_settings(console, session, world: int) -> None:
    """The run's model, settings, --set values, vocabulary and objective, before the first step."""
    from rich.table import Table
    from rich.text import Text
    compiled, config, tokenizer = session.compiled, session.config, session.tokenizer
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
                                                                                   else "")
                      + (" + [BOS], [EOS]" if tokenizer.bos_eos else "") + ")")
        table.add_row("objective", "masked tokens (15%: 80% [MASK], 10% random, 10% kept; BERT)" if tokenizer.mask
                      else "target tokens given the source (teacher forcing): reverse a string of letters"
                      if session.pairs is not None else "next token")
    table.add_row("processes", str(world))
    table.add_row("run directory", Text(printable(str(session.out))))
    console.print(table)


def print_summary(console, s: dict) -> None:
    """The summary (summary.json's figures) as a table, after the last step."""
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


def plot(rows: list[dict], png: Path, title: str) -> None:
    """loss.png: the loss of every step, and the training and validation losses of every evaluation."""
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
