"""`specc generate` and `specc inspect`: an exported model on onnxruntime, without torch.

Generation runs the decoding graph (OUT.decode.onnx) with its KV cache: the prompt in one call, then one token a
call. Past the model's context it follows the same rule as `specc sample` (specdsl.context_window: "slide" runs the
last ctx tokens again for every token, "shift" keeps the last ctx/2 and goes on with the cache), so with temperature
0 both produce the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ..context_window import DEFAULT_OVERFLOW, prompt_start, window_start
from ..errors import Span, SpecError
from ..tokenizer import Tokenizer


def read_metadata(path: str | Path) -> dict[str, str]:
    import onnx
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no such ONNX file: '{path}'", Span(str(path), 0, 0))
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise SpecError(f"'{path}' is not an ONNX model: {str(e).splitlines()[0][:200]}", Span(str(path), 0, 0)) \
            from None
    return {p.key: p.value for p in proto.metadata_props}


def count_parameters(path: str | Path) -> int:
    """Elements of the file's initializers (its weights), each stored tensor once."""
    import onnx
    proto = onnx.load(str(path))
    return sum(int(np.prod(t.dims)) for t in proto.graph.initializer)


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxGenerator:
    def __init__(self, path: str | Path, threads: int | None = None):
        path = Path(path)
        meta = read_metadata(path)
        if meta.get("specc.graph") == "decode":
            decode = path
        else:
            decode = path.with_name(path.stem + ".decode.onnx")
        if json.loads(meta.get("specc.tokenizer") or "{}").get("mask"):
            raise SpecError(f"'{path}' is a masked language model: it fills in [MASK] tokens from both sides and "
                            "does not continue text", Span(str(path), 0, 0),
                            hint="generate with a causal model (GPT, LLaMA, nanoGPT)")
        if not decode.is_file():
            raise SpecError(f"no decoding graph beside '{path}' (expected '{decode.name}')", Span(str(path), 0, 0),
                            hint="export a language model with `specc export ... --onnx`")
        meta = read_metadata(decode)
        if not meta.get("specc.tokenizer"):
            raise SpecError(f"'{path}' carries no tokenizer: it was exported without --checkpoint",
                            Span(str(path), 0, 0), hint="export from a trained run: --checkpoint RUN_DIR")
        self.tokenizer = Tokenizer.from_json(json.loads(meta["specc.tokenizer"]))
        self.slots = [tuple(s) for s in json.loads(meta["specc.cache"])]
        hyper = json.loads(meta["specc.hyperparameters"])
        self.ctx = int(hyper.get("ctx", 1 << 30))
        self.session = _session(decode, threads)
        self.names = [f"past.{i}.{kv}" for i in range(len(self.slots)) for kv in "kv"]

    def _empty(self):
        return {n: np.zeros((1, kv, 0, hd), np.float32)
                for n, (kv, hd) in zip(self.names, [s for s in self.slots for _ in (0, 1)])}

    def _prefill(self, ids: list[int]):
        outs = self.session.run(None, {"tokens": np.array([ids], dtype=np.int64), **self._empty()})
        return outs[0][0, -1], dict(zip(self.names, outs[1:]))

    def generate(self, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, seed: int = 0, overflow: str = DEFAULT_OVERFLOW) -> Iterator[int]:
        rng = np.random.default_rng(seed)
        ids = list(prompt_ids)
        if not ids:
            raise ValueError("an empty prompt: a model needs at least one token to continue")
        start = prompt_start(len(ids), self.ctx)
        logits, cache = self._prefill(ids[start:])
        for step in range(max_new_tokens):
            token = _choose(logits, temperature, top_k, rng)
            ids.append(token)
            yield token
            if step == max_new_tokens - 1:
                return  # no run for logits nobody will read
            moved, start = start, window_start(start, len(ids), self.ctx, overflow)
            if start != moved:  # the window moved: positions changed, the cache is stale
                logits, cache = self._prefill(ids[start:])
            else:
                outs = self.session.run(None, {"tokens": np.array([[token]], dtype=np.int64), **cache})
                logits, cache = outs[0][0, -1], dict(zip(self.names, outs[1:]))


def _choose(logits: np.ndarray, temperature: float, top_k: int | None, rng) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if top_k:
        kth = np.sort(z)[-min(top_k, z.shape[-1])]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))
