"""`specc export --onnx`: a compiled spec as a self-describing ONNX file, checked against PyTorch.

Two graphs for a language model:
- OUT.onnx: `tokens` int64 [batch, seq] -> `logits` [batch, seq, vocab], batch and seq dynamic (seq <= ctx);
- OUT.decode.onnx: `tokens` [batch, new] and the KV cache `past.<i>.k`, `past.<i>.v` [batch, kv_heads, past,
  head_dim] of every attention application -> `logits` and `present.<i>.k`, `present.<i>.v` (past + new).
A sequence-to-sequence model (contract: source, target) takes its source and target ids by their names and returns
`logits`; beside it OUT.encode.onnx and OUT.decode.onnx, the encoder and decoding graphs (onnx_seq2seq.py).
Other models keep their inputs' and outputs' names, with a dynamic batch.

Every target is checked first (specdsl.io.check_output: a regular file or nothing, in an existing folder). The
graphs are written under their final names to a staging folder beside their targets (onnx_files.Staging: inline, or
each with one data file OUT.onnx.data for big models or --external-data) and renamed into place only after
onnx.checker and a comparison with PyTorch on onnxruntime (two batch sizes, two lengths) pass: a file that fails is
never left behind. `--dtype fp16` exports a half-precision copy of the module and compares it with the fp32 one.
The metadata_props carry the spec's source, the resolved hyperparameters, the tokenizer, the specc version and an
export id shared by the graphs of one export, so a decoding graph left by another export is never used.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..contract import contract
from ..errors import Span, SpecError
from ..shapes import Sym
from .onnx_files import Staging, check_dtype, uses_external_data
from .onnx_generate import cache_names, companion, export_paths
from .onnx_graph import (
    ExportError,
    export_program,
    first,
    metadata,
    numpy_dtype,
    open_session,
    quiet,
    save_graph,
    tolerance,
    torch_dtype,
)
from .onnx_int8 import share_tied_tables
from .onnx_seq2seq import export_graphs
from .onnx_weights import constants_to_nodes
from .seq2seq_graphs import check_memory_only
from .torch_backend import Decoder, Seq2SeqDecoder, to_torch


def _sample_inputs(model, batch: int, seq: int | dict | None, vocab_hint: int, generator: torch.Generator):
    """Random inputs of `batch` rows; `seq` is the length of every other symbolic dim, or one per dim name (a
    source and a target of their own lengths), each at most its bound."""
    out = []
    for inp in model.inputs:
        if inp.default is not None:
            continue
        shape = []
        for d in inp.type.shape:
            if isinstance(d, Sym) and not shape:
                shape.append(batch)
            elif isinstance(d, Sym):
                n = (seq.get(d.name) if isinstance(seq, dict) else seq) or d.bound or 8
                shape.append(min(n, d.bound) if d.bound else n)
            else:
                shape.append(d)
        if inp.type.dtype == "int":
            out.append(torch.randint(0, vocab_hint, shape, generator=generator))
        else:
            out.append(torch.randn(*shape, generator=generator))
    return out


def _dynamic(model):
    """One torch.export Dim per symbolic dim name: the first is the batch, the others keep their bounds."""
    dims: dict[str, torch.export.Dim] = {}
    specs = []
    for inp in model.inputs:
        if inp.default is not None:
            continue
        spec = {}
        for i, d in enumerate(inp.type.shape):
            if isinstance(d, Sym):
                if d.name not in dims:
                    dims[d.name] = torch.export.Dim(d.name, min=1, max=d.bound or 4096) if dims else \
                        torch.export.Dim(d.name, min=1, max=4096)
                spec[i] = dims[d.name]
        specs.append(spec)
    return (tuple(specs),)


def _sequence_bound(model) -> int | None:
    syms = [d for d in model.inputs[0].type.shape if isinstance(d, Sym)]
    return syms[1].bound if len(syms) >= 2 else None


def _export_id(module, metadata: dict[str, str]) -> str:
    """One id for the graphs of one export: a hash of the weights and the metadata, so the same export gives the
    same files and any other export a different id."""
    h = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def export(compiled, out: str | os.PathLike, module: torch.nn.Module | None = None, tokenizer: dict | None = None,
           quantize: str | None = None, val_task=None, dtype: str = "fp32", external_data: bool = False) -> dict:
    """Export, check and compare. Returns the report; raises ExportError (leaving no file) on a mismatch.

    `dtype` fp16 exports weights and compute in half precision, checked against the fp32 module (onnx_graph's
    tolerance). `external_data` writes every graph's weights to a data file beside it, as a model past
    onnx_files.EXTERNAL_DATA_THRESHOLD always does.

    `module` is the spec's torch module with the weights to export (the CLI loads a checkpoint into one);
    without it the weights are random, drawn from seed 0. `val_task`, for --quantize, scores both graphs: its
    `batch("val", size, generator)` gives (token ids, targets), or ((source, target ids), targets) for a
    sequence-to-sequence model, and targets equal to its `ignore_index` are not scored. The caller's torch RNG is
    left as it was."""
    out = Path(out)
    if quantize not in (None, "int8"):  # before anything is written
        raise SpecError(f"unknown quantization '{quantize}': use int8", Span("--quantize", 0, 0))
    check_dtype(dtype, quantize)
    external = uses_external_data(compiled.analysis.total, dtype, external_data)
    export_paths(compiled.model, out, quantize, dtype, external)  # every target, before the seconds an export takes
    # The export draws from torch's global RNG (random weights, anything the exporter draws): a fork of it, seeded
    # for reproducible files, so the caller's stream goes on as if no export had run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = (module if module is not None else to_torch(compiled)).eval()
        if contract(compiled.model).source is not None:  # before the full graph's seconds, not after them
            check_memory_only(Seq2SeqDecoder(module))
        with Staging(out.parent, external) as stage:
            return _export_checked(compiled, out, module, tokenizer, quantize, val_task, dtype, stage)


def _export_checked(compiled, out: Path, module, tokenizer: dict | None, quantize: str | None, val_task, dtype: str,
                    stage: Staging) -> dict:
    """The body of `export` (its targets checked, the RNG forked): the full graph, its decoding graph when the
    model has a KV cache (and its encoder graph for a sequence-to-sequence model), the comparisons with PyTorch that
    decide whether they are published, and --quantize. One function so the order of writes, checks and renames
    reads top to bottom."""
    model = compiled.model
    facts = contract(model)
    lm, seq2seq = facts.language_model, facts.source is not None
    input_names = ["tokens"] if lm else [i.name for i in model.inputs if i.default is None]
    output_names = ["logits"] if lm or seq2seq else [n for n, _ in model.outputs]
    vocab = facts.ids or 2  # the ids every int input takes (an embedding's table), whatever the spec calls it
    gen = torch.Generator().manual_seed(0)
    lengths = _lengths(model, facts)
    example = _sample_inputs(model, 2, _example_length(lengths[-1]), vocab, gen)
    report: dict = {"file": str(out), "params": compiled.analysis.total, "checks": [], "dtype": dtype,
                    "external_data": stage.external}
    meta = metadata(compiled, tokenizer, "full", dtype)
    export_id = {"specc.export_id": _export_id(module, meta)}
    # The graph in fp16 is a half-precision copy; `module` stays fp32, the reference every comparison is made with.
    exported = copy.deepcopy(module).to(torch_dtype(dtype)) if dtype != "fp32" else module
    # exported as is: its initializers are named by parameter paths
    proto = export_program(exported, tuple(_cast(example, dtype)), input_names=input_names,
                           output_names=output_names, dynamic_shapes=_dynamic(model),
                           math_attention=facts.encoder_decoder)
    staged = save_graph(proto, {**meta, **export_id}, stage, out)
    del proto  # a big model's weights: held once more until onnxruntime's copy is loaded
    session = open_session(staged)
    report["checks"] = _compare(session, module, model, input_names, lengths, vocab, gen, dtype)
    report["max_abs_diff"] = max(c["max_abs_diff"] for c in report["checks"])
    failed = [c for c in report["checks"] if not c["max_abs_diff"] <= c["tolerance"]]  # NaN fails too
    if failed:
        raise ExportError(f"onnxruntime and PyTorch differ by {failed[0]['max_abs_diff']:.3g} (tolerance "
                          f"{failed[0]['tolerance']:.3g})", Span(str(out), 0, 0))
    if seq2seq:
        report.update(export_graphs(compiled, exported, module, tokenizer, out, export_id, vocab, stage, dtype))
    elif lm and facts.causal and facts.cache:
        decode_path = companion(out, "decode")
        report["decode"] = _export_decoder(compiled, exported, tokenizer, stage, decode_path, session, vocab,
                                           _sequence_bound(model), export_id, dtype)
        report["decode"]["file"] = str(decode_path)
    del session, exported
    stage.publish()  # the full graph first, then the encoder and decoding graphs, in the order generate reads them
    report["bytes"] = _bytes(out, stage.external)
    if quantize:
        report["quantized"] = _quantize(out, quantize, val_task, input_names, stage)
        # OUT.int8.encode.onnx and OUT.int8.decode.onnx beside OUT.int8.onnx: `specc generate OUT.int8.onnx` finds
        # the graphs it runs by name, as beside OUT.onnx
        for graph in ("encode", "decode"):
            if graph in report:
                report["quantized"][graph] = _quantize(Path(report[graph]["file"]), quantize, None, [], stage,
                                                       companion(companion(out, "int8"), graph))
        stage.publish()  # the int8 graphs together, as the fp32 ones above
    return report


def _bytes(path: Path, external: bool) -> int:
    """The size of a graph on disk: its .onnx and, when external, its data file."""
    from .onnx_files import data_file
    return path.stat().st_size + (data_file(path).stat().st_size if external else 0)


def _cast(tensors, dtype: str) -> list:
    """Float tensors in the export's precision (token ids stay int64)."""
    return [t.to(torch_dtype(dtype)) if t.is_floating_point() else t for t in tensors]


