"""A model's contract with whatever runs it, computed once from the IR (torch-free): what goes in and comes out,
the vocabulary, the context, causality and the shape of its KV cache.

Training, sampling, export and generation read these facts here and nowhere else; none is read from a
hyperparameter's name (a spec may call its context `ctx` or `block_size`). The contract travels with an exported
model as one JSON entry of its metadata (`specc.contract`), so `specc generate` needs neither the spec nor torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from . import ir
from .errors import SpecError
from .kinds import KINDS, Args
from .shapes import Sym


@dataclass(frozen=True)
class Contract:
    language_model: bool  # token ids [batch, seq] in, logits [batch, seq, vocab] out
    causal: bool  # no position reads a later one: next-token training and a KV cache make sense
    inputs: tuple[str, ...]  # the inputs a caller must give, in order (others have defaults)
    outputs: tuple[str, ...]
    vocab: int | None  # a language model's logits width
    ids: int | None  # int inputs take ids 0 .. ids - 1: the smallest table a layer looks them up in
    context: int | None  # the longest sequence it takes: a fixed length, or the bound of `seq <= ctx`
    cache: tuple[tuple[int, int], ...]  # (kv_heads, head_dim) of every attention application, in the order they run
    # Some layer reads a second tensor besides its piped one (cross-attention reading an encoder's output): an
    # encoder-decoder. Training, sampling and ONNX export's encoder and decoding graphs take one with a source and
    # a target (below).
    encoder_decoder: bool = False
    # (kv_heads, head_dim) of every cross-attention application, in the order they run: cached per memory position
    memory_cache: tuple[tuple[int, int], ...] = ()
    # A sequence-to-sequence model (`is_seq2seq`): the input the encoder reads and the one whose positions the
    # logits follow (the decoder's), and the longest source. Its `context` is the target's, `causal` says whether
    # a target position reads later ones, and `cache` holds the decoder's self-attention only.
    source: str | None = None
    target: str | None = None
    source_context: int | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data) -> Contract:
        """The contract an exported file describes; ValueError when the description is not one."""
        def count(v, none=False):
            return (none and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)

        later = {"encoder_decoder": False, "memory_cache": [], "source": None, "target": None,
                 "source_context": None}  # fields newer than the first files: optional
        if isinstance(data, dict):
            data = {**later, **data}
        if not isinstance(data, dict) or set(data) != {f for f in cls.__dataclass_fields__}:
            raise ValueError(f"expected an object with {', '.join(cls.__dataclass_fields__)}")
        names = data["inputs"], data["outputs"]
        if not all(isinstance(data[k], bool) for k in ("language_model", "causal")) \
                or not all(isinstance(n, list) and all(isinstance(x, str) for x in n) for n in names) \
                or not all(count(data[k], none=True) for k in ("vocab", "ids", "context")) \
                or not isinstance(data["cache"], list) \
                or not all(isinstance(s, list) and len(s) == 2 and all(map(count, s)) for s in data["cache"]) \
                or not isinstance(data["encoder_decoder"], bool) or not isinstance(data["memory_cache"], list) \
                or not all(isinstance(s, list) and len(s) == 2 and all(map(count, s)) for s in data["memory_cache"]) \
                or not all(data[k] is None or isinstance(data[k], str) for k in ("source", "target")) \
                or not count(data["source_context"], none=True):
            raise ValueError("a value has the wrong type")
        return cls(data["language_model"], data["causal"], tuple(data["inputs"]), tuple(data["outputs"]),
                   data["vocab"], data["ids"], data["context"], tuple(tuple(s) for s in data["cache"]),
                   data["encoder_decoder"], tuple(tuple(s) for s in data["memory_cache"]), data["source"],
                   data["target"], data["source_context"])


def _bound(dim) -> int | None:
    return dim if isinstance(dim, int) else dim.bound if isinstance(dim, Sym) else None


def contract(model: ir.Model) -> Contract:
    lm = is_language_model(model)
    pair = seq2seq_inputs(model)
    first = pair[1] if pair else model.inputs[0] if model.inputs else None
    context = _bound(first.type.shape[-1]) if first is not None and first.type.rank else None
    on_target = (lambda layer: pair[1].type.shape[-1] in layer.input.shape) if pair else None
    return Contract(
        language_model=lm, causal=is_causal(model, on_target),
        inputs=tuple(i.name for i in model.inputs if i.default is None),
        outputs=tuple(name for name, _ in model.outputs),
        vocab=model.outputs[0][1].shape[-1] if (lm or pair) and isinstance(model.outputs[0][1].shape[-1], int)
        else None,
        ids=min((n for n in (KINDS[layer.kind].id_range(Args(layer.args)) for layer, _ in ir.applications(model.root)
                             if layer.input.dtype == "int") if n), default=None),
        context=context if lm or pair else None,
        cache=cache_slots(model, on_target),
        encoder_decoder=is_encoder_decoder(model),
        memory_cache=memory_cache_slots(model),
        source=pair[0].name if pair else None, target=pair[1].name if pair else None,
        source_context=_bound(pair[0].type.shape[-1]) if pair else None)


def seq2seq_inputs(model: ir.Model) -> tuple[ir.Input, ir.Input] | None:
    """(source, target) of a sequence-to-sequence model: an encoder-decoder with two token-id inputs [batch, len]
    (others have defaults), each of its own symbolic length, and one output of logits [batch, len, vocab] whose
    length is the target's, the same dim (a fact of the types, whatever the inputs are called); else None."""
    if not is_encoder_decoder(model) or len(model.outputs) != 1:
        return None
    given = [i for i in model.inputs if i.default is None]
    out = model.outputs[0][1]
    if len(given) != 2 or any(i.type.dtype != "int" or i.type.rank != 2 or not isinstance(i.type.shape[1], Sym)
                              for i in given):
        return None
    if given[0].type.shape[1] == given[1].type.shape[1] or given[0].type.shape[0] != given[1].type.shape[0]:
        return None
    if out.dtype != "float" or out.rank != 3 or not isinstance(out.shape[2], int):
        return None
    target = next((i for i in given if tuple(out.shape[:2]) == tuple(i.type.shape)), None)
    if target is None:
        return None
    return (given[0] if target is given[1] else given[1]), target


