"""`specc generate` and `specc inspect`: an exported model on onnxruntime, without torch.

Generation runs the decoding graph (OUT.decode.onnx) with its KV cache: the prompt in one call, then one token a
call. Past the model's context it follows the same rule as `specc sample` (specdsl.context_window: "slide" runs the
last ctx tokens again for every token, "shift" keeps the last ctx/2 and goes on with the cache), so with temperature
0 both produce the same tokens. A decoding graph is used only beside the full graph of its own export (their
`specc.export_id` agree), and every metadata value is checked: a crafted or damaged file is a SpecError naming the file
and the key, never a traceback. A sequence-to-sequence export runs through onnx_translate.py
(onnx_translate.open_generator says which a file needs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ..context_window import DEFAULT_OVERFLOW, prompt_start, window_start
from ..contract import Contract
from ..errors import Span, SpecError
from ..tokenizer import Tokenizer

AGAIN = "export the model again: specc export SPEC --onnx --checkpoint RUN_DIR -o OUT.onnx"


def companion(path: str | Path, kind: str) -> Path:
    """OUT.decode.onnx, OUT.encode.onnx or OUT.int8.onnx beside OUT.onnx."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{kind}.onnx")


def cache_names(prefix: str, slots: int) -> list[str]:
    """`prefix.<i>.k`, `prefix.<i>.v` for each of `slots` attention applications, in order (past, present,
    memory): the names of a graph's cache inputs and outputs."""
    return [f"{prefix}.{i}.{kv}" for i in range(slots) for kv in "kv"]


def export_paths(model, out: str | Path, quantize: str | None, dtype: str = "fp32",
                 external: bool = False) -> list[Path]:
    """The graphs an export of `model` to `out` writes, each checked as a target (specdsl.io.check_output), and
    with `external` data, each one's data file (onnx_files.check_data_target). Torch-free, so `specc export` checks
    them before it imports torch."""
    from ..contract import contract
    from ..io import check_output
    from .onnx_files import check_data_target, check_dtype
    check_dtype(dtype, quantize)
    paths = [Path(out)]
    facts = contract(model)
    if facts.source is not None:  # a sequence-to-sequence model: its encoder graph and its decoding graph
        paths += [companion(out, "encode"), companion(out, "decode")]
    elif facts.language_model and facts.causal:
        paths.append(companion(out, "decode"))
    if quantize:  # OUT.int8.onnx, and the int8 graphs generate runs beside it
        int8 = companion(out, "int8")
        paths.append(int8)
        if facts.source is not None:
            paths += [companion(int8, "encode"), companion(int8, "decode")]
        elif facts.language_model and facts.causal and facts.cache:
            paths.append(companion(int8, "decode"))
    for path in paths:
        check_output(path)
        if external:
            check_data_target(path)
    return paths


def read_metadata(path: str | Path) -> dict[str, str]:
    import onnx
    path = Path(path)
    try:
        regular = path.is_file()
    except OSError as e:  # a name too long for the file system, a loop of links
        raise SpecError(f"cannot read '{path}': {e.strerror}", Span(str(path), 0, 0)) from None
    if not regular:
        raise SpecError(f"no such ONNX file: '{path}'", Span(str(path), 0, 0))
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise SpecError(f"'{path}' is not an ONNX model: {str(e).splitlines()[0][:200]}", Span(str(path), 0, 0)) \
            from None
    if not proto.ir_version or not proto.HasField("graph"):  # any bytes parse as some protobuf, none as nothing
        raise SpecError(f"'{path}' is not an ONNX model: it has no graph", Span(str(path), 0, 0))
    return {p.key: p.value for p in proto.metadata_props}


def count_parameters(path: str | Path) -> int:
    """Elements of the file's weights (onnx_weights.read_weights), each stored tensor once."""
    from .onnx_weights import read_weights
    return read_weights(path).count


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types: a graph it cannot run
        raise SpecError(f"onnxruntime cannot load '{path}': {_first_line(e)}", Span(str(path), 0, 0)) from None


def cache_dtype(session, names: list[str]):
    """The numpy dtype of a graph's cache inputs `names` as the graph declares them (float16 for an fp16 export,
    float32 otherwise): an empty cache is fed in that type."""
    types = {i.name: i.type for i in session.get_inputs()}
    return np.float16 if names and types.get(names[0]) == "tensor(float16)" else np.float32


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _metadata_json(meta: dict[str, str], key: str, path: Path, check, what: str):
    """The JSON value of metadata `key`, or None when absent or empty; a SpecError naming the file and the key
    when it is not JSON or `check(value)` is false."""
    text = meta.get(key)
    if not text:
        return None
    try:
        value = json.loads(text)
        fits = check(value)
    except (ValueError, RecursionError):  # not JSON, or nested past Python's recursion limit
        fits = False
    if not fits:
        raise SpecError(f"'{path}': metadata '{key}' is not {what}", Span(str(path), 0, 0), hint=AGAIN)
    return value