def _lengths(model, facts) -> list:
    """The sequence lengths the full graph is compared at: a short one and the longest; for a
    sequence-to-sequence model a source and a target of their own lengths ({dim name: length})."""
    if facts.source is None:
        bound = _sequence_bound(model)
        return [min(5, bound), bound] if bound else [None]
    dims = {i.name: i.type.shape[-1] for i in model.inputs}
    src, tgt = dims[facts.source], dims[facts.target]
    longest = src.bound or 16, tgt.bound or 16
    return [{src.name: min(5, longest[0]), tgt.name: min(4, longest[1])},
            {src.name: longest[0], tgt.name: longest[1]}]


def _example_length(longest):
    """The lengths the graph is traced at: at most 8, sources and targets of different lengths (so the trace cannot
    take one for the other)."""
    if isinstance(longest, dict):
        return {name: min(n, 8 - i) for i, (name, n) in enumerate(longest.items())}
    return min(longest, 8) if longest else None


def _compare(session, module, model, input_names: list[str], lengths: list, vocab: int,
             generator: torch.Generator, dtype: str) -> list[dict]:
    """onnxruntime against PyTorch (fp32) on random inputs: batch sizes 1 and 3, a short and the longest
    sequence; each check with the tolerance it is held to."""
    checks = []
    for batch in (1, 3):
        for seq in lengths:
            inputs = _sample_inputs(model, batch, seq, vocab, generator)
            with torch.no_grad():
                expected = first(module(*inputs)).numpy()
            got = session.run(None, {n: x.numpy() for n, x in zip(input_names, _cast(inputs, dtype))})[0]
            diff = float(np.abs(got.astype(np.float32) - expected).max())
            checks.append({"batch": batch, "seq": seq, "max_abs_diff": diff,
                           "tolerance": tolerance(dtype, float(np.abs(expected).max()))})
    return checks


