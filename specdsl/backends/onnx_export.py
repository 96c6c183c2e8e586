"""`specc export --onnx`: a compiled spec as a self-describing ONNX file, checked against PyTorch.

Two graphs for a language model:
- OUT.onnx: `tokens` int64 [batch, seq] -> `logits` [batch, seq, vocab], batch and seq dynamic (seq <= ctx);
- OUT.decode.onnx: `tokens` [batch, new] and the KV cache `past.<i>.k`, `past.<i>.v` [batch, kv_heads, past,
  head_dim] of every attention application -> `logits` and `present.<i>.k`, `present.<i>.v` (past + new).
A sequence-to-sequence model (contract: source, target) takes its source and target ids by their names and returns
`logits`; beside it OUT.encode.onnx and OUT.decode.onnx, the encoder and decoding graphs (onnx_seq2seq.py).
Other models keep their inputs' and outputs' names, with a dynamic batch.

Every target is checked first (specdsl.io.check_output: a regular file or nothing, in an existing folder). Both
graphs are written to temporary files beside their targets and renamed into place only after onnx.checker and a
comparison with PyTorch on onnxruntime (two batch sizes, two lengths) pass: a file that fails is never left behind.
The metadata_props carry the spec's source, the resolved hyperparameters, the tokenizer, the specc version and an
export id shared by the graphs of one export, so a decoding graph left by another export is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..contract import contract
from ..errors import Span, SpecError
from ..io import publish, temp_beside
from ..shapes import Sym
from .onnx_generate import cache_names, companion, export_paths
from .onnx_graph import TOLERANCE, ExportError, export_program, first, metadata, open_session, quiet, save_graph
from .onnx_seq2seq import export_graphs
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
           quantize: str | None = None, val_task=None) -> dict:
    """Export, check and compare. Returns the report; raises ExportError (leaving no file) on a mismatch.

    `module` is the spec's torch module with the weights to export (the CLI loads a checkpoint into one);
    without it the weights are random, drawn from seed 0. `val_task`, for --quantize, scores both graphs: its
    `batch("val", size, generator)` gives (token ids, targets), or ((source, target ids), targets) for a
    sequence-to-sequence model, and targets equal to its `ignore_index` are not scored. The caller's torch RNG is
    left as it was."""
    out = Path(out)
    if quantize not in (None, "int8"):  # before anything is written
        raise SpecError(f"unknown quantization '{quantize}': use int8", Span("--quantize", 0, 0))
    export_paths(compiled.model, out, quantize)  # every target, before the seconds an export takes
    # The export draws from torch's global RNG (random weights, anything the exporter draws): a fork of it, seeded
    # for reproducible files, so the caller's stream goes on as if no export had run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = (module if module is not None else to_torch(compiled)).eval()
        if contract(compiled.model).source is not None:  # before the full graph's seconds, not after them
            check_memory_only(Seq2SeqDecoder(module))
        return _export_checked(compiled, out, module, tokenizer, quantize, val_task)


def _export_checked(compiled, out: Path, module, tokenizer: dict | None, quantize: str | None, val_task) -> dict:
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
    report: dict = {"file": str(out), "params": compiled.analysis.total, "checks": []}
    export_id = {"specc.export_id": _export_id(module, metadata(compiled, tokenizer, "full"))}
    written: list[Path] = []
    try:
        tmp = temp_beside(out)
        written.append(tmp)
        # exported as is: its initializers are named by parameter paths
        export_program(module, tuple(example), tmp, input_names=input_names, output_names=output_names,
                        dynamic_shapes=_dynamic(model), math_attention=facts.encoder_decoder)
        save_graph(tmp, {**metadata(compiled, tokenizer, "full"), **export_id})
        session = open_session(tmp)
        report["checks"] = _compare(session, module, model, input_names, lengths, vocab, gen)
        worst = max(c["max_abs_diff"] for c in report["checks"])
        report["max_abs_diff"] = worst
        if not worst <= TOLERANCE:
            raise ExportError(f"onnxruntime and PyTorch differ by {worst:.3g} (tolerance {TOLERANCE})",
                              Span(str(out), 0, 0))
        if seq2seq:
            report.update(export_graphs(compiled, module, tokenizer, out, export_id, vocab, written))
        elif lm and facts.causal and facts.cache:
            decode_path = companion(out, "decode")
            dtmp = temp_beside(decode_path)
            written.append(dtmp)
            report["decode"] = _export_decoder(compiled, module, tokenizer, dtmp, decode_path, session, vocab,
                                               _sequence_bound(model), export_id)
            report["decode"].update({"tmp": dtmp, "file": str(decode_path)})
        _publish(tmp, out)
        written.remove(tmp)
        for graph in ("encode", "decode"):  # after the full graph, in the order generate reads them
            if graph in report:
                _publish(report[graph]["tmp"], Path(report[graph]["file"]))
                written.remove(report[graph].pop("tmp"))
    finally:
        for path in written:
            path.unlink(missing_ok=True)
    report["bytes"] = out.stat().st_size
    if quantize:
        report["quantized"] = _quantize(out, quantize, val_task, input_names)
        if "decode" in report:  # OUT.int8.decode.onnx beside OUT.int8.onnx: `specc generate OUT.int8.onnx` decodes
            decode = Path(report["decode"]["file"])
            report["quantized"]["decode"] = _quantize(decode, quantize, None, [],
                                                      companion(companion(out, "int8"), "decode"))
    return report


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
             generator: torch.Generator) -> list[dict]:
    """onnxruntime against PyTorch on random inputs: batch sizes 1 and 3, a short and the longest sequence."""
    checks = []
    for batch in (1, 3):
        for seq in lengths:
            inputs = _sample_inputs(model, batch, seq, vocab, generator)
            with torch.no_grad():
                expected = first(module(*inputs)).numpy()
            got = session.run(None, {n: x.numpy() for n, x in zip(input_names, inputs)})[0]
            checks.append({"batch": batch, "seq": seq, "max_abs_diff": float(np.abs(got - expected).max())})
    return checks


def _publish(tmp: Path, target: Path) -> None:
    try:
        publish(tmp, target)
    except OSError as e:  # the target changed during the export (a folder appeared there, say)
        raise SpecError(f"cannot write '{target}': {e.strerror}", Span(str(target), 0, 0)) from None


def _export_decoder(compiled, module, tokenizer, tmp: Path, target: Path, full_session, vocab: int, seq_bound: int,
                    export_id: dict) -> dict:
    """The decoding graph for `target`, written to `tmp` and checked against the full graph."""
    decoder = Decoder(module).eval()
    slots = decoder.slots
    names = cache_names("past", len(slots))
    batch = torch.export.Dim("batch", min=1, max=4096)
    new = torch.export.Dim("new", min=1, max=seq_bound)
    past = torch.export.Dim("past", min=0, max=seq_bound)
    gen = torch.Generator().manual_seed(1)
    example_past = [torch.randn(2, kv, 3, hd, generator=gen) for kv, hd in slots for _ in (0, 1)]
    tokens = torch.randint(0, vocab, (2, 2), generator=gen)
    dynamic = ({0: batch, 1: new}, tuple({0: batch, 2: past} for _ in example_past))
    export_program(decoder, (tokens, *example_past), tmp, input_names=["tokens"] + names,
                    output_names=["logits"] + [n.replace("past", "present") for n in names], dynamic_shapes=dynamic)
    save_graph(tmp, {**metadata(compiled, tokenizer, "decode"), **export_id}, strip_prefix="model.")
    session = open_session(tmp)
    # Cache against no cache: a prompt, then one token at a time, against the full graph on the whole sequence.
    seq = min(seq_bound, 12)
    ids = torch.randint(0, vocab, (2, seq), generator=gen).numpy()
    full = full_session.run(None, {"tokens": ids})[0]
    feeds = {n: np.zeros((2, kv, 0, hd), np.float32) for n, (kv, hd) in zip(names, [s for s in slots for _ in (0, 1)])}
    prompt = seq // 2
    outs = session.run(None, {"tokens": ids[:, :prompt], **feeds})
    logits = [outs[0]]
    for t in range(prompt, seq):
        cache = dict(zip(names, outs[1:]))
        outs = session.run(None, {"tokens": ids[:, t:t + 1], **cache})
        logits.append(outs[0])
    diff = float(np.abs(np.concatenate(logits, axis=1) - full).max())
    if not diff <= TOLERANCE:
        raise ExportError(f"the decoding graph with a KV cache differs from the full graph by {diff:.3g}",
                          Span(str(target), 0, 0))
    return {"cache_vs_full_max_abs_diff": diff, "layers": len(slots)}


def _quantize(path: Path, kind: str, val_task, input_names: list[str], target: Path | None = None) -> dict:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    target = target or companion(path, "int8")
    tmp, folded = temp_beside(target), temp_beside(target)
    try:
        # Fold the weight transposes first (onnxruntime's basic level), so MatMuls see constant weights to quantize.
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        with quiet():
            quantize_dynamic(str(folded), str(tmp), weight_type=QuantType.QInt8)
        _publish(tmp, target)
    finally:
        folded.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    report = {"file": str(target), "bytes": target.stat().st_size, "fp32_bytes": path.stat().st_size}
    if val_task is not None:  # a language model trained on text: its training objective on the validation split
        losses = {}
        for name, p in (("fp32", path), ("int8", target)):
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