def _tokenizer(meta: dict[str, str], path: Path) -> Tokenizer | None:
    data = _metadata_json(meta, "specc.tokenizer", path, lambda v: isinstance(v, dict), "a JSON object")
    if data is None:
        return None
    try:
        tokenizer = Tokenizer.from_json(data)
    except ValueError as e:
        raise SpecError(f"'{path}': metadata 'specc.tokenizer' is {e}", Span(str(path), 0, 0), hint=AGAIN) from None
    if tokenizer.mask:
        raise SpecError(f"'{path}' is a masked language model: it fills in [MASK] tokens from both sides and "
                        "does not continue text", Span(str(path), 0, 0),
                        hint="generate with a causal model (GPT, LLaMA, nanoGPT)")
    return tokenizer


def _contract(meta: dict[str, str], path: Path) -> Contract:
    """The model's contract (specdsl.contract): its context and cache, read from the file, never from a
    hyperparameter's name."""
    data = _metadata_json(meta, "specc.contract", path, lambda v: isinstance(v, dict), "a JSON object")
    try:
        return Contract.from_json(data)
    except ValueError as e:
        raise SpecError(f"'{path}': metadata 'specc.contract' is not a model's contract: {e}", Span(str(path), 0, 0),
                        hint=AGAIN) from None


class OnnxGenerator:
    def __init__(self, path: str | Path, threads: int | None = None):
        path = Path(path)
        meta = read_metadata(path)
        _tokenizer(meta, path)  # a masked language model is refused by its full graph already
        if meta.get("specc.graph") == "decode":
            decode, decode_meta = path, meta
        else:
            decode = companion(path, "decode")
            if not decode.is_file():
                raise SpecError(f"no decoding graph beside '{path}' (expected '{decode.name}')",
                                Span(str(path), 0, 0), hint="export a language model with `specc export ... --onnx`")
            decode_meta = read_metadata(decode)
            # A decoding graph left by an earlier export to the same name must not speak for this model.
            if not meta.get("specc.export_id") or decode_meta.get("specc.export_id") != meta["specc.export_id"]:
                raise SpecError(f"'{decode}' does not belong to '{path}': it was written by another export",
                                Span(str(decode), 0, 0), hint=AGAIN)
        tokenizer = _tokenizer(decode_meta, decode)
        if tokenizer is None:
            raise SpecError(f"'{path}' carries no tokenizer: it was exported without --checkpoint",
                            Span(str(path), 0, 0), hint="export from a trained run: --checkpoint RUN_DIR")
        self.tokenizer = tokenizer
        facts = _contract(decode_meta, decode)
        if facts.source is not None:
            raise SpecError(f"'{decode}' decodes a sequence-to-sequence model: run it with its encoder graph",
                            Span(str(decode), 0, 0),
                            hint="open it with onnx_translate.open_generator (specc generate does)")
        self.slots = list(facts.cache)
        self.ctx = facts.context or 1 << 30
        self.path = decode
        self.session = _session(decode, threads)
        self.names = cache_names("past", len(self.slots))
        self.dims = dict(zip(self.names, (s for s in self.slots for _ in "kv")))  # (kv_heads, head_dim)
        self.cache_dtype = cache_dtype(self.session, self.names)
        # The metadata must describe the graph: tokens and the cache [batch, kv_heads, past, head_dim] in; logits
        # [batch, new, vocab] and the cache out.
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = self.session.get_outputs()
        if set(shapes) != {"tokens", *self.names} or len(outputs) != 1 + len(self.names) \
                or len(outputs[0].shape) != 3 \
                or any(len(shapes[n]) != 4 or tuple(shapes[n][1::2]) != d for n, d in self.dims.items()):
            raise SpecError(f"'{decode}': metadata 'specc.contract' does not describe the graph's inputs and outputs",
                            Span(str(decode), 0, 0), hint=AGAIN)

    def _run(self, feeds: dict) -> list:
        try:
            return self.session.run(None, feeds)
        except Exception as e:  # onnxruntime's own exception types: a graph that does not run as its file says
            raise SpecError(f"onnxruntime failed running '{self.path}': {_first_line(e)}",
                            Span(str(self.path), 0, 0)) from None

    def _empty(self):
        return {n: np.zeros((1, kv, 0, hd), self.cache_dtype) for n, (kv, hd) in self.dims.items()}

    def _prefill(self, ids: list[int]):
        outs = self._run({"tokens": np.array([ids], dtype=np.int64), **self._empty()})
        return outs[0][0, -1], dict(zip(self.names, outs[1:]))

    def generate(self, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, seed: int = 0, overflow: str = DEFAULT_OVERFLOW) -> Iterator[int]:
        rng = np.random.default_rng(seed)
        vocab = self.tokenizer.data_size  # a model with a larger output vocabulary chooses among the ids we decode
        ids = list(prompt_ids)
        if not ids:
            raise ValueError("an empty prompt: a model needs at least one token to continue")
        start = prompt_start(len(ids), self.ctx)
        logits, cache = self._prefill(ids[start:])
        for step in range(max_new_tokens):
            token = _choose(logits[:vocab], temperature, top_k, rng)
            ids.append(token)
            yield token
            if step == max_new_tokens - 1:
                return  # no run for logits nobody will read
            moved, start = start, window_start(start, len(ids), self.ctx, overflow)
            if start != moved:  # the window moved: positions changed, the cache is stale
                logits, cache = self._prefill(ids[start:])
            else:
                outs = self._run({"tokens": np.array([[token]], dtype=np.int64), **cache})
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
