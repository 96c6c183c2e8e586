"""`specc generate` for a sequence-to-sequence export, on onnxruntime without torch. The prompt is the source: the
encoder graph (OUT.encode.onnx) runs once and gives the memory's keys and values for every cross-attention; the
decoding graph (OUT.decode.onnx) starts from [BOS] and takes one token a call with its self-attention cache and the
memory's, until it chooses [EOS], max_new_tokens, or the target's context. That is `specc sample`'s loop
(train/sample.translate), so at temperature 0 both print the same text.

The graphs of one export share `specc.export_id`: given any of them (OUT.onnx, OUT.encode.onnx, OUT.decode.onnx),
the others must be beside it under their companion names and from the same export, or it is a SpecError naming
the file, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import Span, SpecError
from .onnx_generate import (
    AGAIN,
    OnnxGenerator,
    _choose,
    _contract,
    _first_line,
    _session,
    _tokenizer,
    cache_dtype,
    cache_names,
    companion,
    read_metadata,
)

ROLES = {"encode": "encoder graph", "decode": "decoding graph"}


def open_generator(path: str | Path, threads: int | None = None):
    """What `specc generate` runs for the file at `path`: an OnnxTranslator for any graph of a
    sequence-to-sequence export, else an OnnxGenerator (a language model's)."""
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("specc.contract") and _contract(meta, path).source is not None:
        return OnnxTranslator(path, threads)
    return OnnxGenerator(path, threads)


def export_graphs(path: Path, meta: dict[str, str]) -> dict[str, Path]:
    """{"encode": OUT.encode.onnx, "decode": OUT.decode.onnx} of the export `path` belongs to (OUT.onnx or one of
    these two), found by name."""
    graph = meta.get("specc.graph")
    if graph == "full":
        return {g: companion(path, g) for g in ROLES}
    if graph not in ROLES:
        raise SpecError(f"'{path}': metadata 'specc.graph' is not full, encode or decode", Span(str(path), 0, 0),
                        hint=AGAIN)
    suffix = f".{graph}.onnx"
    if not path.name.endswith(suffix):
        raise SpecError(f"'{path}' is the {ROLES[graph]} of an export, but its name does not end in '{suffix}': "
                        "the graphs it works with cannot be found beside it", Span(str(path), 0, 0),
                        hint="keep the names `specc export -o OUT.onnx` gave: OUT.onnx, OUT.encode.onnx, "
                             "OUT.decode.onnx")
    base = path.name[:-len(suffix)]
    return {g: path.with_name(f"{base}.{g}.onnx") for g in ROLES}


def _companion_metadata(path: Path, given: Path, meta: dict[str, str], graph: str) -> dict[str, str]:
    """The metadata of the export's `graph` at `path`, which must be from the same export as `given`."""
    if path == given:
        return meta
    if not path.is_file():
        raise SpecError(f"no {ROLES[graph]} beside '{given}' (expected '{path.name}')", Span(str(given), 0, 0),
                        hint=AGAIN)
    other = read_metadata(path)
    if not meta.get("specc.export_id") or other.get("specc.export_id") != meta["specc.export_id"]:
        raise SpecError(f"'{path}' does not belong to '{given}': it was written by another export",
                        Span(str(path), 0, 0), hint=AGAIN)
    if other.get("specc.graph") != graph:
        raise SpecError(f"'{path}' is not an {ROLES[graph]}: its metadata 'specc.graph' is "
                        f"'{other.get('specc.graph')}'", Span(str(path), 0, 0), hint=AGAIN)
    return other


class OnnxTranslator:
    """The encoder and decoding graphs of a sequence-to-sequence export, ready to translate a source."""

    def __init__(self, path: str | Path, threads: int | None = None):
        path = Path(path)
        meta = read_metadata(path)
        paths = export_graphs(path, meta)
        metas = {g: _companion_metadata(p, path, meta, g) for g, p in paths.items()}
        decode = paths["decode"]
        tokenizer = _tokenizer(metas["decode"], decode)
        if tokenizer is None or not tokenizer.bos_eos:
            raise SpecError(f"'{decode}' carries no tokenizer with [BOS] and [EOS]: it was exported without "
                            "--checkpoint", Span(str(decode), 0, 0),
                            hint="export from a trained run: --checkpoint RUN_DIR")
        self.tokenizer = tokenizer
        facts = _contract(metas["decode"], decode)
        self.facts, self.paths = facts, paths
        self.source_context, self.ctx = facts.source_context, facts.context or 1 << 30
        self.past = cache_names("past", len(facts.cache))
        self.memory = cache_names("memory", len(facts.memory_cache))
        self.encoder = _session(paths["encode"], threads)
        self.decoder = _session(decode, threads)
        self._check_interfaces()
        self.cache_dtype = cache_dtype(self.decoder, self.past)

    def _check_interfaces(self) -> None:
        """The contract must describe both graphs: the source in and the memory's keys and values [batch, kv_heads,
        src_len, head_dim] out; the target, the cache and the memory in, logits [batch, new, vocab] and the cache
        out."""
        facts = self.facts
        memory = dict(zip(self.memory, (s for s in facts.memory_cache for _ in "kv")))
        past = dict(zip(self.past, (s for s in facts.cache for _ in "kv")))
        enc_in, enc_out = self.encoder.get_inputs(), self.encoder.get_outputs()
        dec_in = {i.name: i.shape for i in self.decoder.get_inputs()}
        dec_out = self.decoder.get_outputs()
        fits = [i.name for i in enc_in] == [facts.source] and [o.name for o in enc_out] == self.memory \
            and all(len(o.shape) == 4 and tuple(o.shape[1::2]) == memory[o.name] for o in enc_out) \
            and set(dec_in) == {facts.target, *self.past, *self.memory} \
            and all(len(dec_in[n]) == 4 and tuple(dec_in[n][1::2]) == d for n, d in {**past, **memory}.items()) \
            and len(dec_out) == 1 + len(self.past) and len(dec_out[0].shape) == 3
        if not fits:
            raise SpecError(f"'{self.paths['decode']}': metadata 'specc.contract' does not describe the inputs and "
                            "outputs of the encoder and decoding graphs", Span(str(self.paths["decode"]), 0, 0),
                            hint=AGAIN)

    def _run(self, session, graph: str, feeds: dict) -> list:
        try:
            return session.run(None, feeds)
        except Exception as e:  # onnxruntime's own exception types: a graph that does not run as its file says
            raise SpecError(f"onnxruntime failed running '{self.paths[graph]}': {_first_line(e)}",
                            Span(str(self.paths[graph]), 0, 0)) from None

    def translate(self, source_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, seed: int = 0) -> Iterator[int]:
        """Yield the target's token ids for `source_ids`, from [BOS] until [EOS] (not yielded), max_new_tokens or
        the target's context; [BOS] is never chosen, and only ids the tokenizer knows are."""
        if not source_ids:
            raise ValueError("an empty source: the encoder needs at least one token")
        rng = np.random.default_rng(seed)
        bos, eos, vocab = self.tokenizer.bos_id, self.tokenizer.eos_id, self.tokenizer.vocab_size
        src = np.array([source_ids], dtype=np.int64)
        memory = dict(zip(self.memory, self._run(self.encoder, "encode", {self.facts.source: src})))
        cache = {n: np.zeros((1, kv, 0, hd), self.cache_dtype)
                 for n, (kv, hd) in zip(self.past, (s for s in self.facts.cache for _ in "kv"))}
        token = bos
        for _ in range(min(max_new_tokens, self.ctx)):
            feeds = {self.facts.target: np.array([[token]], dtype=np.int64), **cache, **memory}
            outs = self._run(self.decoder, "decode", feeds)
            scores = outs[0][0, -1, :vocab].copy()
            scores[bos] = -np.inf
            token = _choose(scores, temperature, top_k, rng)
            if token == eos:
                return
            yield token
            cache = dict(zip(self.past, outs[1:]))
