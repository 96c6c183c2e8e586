"""Human-readable report of an Analysis: the module tree with counts, then totals, FLOPs, memory and sizing."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .analysis import FLOPS_CONVENTION, PARAMS_CONVENTION, Analysis, ModuleStats
from .text import printable


def human(n: int | float, unit: str = "") -> str:
    """124439808 -> '124.4M'; beyond quadrillions, scientific notation (exact ints never overflow a float)."""
    if abs(n) >= 10**15:
        return f"{_sci(n)}{unit}"
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.1f}{suffix}{unit}"
    return f"{n:g}{unit}"


def _sci(n: int | float) -> str:
    """Scientific notation for any int, however large (float(n) overflows past 1e308)."""
    n = int(n)
    digits = str(abs(n))
    sign = "-" if n < 0 else ""
    return f"{sign}{digits[0]}.{digits[1:3].ljust(2, '0')}e+{len(digits) - 1}"


def human_bytes(n: int | float) -> str:
    if n >= 2**50:
        return f"{_sci(n)} B"
    for size, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= size:
            return f"{n / size:.1f} {suffix}"
    return f"{n:.0f} B"


# Rows the report shows: rich takes about 1 ms a row, and a spec written out by hand may have 20,000 layers
# (elaborate.MAX_LAYERS); past this many, one row says how many more there are and --json lists them all.
MAX_ROWS = 500


def _rows(table: Table, node: ModuleStats, total: int, depth: int, in_repeat: bool = False) -> int:
    """Add the rows of `node`'s children; returns how many were left out (past MAX_ROWS)."""
    left_out = 0
    for child in node.children:
        if child.params == 0 and not child.children and not child.tied:
            continue
        if table.row_count >= MAX_ROWS:
            left_out += 1 + _count(child)
            continue
        indent = "  " * depth + ("└ " if depth else "")
        # Inside a repeat the rows are one iteration's: a share of the whole would mislead.
        share = f"{100 * child.params / total:.1f}%" if total and not in_repeat else ""
        params = f"{child.params:,}"
        if child.kind == "repeat" and not child.shared and child.count > 1:
            params += f"\n[dim]{child.params_each:,} each[/dim]"
        table.add_row(Text(indent + printable(child.name)), Text(printable(child.description)), params, share)
        if child.children:
            left_out += _rows(table, child, total, depth + 1, in_repeat or child.kind == "repeat")
    return left_out


def _count(node: ModuleStats) -> int:
    return sum(1 + _count(c) for c in node.children if c.params or c.children or c.tied)


def _lora_rows(summary: Table, a: Analysis) -> None:
    """What LoRA adapts, and the counts as peft's print_trainable_parameters says them."""
    lora = a.lora
    summary.add_row("LoRA", Text(printable(f"rank {lora.rank}, alpha {lora.alpha:g} (scale {lora.scale:g}), dropout "
                                           f"{lora.dropout:g}: {len(lora.adapters):,} matrices "
                                           f"({', '.join(lora.targets)})")))
    summary.add_row("", f"trainable params: {a.trainable:,} || all params: {a.total:,} || "
                        f"trainable%: {100 * a.trainable / a.total:.4f}")
    summary.add_row("", Text("adapters A [rank, in] and B [out, rank] trained, the base model frozen; FLOPs are the "
                             "base model's", style="dim"))


def report(a: Analysis, source: str, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 110)
    # Names, presets and paths come from the spec and the command line: plain text (Text), never markup.
    where = f"({source}{', preset ' + a.preset if a.preset else ''})"
    title = Text.assemble(printable(f"{a.model}  "), (printable(where), "dim"))
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("module")
    table.add_column("layer")
    table.add_column("params", justify="right")
    table.add_column("share", justify="right")
    left_out = _rows(table, a.tree, a.tree.params, 0)  # shares of the model (LoRA's adapters are said below)
    if left_out:
        table.add_row(Text(f"... {left_out:,} more", style="dim"), Text("specc compile --json lists every module",
                                                                         style="dim"), "", "")
    console.print(table)

    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    frozen = f"  frozen {a.frozen:,}" if a.frozen else ""
    summary.add_row("params", f"total {a.total:,} ({human(a.total)})  trainable {a.trainable:,}{frozen}  "
                              f"embedding {a.embedding:,}  non-embedding {a.non_embedding:,}")
    if a.active != a.total:
        summary.add_row("", f"active per token {a.active:,} ({human(a.active)}, "
                            f"{100 * (a.active * 1000 // a.total) / 1000:.1f}% of total)")
    summary.add_row("", f"[dim]{PARAMS_CONVENTION}[/dim]")
    if a.lora:
        _lora_rows(summary, a)
    ctx = f" at context {a.context:,}" if a.context else ""
    summary.add_row(f"FLOPs/{a.unit}", f"forward {human(a.forward_flops)}  train {human(a.train_flops)}{ctx}")
    summary.add_row("", f"[dim]{FLOPS_CONVENTION}[/dim]")
    m = a.memory()
    w, t, kv = m["weights"], m["training_adamw"], m["kv_cache_per_token"]
    summary.add_row("memory", f"weights fp32 {human_bytes(w['fp32'])}  bf16 {human_bytes(w['bf16'])}  "
                              f"int8 {human_bytes(w['int8'])}")
    summary.add_row("", f"AdamW training state fp32 {human_bytes(t['fp32'])}  bf16 mixed "
                        f"{human_bytes(t['bf16_mixed'])}  [dim](activations not included)[/dim]")
    mkv = m.get("kv_cache_per_memory_token")
    if kv["bf16"] or mkv:
        seq = m.get("kv_cache_per_sequence")
        per_seq = f"  ({human_bytes(seq['bf16'])} per sequence of {seq['context']:,})" if seq else ""
        cross = f" + cross-attention {human_bytes(mkv['bf16'])} per memory token" if mkv else ""
        summary.add_row("", f"KV cache per token bf16 {human_bytes(kv['bf16'])}{cross}{per_seq}")
    s = a.sizing()
    summary.add_row("sizing", f"compute-optimal {human(s['compute_optimal_tokens'])} tokens (20 per parameter), "
                              f"training compute {_sci(s['training_flops'])} FLOPs (6 N D)")
    console.print()
    console.print(summary)
