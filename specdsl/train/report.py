"""What a training run shows and leaves for people: the settings table, the progress bar, the summary table and
loss.svg (the metrics themselves are metrics.jsonl, written by the loop)."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict
from xml.sax.saxutils import escape as xml_escape

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


def status_line(step: int, total: int, loss: float, tokens_per_s: float, eta_s: float) -> str:
    """What a run prints every --log-every steps where no progress bar can show (a log file, a scheduler's
    output): step, loss, throughput and time left."""
    minutes, seconds = divmod(int(round(eta_s)), 60)
    hours, minutes = divmod(minutes, 60)
    eta = f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
    return f"step {step:>6}/{total}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  eta {eta}"


def default_log_every(eval_every: int) -> int:
    """Five status lines between evaluations."""
    return max(1, eval_every // 5)


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
    lora = session.record.get("lora")
    if lora:  # what a LoRA run trains, as peft's print_trainable_parameters says it
        analysis = compiled.analysis
        table.add_row("lora", Text(printable(
            f"rank {lora['rank']}, alpha {lora['alpha']:g}, dropout {lora['dropout']:g}, {lora['adapters']} matrices "
            f"({', '.join(lora['targets'])}): trainable params: {analysis.trainable:,} || all params: "
            f"{analysis.total:,} || trainable%: {100 * analysis.trainable / analysis.total:.4f}")))
    if session.record["overrides"]:
        table.add_row("--set", Text(printable(", ".join(f"{k}={v}" for k, v in session.record["overrides"].items()))))
    if tokenizer:
        table.add_row("vocabulary", f"{tokenizer.vocab_size} ({tokenizer.kind}" + (" + [MASK]" if tokenizer.mask
                                                                                   else "")
                      + (" + [BOS], [EOS]" if tokenizer.bos_eos else "") + ")")
        table.add_row("objective", "masked tokens (15%: 80% [MASK], 10% random, 10% kept; BERT)" if tokenizer.mask
                      else "target tokens given the source (teacher forcing): reverse a string of letters"
                      if session.pairs is not None else "next token")
    split = session.record.get("split")
    if split:
        table.add_row("split", f"{split['train']:,} tokens train, {split['val']:,} validate ({split['by']})")
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


# The loss plot is SVG written here rather than a matplotlib PNG: matplotlib cost ~0.9 s and ~29 MiB a run (issue 13,
# bench/shakespeare.py), most of our fixed cost over nanoGPT's, and this plot is redrawn at every evaluation. Three
# polylines on linear axes need no plotting library; any browser, editor or notebook shows the file.
PLOT_W, PLOT_H, MARGIN = 700, 400, (56, 16, 44, 40)  # width, height; left, right, top, bottom margins (px)
SERIES = (("train_loss", "train (step)", "#8fb3d9", "1", 0.8), ("train_eval_loss", "train (eval)", "#1f77b4", "2", 1),
          ("val_loss", "validation", "#ff7f0e", "2", 1))  # key, label, colour, width, opacity


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values spanning [low, high] (1, 2 or 5 times a power of ten apart)."""
    span = (high - low) or abs(high) or 1.0
    raw = span / count
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def plot_svg(rows: list[dict], title: str) -> str:
    """loss.svg: the loss of every step, and the training and validation losses of every evaluation."""
    left, right, top, bottom = MARGIN
    points = {key: [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))
                    and math.isfinite(r[key])] for key, *_ in SERIES}
    every = [p for series in points.values() for p in series] or [(0, 0.0), (1, 1.0)]
    x0, x1 = min(s for s, _ in every), max(s for s, _ in every)
    y0, y1 = min(v for _, v in every), max(v for _, v in every)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    sx = lambda s: left + (s - x0) / (x1 - x0) * (PLOT_W - left - right)  # noqa: E731
    sy = lambda v: PLOT_H - bottom - (v - y0) / (y1 - y0) * (PLOT_H - top - bottom)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{PLOT_W}" height="{PLOT_H}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{PLOT_W / 2}" y="20" text-anchor="middle" font-size="14">{xml_escape(printable(title))}</text>']
    for v in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{PLOT_W - right}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    for s in _ticks(x0, x1):
        out.append(f'<text x="{sx(s):.1f}" y="{PLOT_H - bottom + 16}" text-anchor="middle">{s:g}</text>')
    out.append(f'<text x="{PLOT_W / 2}" y="{PLOT_H - 6}" text-anchor="middle">step</text>'
               f'<text transform="translate(14 {PLOT_H / 2}) rotate(-90)" text-anchor="middle">cross-entropy loss'
               '</text>')
    for n, (key, label, colour, width, opacity) in enumerate(SERIES):
        path = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in points[key])
        if path:
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="{width}" '
                       f'stroke-opacity="{opacity}"/>')
        y = top + 14 * n  # the legend, top right
        out.append(f'<line x1="{PLOT_W - 150}" x2="{PLOT_W - 130}" y1="{y}" y2="{y}" stroke="{colour}" '
                   f'stroke-width="2"/><text x="{PLOT_W - 125}" y="{y + 4}">{label}</text>')
    return "\n".join(out) + "\n</svg>\n"



def check_tensorboard() -> None:
    """--tensorboard needs the tensorboard package (torch's SummaryWriter writes through it): said before the run
    directory is written."""
    import importlib.util
    if importlib.util.find_spec("tensorboard") is None:
        from ..errors import Span, SpecError
        raise SpecError("--tensorboard needs the tensorboard package, which is not installed",
                        Span("--tensorboard", 0, 0), hint="pip install tensorboard (or specdsl[tensorboard])")


class EventLog:
    """TensorBoard scalars beside metrics.jsonl (torch.utils.tensorboard's SummaryWriter): the loss and learning
    rate of every step, the evaluation losses. A resumed run purges the events past its checkpoint, as its
    metrics.jsonl drops the lines past it, so the curves show each step once."""

    def __init__(self, folder, resumed_at: int | None):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=resumed_at + 1 if resumed_at else None)

    def write(self, record: dict) -> None:
        step = record["step"]
        for key, tag in (("train_loss", "loss/train_step"), ("lr", "lr"), ("val_loss", "loss/val"),
                         ("train_eval_loss", "loss/train_eval"), ("val_accuracy", "accuracy/val")):
            if key in record and record[key] is not None and math.isfinite(record[key]):
                self.writer.add_scalar(tag, record[key], step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