def _export_decoder(compiled, module, tokenizer, stage: Staging, target: Path, full_session, vocab: int,
                    seq_bound: int, export_id: dict, dtype: str) -> dict:
    """The decoding graph of `module` (in the export's precision) for `target`, staged and checked against the
    full graph."""
    decoder = Decoder(module).eval()
    slots = decoder.slots
    names = cache_names("past", len(slots))
    batch = torch.export.Dim("batch", min=1, max=4096)
    new = torch.export.Dim("new", min=1, max=seq_bound)
    past = torch.export.Dim("past", min=0, max=seq_bound)
    gen = torch.Generator().manual_seed(1)
    example_past = [torch.randn(2, kv, 3, hd, generator=gen).to(torch_dtype(dtype)) for kv, hd in slots
                    for _ in (0, 1)]
    tokens = torch.randint(0, vocab, (2, 2), generator=gen)
    dynamic = ({0: batch, 1: new}, tuple({0: batch, 2: past} for _ in example_past))
    proto = export_program(decoder, (tokens, *example_past), input_names=["tokens"] + names,
                           output_names=["logits"] + [n.replace("past", "present") for n in names],
                           dynamic_shapes=dynamic)
    staged = save_graph(proto, {**metadata(compiled, tokenizer, "decode", dtype), **export_id}, stage, target,
                        strip_prefix="model.")
    del proto
    session = open_session(staged)
    # Cache against no cache: a prompt, then one token at a time, against the full graph on the whole sequence.
    seq = min(seq_bound, 12)
    ids = torch.randint(0, vocab, (2, seq), generator=gen).numpy()
    full = full_session.run(None, {"tokens": ids})[0]
    feeds = {n: np.zeros((2, kv, 0, hd), numpy_dtype(dtype))
             for n, (kv, hd) in zip(names, [s for s in slots for _ in (0, 1)])}
    prompt = seq // 2
    outs = session.run(None, {"tokens": ids[:, :prompt], **feeds})
    logits = [outs[0]]
    for t in range(prompt, seq):
        cache = dict(zip(names, outs[1:]))
        outs = session.run(None, {"tokens": ids[:, t:t + 1], **cache})
        logits.append(outs[0])
    diff = float(np.abs(np.concatenate(logits, axis=1).astype(np.float32) - full).max())
    if not diff <= tolerance(dtype, float(np.abs(full).max())):
        raise ExportError(f"the decoding graph with a KV cache differs from the full graph by {diff:.3g}",
                          Span(str(target), 0, 0))
    return {"cache_vs_full_max_abs_diff": diff, "layers": len(slots)}