def is_encoder_decoder(model: ir.Model) -> bool:
    """Some layer reads a tensor besides its piped input (a kind's tensor argument: cross-attention's memory)."""
    return any(KINDS[layer.kind].given_tensor_args(Args(layer.args)) for layer, _ in ir.applications(model.root))


NOT_YET_ENCODER_DECODER = "is not yet supported for encoder-decoder models"


def refuse_encoder_decoder(model: ir.Model, what: str) -> None:
    """A located SpecError when `what` (sampling, incremental decoding) meets a model with cross-attention that is
    not one source and one target of token ids."""
    layer = next((layer for layer, _ in ir.applications(model.root)
                  if KINDS[layer.kind].given_tensor_args(Args(layer.args))), None)
    if layer is not None:
        raise SpecError(f"{what} {NOT_YET_ENCODER_DECODER} (model '{model.name}' reads a second tensor: "
                        f"{layer.kind} '{layer.name}')", layer.span,
                        hint="specc compile counts it, to_torch, --emit-torch and specc export --onnx (its full graph) "
                             "build it; specc train, sample and generate take one with a source and a target of "
                             "token ids")


def is_language_model(model: ir.Model) -> bool:
    """Token ids [batch, seq] in (other inputs optional), logits [batch, seq, vocab] out: trained on text,
    exported with a `tokens` input and a `logits` output."""
    first, rest = model.inputs[0], model.inputs[1:]
    return (first.type.dtype == "int" and sum(isinstance(d, Sym) for d in first.type.shape) >= 2
            and all(i.default is not None for i in rest) and len(model.outputs) == 1
            and model.outputs[0][1].rank == 3)


def is_causal(model: ir.Model, on_target=None) -> bool:
    """No layer reads later positions (each kind declares it): next-token training and a KV cache make sense.
    `on_target`: only the layers it accepts count (a sequence-to-sequence model's decoder; its encoder reads both
    ways)."""
    return not any(KINDS[layer.kind].reads_later_positions(Args(layer.args))
                   for layer, _ in ir.applications(model.root) if on_target is None or on_target(layer))


def memory_cache_slots(model: ir.Model) -> tuple[tuple[int, int], ...]:
    """(kv_heads, head_dim) of each cross-attention application in execution order: the keys and values of the
    memory (the encoder's output), computed once per source sequence."""
    slots = []
    for layer, times in ir.applications(model.root):
        shape = KINDS[layer.kind].memory_cache_shape(Args(layer.args))
        if shape:
            slots += [tuple(shape)] * times
    return tuple(slots)


def cache_slots(model: ir.Model, on_target=None) -> tuple[tuple[int, int], ...]:
    """(kv_heads, head_dim) of each attention application in execution order: the shape of the KV cache (of the
    layers `on_target` accepts: a sequence-to-sequence model's decoder)."""
    slots = []
    for layer, times in ir.applications(model.root):
        if on_target is not None and not on_target(layer):
            continue
        shape = KINDS[layer.kind].cache_shape(Args(layer.args))
        if shape:
            slots += [tuple(shape)] * times
    return tuple(slots)
