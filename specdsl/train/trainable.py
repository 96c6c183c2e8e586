"""What `specc train` can train, decided from the IR before any data is read or torch is imported.

The loop (loop.py) trains two kinds of model: a language model (`contract.is_language_model`: token ids in, logits out,
on text) and otherwise a classifier of scikit-learn's 8x8 digits (tasks.Classification). A spec that compiles but is
neither (two outputs, pooled features, a second input the data cannot fill) would end in a traceback mid-run; this
says so at the line that is wrong, like every other mistake.
"""

from __future__ import annotations

from .. import ir
from ..contract import contract
from ..errors import Span, SpecError
from ..kinds import KINDS
from ..shapes import Sym, TensorType, format_shape

# data.digits_dataset: 64 pixels flat, or LeNet-5's 32x32 image (each pixel repeated 4x4); labels 0 to 9.
DIGITS_INPUTS = ((64,), (1, 32, 32))
DIGITS_CLASSES = 10
SUPPORTED = ("specc train trains a language model (int[batch, seq <= ctx] token ids in, float[batch, seq, vocab] "
             "logits out), an encoder-decoder (source and target token ids in, the target's logits out) or a "
             "classifier of 8x8 digits (float[batch, 64] or float[batch, 1, 32, 32] in, "
             "float[batch, 10] out)")


def check_trainable(model: ir.Model) -> None:
    """Raise a located SpecError when the training loop cannot train `model`; return when it can."""
    first = model.inputs[0]
    facts = contract(model)
    if facts.encoder_decoder:
        if facts.source is None:  # contract.seq2seq_inputs says what one needs
            layer = next(layer for layer, _ in ir.applications(model.root) if KINDS[layer.kind].tensor_args())
            _refuse(f"specc train trains an encoder-decoder with two token inputs of their own lengths (source and "
                    f"target, int[batch, len <= ctx]) and one output of logits [batch, target len, vocab]; model "
                    f"'{model.name}' reads a second tensor ({layer.kind} '{layer.name}') but is not one", layer.span)
        return
    for extra in model.inputs[1:]:
        if extra.default is None:
            _refuse(f"specc train feeds one input, '{first.name}'; '{extra.name}' has no default", extra.span)
    if len(model.outputs) != 1:
        _refuse(f"model '{model.name}' returns {len(model.outputs)} outputs; specc train trains one",
                _output_span(model, 1))
    out = model.outputs[0][1]
    if facts.language_model:
        batch, seq = first.type.shape[0], first.type.shape[-1]
        if first.type.rank != 2:
            _refuse(f"a language model's input is token ids [batch, seq], got {first.type}", first.span)
        if facts.context is None:
            _refuse(f"training needs a bounded sequence: declare the input as int[batch, seq <= ctx], got "
                    f"{first.type}", first.span)
        if out.dtype != "float" or out.shape[:2] != (batch, seq) or not isinstance(out.shape[2], int):
            _refuse(f"a language model returns logits float[{batch}, {seq}, vocab], got {out}", _output_span(model, 0))
    elif first.type.dtype == "int":
        _refuse(f"the input is token ids, so specc train trains a language model, which returns logits "
                f"[batch, seq, vocab]; this returns {out}", _output_span(model, 0))
    else:
        batch = first.type.shape[0] if first.type.rank else None
        if not isinstance(batch, Sym) or first.type.shape[1:] not in DIGITS_INPUTS:
            shapes = " or ".join(format_shape(("batch",) + s) for s in DIGITS_INPUTS)
            _refuse(f"a classifier trains on 8x8 digits, {shapes}; this input is {first.type}", first.span)
        if not _is_logits(out, batch):
            _refuse(f"a classifier returns float[{batch}, classes] for the {DIGITS_CLASSES} digits, got {out}",
                    _output_span(model, 0))


def _is_logits(out: TensorType, batch: Sym) -> bool:
    return (out.dtype == "float" and out.rank == 2 and out.shape[0] == batch and isinstance(out.shape[1], int)
            and out.shape[1] >= DIGITS_CLASSES)


def _refuse(message: str, span: Span) -> None:
    raise SpecError(message, span, hint=SUPPORTED)


def _output_span(model: ir.Model, index: int) -> Span:
    """Where output `index` is computed: the layer or block whose call produces it, the input returned as it is, or
    else the model."""
    ref = model.root.outputs[index]
    inputs = {i.name: i.span for i in model.inputs}
    if ref in inputs:
        return inputs[ref]
    children = {c.name: c for c in model.root.children}
    op = next((op for op in model.root.ops if op.out == ref), None)
    if op is not None and op.target in children:
        return children[op.target].span
    return model.root.span
