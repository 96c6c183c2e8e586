"""`specc export --onnx` of a sequence-to-sequence model (contract: source, target). Beside the full graph OUT.onnx
(source and target ids -> logits), the two graphs `specc generate` runs:

- OUT.encode.onnx: the source `<source>` int64 [batch, src_len] -> `memory.<i>.k`, `memory.<i>.v` [batch,
  kv_heads, src_len, head_dim]: the keys and values of the encoder's output as every cross-attention application
  reads them, in the order the decoder runs them (seq2seq_graphs.MemoryEncoder), computed once per source;
- OUT.decode.onnx: the target `<target>` [batch, new], `past.<i>.k`, `past.<i>.v` [batch, kv_heads, past, head_dim]
  of every self-attention application of the decoder (past may be 0), and the memory's keys and values ->
  `logits` [batch, new, vocab] and `present.<i>.k`, `present.<i>.v` (past + new) (seq2seq_graphs.MemoryDecoder).

Both are staged (onnx_files.Staging) and checked on onnxruntime before the caller publishes them: the encoder graph
against PyTorch (batch 1 and 3, a short and the longest source), and the two together (a target prefix, then one
token at a time with both caches) against PyTorch's full pass of the model over the whole target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..contract import contract
from ..errors import Span
from . import onnx_graph as ex
from .onnx_files import Staging
from .onnx_generate import cache_names, companion
from .seq2seq_graphs import MemoryDecoder, MemoryEncoder


def export_graphs(compiled, exported, module, tokenizer: dict | None, out: Path, export_id: dict, vocab: int,
                  stage: Staging, dtype: str = "fp32") -> dict:
    """The encoder and decoding graphs of `exported` (the model in the export's precision) for OUT.onnx `out`,
    each staged in `stage` (the caller publishes them) and checked against `module` (fp32). Returns {"encode": ...,
    "decode": ...}, each report with its "file" (the target). Raises ExportError on a mismatch."""
    facts = contract(compiled.model)
    encoder, decoder = MemoryEncoder(exported).eval(), MemoryDecoder(exported).eval()
    reports, staged = {}, {}
    for graph, build in (("encode", _export_encoder), ("decode", _export_decoder)):
        target = companion(out, graph)
        proto = build(encoder if graph == "encode" else decoder, facts, vocab, dtype)
        staged[graph] = ex.save_graph(proto, {**ex.metadata(compiled, tokenizer, graph, dtype), **export_id}, stage,
                                      target, strip_prefix="model.")
        reports[graph] = {"file": str(target)}
    encoder_session, decoder_session = (ex.open_session(staged[g]) for g in ("encode", "decode"))
    src_dim = next(i for i in compiled.model.inputs if i.name == facts.source).type.shape[-1].name
    reports["encode"]["checks"] = checks = _compare_encoder(encoder_session, MemoryEncoder(module).eval(), facts,
                                                            vocab, src_dim, dtype)
    reports["encode"]["max_abs_diff"] = max(c["max_abs_diff"] for c in checks)
    reports["encode"]["cross_layers"] = len(facts.memory_cache)
    failed = [c for c in checks if not c["max_abs_diff"] <= c["tolerance"]]  # NaN fails too
    if failed:
        raise ex.ExportError(f"the encoder graph and PyTorch differ by {failed[0]['max_abs_diff']:.3g} (tolerance "
                             f"{failed[0]['tolerance']:.3g})", Span(reports["encode"]["file"], 0, 0))
    diff, bound = _compare_decoding(encoder_session, decoder_session, module, facts, vocab, dtype)
    if not diff <= bound:
        raise ex.ExportError(f"decoding with both caches on onnxruntime differs from PyTorch's full pass by "
                             f"{diff:.3g} (tolerance {bound:.3g})", Span(reports["decode"]["file"], 0, 0))
    reports["decode"].update({"cache_vs_full_max_abs_diff": diff, "layers": len(facts.cache),
                              "cross_layers": len(facts.memory_cache)})
    return reports


def _dims(facts) -> dict[str, torch.export.Dim]:
    return {"batch": torch.export.Dim("batch", min=1, max=4096),
            "src_len": torch.export.Dim("src_len", min=1, max=facts.source_context or 4096),
            "new": torch.export.Dim("new", min=1, max=facts.context or 4096),
            "past": torch.export.Dim("past", min=0, max=facts.context or 4096)}


def _export_encoder(encoder: MemoryEncoder, facts, vocab: int, dtype: str):
    dims = _dims(facts)
    src = torch.randint(0, vocab, (2, min(7, facts.source_context or 7)), generator=torch.Generator().manual_seed(2))
    return ex.export_program(encoder, (src,), input_names=[facts.source],
                       output_names=cache_names("memory", len(facts.memory_cache)),
                       dynamic_shapes=({0: dims["batch"], 1: dims["src_len"]},), math_attention=True)


def _export_decoder(decoder: MemoryDecoder, facts, vocab: int, dtype: str):
    dims = _dims(facts)
    gen = torch.Generator().manual_seed(3)
    src_len = min(7, facts.source_context or 7)
    half = ex.torch_dtype(dtype)
    past = [torch.randn(2, kv, 3, hd, generator=gen).to(half) for kv, hd in facts.cache for _ in "kv"]
    memory = [torch.randn(2, kv, src_len, hd, generator=gen).to(half) for kv, hd in facts.memory_cache for _ in "kv"]
    tgt = torch.randint(0, vocab, (2, 2), generator=gen)
    dynamic = ({0: dims["batch"], 1: dims["new"]},
               (*({0: dims["batch"], 2: dims["past"]} for _ in past),
                *({0: dims["batch"], 2: dims["src_len"]} for _ in memory)))
    past_names = cache_names("past", len(facts.cache))
    return ex.export_program(decoder, (tgt, *past, *memory),
                       input_names=[facts.target, *past_names, *cache_names("memory", len(facts.memory_cache))],
                       output_names=["logits", *(n.replace("past", "present") for n in past_names)],
                       dynamic_shapes=dynamic, math_attention=True)


def _compare_encoder(session, encoder: MemoryEncoder, facts, vocab: int, src_dim: str, dtype: str) -> list[dict]:
    """The encoder graph's keys and values against PyTorch's: batch 1 and 3, a short and the longest source."""
    gen = torch.Generator().manual_seed(4)
    longest = facts.source_context or 16
    checks = []
    for batch in (1, 3):
        for length in (min(5, longest), longest):
            src = torch.randint(0, vocab, (batch, length), generator=gen)
            with torch.no_grad():
                expected = encoder(src)
            got = session.run(None, {facts.source: src.numpy()})
            diff = max(float(np.abs(g.astype(np.float32) - e.numpy()).max()) for g, e in zip(got, expected))
            scale = max(float(e.abs().max()) for e in expected)
            checks.append({"batch": batch, "seq": {src_dim: length}, "max_abs_diff": diff,
                           "tolerance": ex.tolerance(dtype, scale)})
    return checks


def _compare_decoding(encoder_session, decoder_session, module, facts, vocab: int, dtype: str) -> tuple[float, float]:
    """Encoder graph, then decoding graph with both caches (half the target in one call, then one token a call),
    against PyTorch's full pass of the model over source and target: the largest difference of the logits, and the
    tolerance it is held to."""
    gen = torch.Generator().manual_seed(5)
    src = torch.randint(0, vocab, (2, min(9, facts.source_context or 9)), generator=gen)
    tgt = torch.randint(0, vocab, (2, min(12, facts.context or 12)), generator=gen)
    with torch.no_grad():
        full = ex.first(module(src, tgt)).numpy()
    memory = dict(zip(cache_names("memory", len(facts.memory_cache)),
                      encoder_session.run(None, {facts.source: src.numpy()})))
    past_names = cache_names("past", len(facts.cache))
    cache = {n: np.zeros((2, kv, 0, hd), ex.numpy_dtype(dtype))
             for n, (kv, hd) in zip(past_names, _per_name(facts.cache))}
    ids, logits, start = tgt.numpy(), [], 0
    prefix = max(1, tgt.shape[1] // 2)
    for stop in (prefix, *range(prefix + 1, tgt.shape[1] + 1)):
        outs = decoder_session.run(None, {facts.target: ids[:, start:stop], **cache, **memory})
        logits.append(outs[0])
        cache, start = dict(zip(past_names, outs[1:])), stop
    diff = float(np.abs(np.concatenate(logits, axis=1).astype(np.float32) - full).max())
    return diff, ex.tolerance(dtype, float(np.abs(full).max()))


def _per_name(slots):
    """Each (kv_heads, head_dim) slot twice: its keys, then its values."""
    return [s for s in slots for _ in "kv"]