def _quantize(path: Path, kind: str, val_task, input_names: list[str], stage: Staging,
              target: Path | None = None) -> dict:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    target = target or companion(path, "int8")
    folded, quantized = stage.scratch(f"folded-{target.name}"), stage.scratch(f"int8-{target.name}")
    # Fold the weight transposes first (onnxruntime's basic level), so MatMuls see constant weights to quantize.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    options.log_severity_level = 3
    if stage.external:  # onnxruntime writes no optimized model past 2 GiB inline
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         folded.name + ".data")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with quiet():
        quantize_dynamic(str(folded), str(quantized), weight_type=QuantType.QInt8,
                         use_external_data_format=stage.external)
    proto = onnx.load(str(quantized))
    share_tied_tables(proto)
    constants_to_nodes(proto, onnx.load(str(path), load_external_data=False))
    for entry in proto.metadata_props:  # the weights are int8 now (onnxruntime keeps the fp32 graph's metadata)
        if entry.key == "specc.dtype":
            entry.value = "int8"
    # Staged under its final name, its data file named after it; the caller publishes the int8 graphs together.
    staged = stage.write(proto, target)
    report = {"file": str(target), "bytes": _bytes(staged, stage.external), "fp32_bytes": _bytes(path, stage.external)}
    if val_task is not None:  # a language model trained on text: its training objective on the validation split
        losses = {}
        for name, p in (("fp32", path), ("int8", staged)):
            session = open_session(p)
            gen = torch.Generator().manual_seed(7)
            total = []
            for _ in range(8):
                x, y = val_task.batch("val", 8, gen)  # x: the token ids, or (source, target) of a seq2seq model
                feeds = dict(zip(input_names, (t.numpy() for t in (x if isinstance(x, tuple) else (x,)))))
                logits = session.run(None, feeds)[0]
                z = logits - logits.max(-1, keepdims=True)
                logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
                y = y.numpy()
                scored = y != val_task.ignore_index  # every position for next-token models; masked ones for BERT
                picked = np.take_along_axis(logp, np.where(scored, y, 0)[..., None], -1)[..., 0]
                total.append(-picked[scored].mean())
            losses[name] = float(np.mean(total))
        report["val_loss"] = losses
        report["val_loss_change"] = losses["int8"] - losses["fp32"]
    return report
