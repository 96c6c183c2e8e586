"""The `specc export` and `specc inspect` commands: argument handling and reports around onnx_export."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from ..compiled import load
from ..errors import Span, SpecError
from ..text import printable


def export_command(spec: str, output: str, preset, overrides: dict, checkpoint: str | None,
                   quantize: str | None, dtype: str = "fp32", external_data: bool = False) -> dict:
    console = Console(soft_wrap=True)  # paths and figures stay on their lines
    weights, tokenizer, val_task, run = None, None, None, None
    if checkpoint:  # the run decides the model: its own sources, preset and --set values
        from ..train import rundir
        run = rundir.open_existing(checkpoint)
        weights = run.complete("best") or run.complete("last")
        if weights is None:
            raise SpecError(f"no complete checkpoint in '{run.path}'", Span(str(run.path), 0, 0))
        compiled, record = rundir.compile_run(run, preset, overrides)
        given = load(spec, preset=record["preset"], overrides=record["overrides"])
        problems = rundir.source_changes(record["sources"], [{"name": n, "sha256": rundir.sha256(t.encode())}
                                                             for n, t in given.model.sources])
        if problems:
            raise SpecError(f"'{run.path}' was trained from another spec than '{spec}': " + "; ".join(problems),
                            Span(str(run.path), 0, 0), hint=f"its spec is saved as {run.path / rundir.MAIN_SOURCE}")
        tokenizer = record["tokenizer"]
    else:
        compiled = load(spec, preset=preset, overrides=overrides)
    from ..backends.onnx_files import uses_external_data
    from ..backends.onnx_generate import export_paths
    external = uses_external_data(compiled.analysis.total, dtype, external_data)
    # before torch is imported: seconds before a refusal otherwise
    export_paths(compiled.model, output, quantize, dtype, external)
    if run is not None and tokenizer and quantize:  # the run's objective on its validation split, to weigh int8
        val_task = validation_task(run, record, compiled, console)
    if weights is None:
        console.print("[yellow]warning: no --checkpoint: exporting random weights[/yellow]")
    from ..backends.onnx_export import export
    with console.status("exporting and checking with onnxruntime"):
        module = trained_module(compiled, weights, record) if weights is not None else None
        merged = None
        if compiled.model.lora is not None:  # LoRA: the adapters merged into the base weights; the plain model exports
            from ..train.adapters import merged as merge_adapters
            compiled, module, merged = merge_adapters(compiled, module)
        report = export(compiled, output, module=module, tokenizer=tokenizer, quantize=quantize, val_task=val_task,
                        dtype=dtype, external_data=external_data)
    if merged is not None:
        console.print(f"merged the LoRA adapters into the base weights: max |diff| {merged:.2e} against the "
                      "unmerged model in PyTorch")
    _print_report(console, report)
    return report


def validation_task(run, record: dict, compiled, console: Console):
    """The task a run was trained on, to score --quantize on its validation split: next-token (or masked-token)
    prediction on its text, or the built-in task of a sequence-to-sequence model, drawn again from the run's seed
    (None, with a warning, when that no longer gives the run's strings)."""
    from ..contract import contract
    facts = contract(compiled.model)
    if facts.source is not None:
        from ..train.pairs import ReversalData
        from ..train.tasks import Seq2Seq
        data = record["data"]
        pairs = ReversalData(data["seed"]) if isinstance(data.get("seed"), int) else None
        if pairs is None or pairs.fingerprint != data:
            console.print("[yellow]warning: this specc draws other strings for the run's task: int8 is not scored"
                          "[/yellow]")
            return None
        return Seq2Seq(pairs)
    from ..train.data import TokenData
    from ..train.rundir import DATA
    from ..train.tasks import language_task
    return language_task(TokenData(run.path / DATA, run.tokenizer()), run.tokenizer(), facts.context)


def trained_module(compiled, folder: Path, record: dict | None = None):
    """The spec's torch module holding a checkpoint's weights (a folder of a run: best/, last/; with its run.json
    `record`, a LoRA run's base weights and adapters). A checkpoint of another model, or a damaged one, is a
    SpecError naming it. The caller's torch RNG is left as it was: the module's random initial weights are drawn
    from a fork of it, and replaced."""
    import torch

    from ..backends.torch_backend import to_torch
    from ..train.checkpoint import load_weights_into
    with torch.random.fork_rng(devices=[]):
        module = to_torch(compiled)
    if compiled.model.lora is not None:
        from ..train.init import load_run_weights
        with torch.random.fork_rng(devices=[]):  # the adapters' initial values, replaced by the checkpoint's
            load_run_weights(module, record or {}, folder)
        return module
    try:
        load_weights_into(module, folder)
    except Exception as e:
        raise SpecError(f"checkpoint '{folder}' does not fit this spec: {e}", Span(str(folder), 0, 0),
                        hint="export with the spec (and --set values) the run was trained with") from None
    return module


def _shown(path) -> str:
    """A path in rich markup: shown, never obeyed (neither as markup nor by the terminal)."""
    return escape(printable(str(path)))


def _print_report(console: Console, r: dict) -> None:
    from ..backends.onnx_files import DTYPES, data_file
    size = DTYPES[r["dtype"]]
    console.print(f"wrote [bold]{_shown(r['file'])}[/bold]: {r['bytes']:,} bytes for {r['params']:,} parameters "
                  f"in {r['dtype']} ({r['bytes'] / (size * r['params']):.3f} x {size} bytes each)")
    if r["external_data"]:
        console.print(f"  the weights of each graph are in a data file beside it: [bold]"
                      f"{_shown(data_file(r['file']))}[/bold] (move a graph with its data file)")
    _print_checks(console, r["checks"])
    if "encode" in r:
        e = r["encode"]
        console.print(f"wrote [bold]{_shown(e['file'])}[/bold]: encoder graph, the source to the memory's keys and "
                      f"values for {e['cross_layers']} cross-attention layers")
        _print_checks(console, e["checks"])
    if "decode" in r and "encode" in r:
        d = r["decode"]
        console.print(f"wrote [bold]{_shown(d['file'])}[/bold]: decoding graph with the KV cache of "
                      f"{d['layers']} self-attention layers and the memory's keys and values; encoder and decoding "
                      f"graphs vs PyTorch's full pass max |diff| {d['cache_vs_full_max_abs_diff']:.2e}")
    elif "decode" in r:
        d = r["decode"]
        console.print(f"wrote [bold]{_shown(d['file'])}[/bold]: decoding graph with a KV cache for {d['layers']} "
                      f"attention layers; cache vs full graph max |diff| {d['cache_vs_full_max_abs_diff']:.2e}")
    if "quantized" in r:
        q = r["quantized"]
        line = (f"wrote [bold]{_shown(q['file'])}[/bold]: {q['bytes']:,} bytes "
                f"({q['bytes'] / q['fp32_bytes']:.2f} x fp32)")
        if "val_loss" in q:
            line += (f"; validation loss {q['val_loss']['fp32']:.4f} -> {q['val_loss']['int8']:.4f} "
                     f"({q['val_loss_change']:+.4f})")
        console.print(line)
        for graph, what in (("encode", "its encoder graph"), ("decode", "its decoding graph")):
            if graph in q:
                console.print(f"wrote [bold]{_shown(q[graph]['file'])}[/bold]: {what}, {q[graph]['bytes']:,} bytes "
                              "(specc generate on the int8 file uses it)")


def _print_checks(console: Console, checks: list[dict]) -> None:
    for c in checks:
        seq = c["seq"]
        lengths = ", ".join(f"{n} {v}" for n, v in seq.items()) if isinstance(seq, dict) else f"seq {seq}"
        shown = f", {lengths}" if seq else ""
        bound = f" (tolerance {c['tolerance']:.1e})" if c.get("tolerance", 0) > 1e-4 else ""  # fp16 against fp32
        console.print(f"  onnxruntime vs PyTorch, batch {c['batch']}{shown}: max |diff| {c['max_abs_diff']:.2e}"
                      f"{bound}")


def inspect_command(path: str) -> None:
    from ..backends.onnx_generate import read_metadata
    from ..backends.onnx_weights import read_weights
    meta = read_metadata(path)
    console = Console(soft_wrap=True, highlight=False)  # paths and figures stay on their lines
    # Keys, values and the path come from the file: plain Text (no markup), with controls shown (printable).
    if "specc.version" not in meta:
        console.print(Text(f"{printable(path)} was not written by specc: no specc metadata", style="yellow"))
    for key, value in meta.items():
        if key == "specc.spec":  # the source, line by line
            console.print(Text.assemble((printable(key), "bold"), ":"))
            console.print(Text(printable(value, keep="\t\n")))
        else:
            console.print(Text.assemble((printable(key), "bold"), ": ", printable(_shown_value(key, value))))
    weights = read_weights(path)
    console.print(Text.assemble(("parameters in the file", "bold"), f": {weights.count:,}",
                                _declared(meta, weights)))
    types = ", ".join(f"{n:,} {kind}" for kind, n in weights.by_type.most_common())
    console.print(Text.assemble(("weights", "bold"), f": {types or 'none'}"))
    size = Path(path).stat().st_size
    console.print(Text.assemble(("file size", "bold"), f": {size:,} bytes"))
    for location in sorted(weights.locations):  # the data file beside the .onnx (docs/onnx.md, "External data")
        data = Path(path).parent / location  # relative to the .onnx, as onnxruntime reads it
        try:
            shown = f"{data.stat().st_size:,} bytes" if data.is_file() else "MISSING: keep the .onnx with its data file"
        except OSError as e:  # a location no file system takes (too long, a loop of links)
            shown = f"unreadable: {e.strerror}"
        console.print(Text.assemble(("weights stored in", "bold"), f": {printable(str(data))} ({shown})"))


LONGEST_SHOWN = 1000  # characters of a metadata value shown whole; a longer one is cut, saying how long it is


def _shown_value(key: str, value: str) -> str:
    """A metadata value as inspect shows it. The sources and the tokenizer are summed up: they are the spec files'
    text and a tokenizer.json (megabytes for a subword vocabulary), printed in full by `specc.spec` and read by
    `specc generate`. Whatever is shown is cut past LONGEST_SHOWN characters (a crafted file's names too)."""
    shown = _summed_up(key, value)
    if len(shown) > LONGEST_SHOWN:
        return f"{shown[:200]}... ({len(shown):,} characters)"
    return shown


def _summed_up(key: str, value: str) -> str:
    import json
    try:
        data = json.loads(value) if key in ("specc.sources", "specc.tokenizer") and value else None
    except ValueError:
        data = None
    if key == "specc.sources" and isinstance(data, list) and all(
            isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("text"), str) for f in data):
        return f"{len(data)} file{'s' * (len(data) != 1)}: " + ", ".join(
            f"{f['name']} ({len(f['text'].splitlines())} lines)" for f in data)
    if key == "specc.tokenizer" and isinstance(data, dict) and isinstance(data.get("kind"), str):
        chars, model = data.get("chars"), data.get("model")
        shown = data["kind"]
        if isinstance(chars, str) and chars:
            shown += f", {len(chars)} characters"
        if isinstance(model, str) and model:
            shown += f", a tokenizer.json of {len(model):,} characters"
        return shown + "".join(f", {name}" for flag, name in (("mask", "[MASK]"), ("bos_eos", "[BOS] and [EOS]"))
                               if data.get(flag) is True)
    return value


def _declared(meta: dict[str, str], weights) -> str:
    """What the spec says of the count (its metadata specc.params), and why the file's differs where it may."""
    declared = meta.get("specc.params", "")
    if not (declared.isascii() and declared.isdigit() and len(declared) < 100):  # a count, not whatever a file says
        return ""
    spec = int(declared)
    if weights.quantized and weights.count > spec:  # a weight quantized once per reader that onnx_int8 left
        return (f" (the spec says {spec:,}; the int8 file holds {weights.count - spec:,} more: onnxruntime's "
                "quantizer stores a weight read by two operators once for each)")
    part = {"encode": "the encoder graph", "decode": "the decoding graph"}.get(meta.get("specc.graph", ""))
    if part and weights.count != spec:  # an encoder-decoder's graphs hold the weights each reads
        return f" ({part}'s part of the spec's {spec:,})"
    return f" (the spec says {spec:,})"
