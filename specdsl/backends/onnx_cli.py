"""The `specc export` and `specc inspect` commands: argument handling and reports around onnx_export."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rich.console import Console

from .. import load
from ..errors import Span, SpecError


def export_command(spec: str, output: str, preset, overrides: dict, checkpoint: str | None,
                   quantize: str | None) -> dict:
    console = Console(soft_wrap=True)  # paths and figures stay on their lines
    weights, tokenizer, val_folder, val_task = None, None, None, None
    if checkpoint:
        from ..train import checkpoint as ckpt
        run = Path(checkpoint)
        where = Span(str(run), 0, 0)
        if not (run / "run.json").is_file():
            raise SpecError(f"'{run}' is not a run directory (no run.json)", where,
                            hint="pass the --out folder of `specc train`")
        weights = ckpt.resolve(run / "best") or ckpt.resolve(run / "last")
        if weights is None:
            raise SpecError(f"no complete checkpoint in '{run}'", where)
        record = json.loads((run / "run.json").read_text(encoding="utf-8"))
        source = Path(spec).read_text(encoding="utf-8") if Path(spec).is_file() else ""
        if source and hashlib.sha256(source.encode()).hexdigest() != record["spec_hash"]:
            raise SpecError(f"'{run}' was trained from another spec than '{spec}'", where,
                            hint=f"its spec is saved as {run / 'spec.spec'}")
        overrides = {**record.get("overrides", {}), **overrides}
        preset = preset or record.get("preset")
        tokenizer = record.get("tokenizer")
        if (run / "data" / "val.bin").is_file():
            val_folder = run / "data"
    compiled = load(spec, preset=preset, overrides=overrides)
    if val_folder is not None and tokenizer:  # the run's objective on its validation split, to weigh --quantize
        from ..tokenizer import Tokenizer
        from ..train.data import TokenData
        from ..train.loop import context_length, language_task
        val_task = language_task(TokenData(val_folder), Tokenizer.from_json(tokenizer), context_length(compiled.model))
    if weights is None:
        console.print("[yellow]warning: no --checkpoint: exporting random weights[/yellow]")
    from .onnx_export import export
    with console.status("exporting and checking with onnxruntime"):
        report = export(compiled, output, weights_from=weights, tokenizer=tokenizer, quantize=quantize,
                        val_task=val_task)
    _print_report(console, report)
    return report


def _print_report(console: Console, r: dict) -> None:
    console.print(f"wrote [bold]{r['file']}[/bold]: {r['bytes']:,} bytes for {r['params']:,} parameters "
                  f"({r['bytes'] / (4 * r['params']):.3f} x 4 bytes each)")
    for c in r["checks"]:
        seq = f", seq {c['seq']}" if c["seq"] else ""
        console.print(f"  onnxruntime vs PyTorch, batch {c['batch']}{seq}: max |diff| {c['max_abs_diff']:.2e}")
    if "decode" in r:
        d = r["decode"]
        console.print(f"wrote [bold]{d['file']}[/bold]: decoding graph with a KV cache for {d['layers']} attention "
                      f"layers; cache vs full graph max |diff| {d['cache_vs_full_max_abs_diff']:.2e}")
    if "quantized" in r:
        q = r["quantized"]
        line = f"wrote [bold]{q['file']}[/bold]: {q['bytes']:,} bytes ({q['bytes'] / q['fp32_bytes']:.2f} x fp32)"
        if "val_loss" in q:
            line += (f"; validation loss {q['val_loss']['fp32']:.4f} -> {q['val_loss']['int8']:.4f} "
                     f"({q['val_loss_change']:+.4f})")
        console.print(line)


def inspect_command(path: str) -> None:
    from .onnx_generate import count_parameters, read_metadata
    meta = read_metadata(path)
    console = Console(soft_wrap=True)  # paths and figures stay on their lines
    if "specc.version" not in meta:
        console.print(f"[yellow]{path} was not written by specc: no specc metadata[/yellow]")
    for key, value in meta.items():
        if key == "specc.spec":
            console.print(f"[bold]{key}[/bold]:")
            console.print(value, markup=False, highlight=False)
        else:
            console.print(f"[bold]{key}[/bold]: {value}", markup=True, highlight=False)
    counted = count_parameters(path)
    declared = meta.get("specc.params")
    console.print(f"[bold]parameters in the file[/bold]: {counted:,}"
                  + (f" (the spec says {int(declared):,})" if declared else ""))
    console.print(f"[bold]file size[/bold]: {Path(path).stat().st_size:,} bytes")
