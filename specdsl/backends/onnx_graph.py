"""One graph of an ONNX export: traced from a torch module by torch.onnx, rewritten with the weights named by their
parameter paths and specc's metadata, checked by onnx.checker, and loaded by onnxruntime; and the tolerance every
comparison with PyTorch is held to. onnx_export.py (the full and decoder-only decoding graphs) and onnx_seq2seq.py
(an encoder-decoder's encoder and decoding graphs) build on it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from ..contract import contract
from ..errors import SpecError
from ..version import __version__

TOLERANCE = 1e-4  # float32: the command fails above this
# fp16 (--dtype fp16), against the fp32 model in PyTorch: at most 1% of the largest |logit| (or 1e-2 when logits are
# under 1). fp16 rounds to 2**-11 relative (4.9e-4); the tiny zoo models measured 1.3e-3 to 2.2e-3 against logits
# of 1.6 to 2.5 (0.1%), so the bound leaves ten times that for deeper models, and still catches a wrong graph,
# which is off by the logits' own scale.
FP16_TOLERANCE = 1e-2


def tolerance(dtype: str, scale: float) -> float:
    """The largest |difference| from PyTorch's fp32 outputs accepted for an export in `dtype`, whose reference
    outputs reach |`scale`|."""
    return TOLERANCE if dtype == "fp32" else FP16_TOLERANCE * max(1.0, scale)


def torch_dtype(dtype: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16}[dtype]


def numpy_dtype(dtype: str):
    return {"fp32": np.float32, "fp16": np.float16}[dtype]


class ExportError(SpecError):
    """A graph that onnxruntime does not compute as PyTorch does: the export leaves no file."""


@contextlib.contextmanager
def quiet():
    """torch.onnx prints progress lines and warnings; a CLI shows its own report instead."""
    sink = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        try:
            yield sink
        finally:
            logging.disable(previous)


def metadata(compiled, tokenizer: dict | None, graph: str, dtype: str = "fp32") -> dict[str, str]:
    """specc's metadata_props of one graph (`graph`: full, encode or decode; `dtype`: fp32 or fp16; docs/onnx.md,
    "Metadata")."""
    m = compiled.model
    meta = {
        "specc.version": __version__,
        "specc.model": m.name,
        "specc.graph": graph,
        "specc.spec": m.source,
        "specc.spec_path": m.path,
        "specc.preset": m.preset or "",
        "specc.hyperparameters": json.dumps(m.hyperparameters),
        "specc.tokenizer": json.dumps(tokenizer) if tokenizer else "",
        "specc.params": str(compiled.analysis.total),
        "specc.dtype": dtype,
        "specc.contract": json.dumps(contract(m).to_json()),
        # every file the model was compiled from (the main one first, then what it `use`s): the file says exactly
        # which source it is
        "specc.sources": json.dumps([{"name": name, "text": text} for name, text in m.sources]),
    }
    return meta


def export_program(module, args: tuple, math_attention: bool = False, **kw):
    """torch.onnx.export (the torch.export-based exporter) of `module` on `args`, quietly, as a ModelProto in memory
    (never saved by torch: protobuf serializes no message past 2 GiB, and save_graph writes it); `kw` are its
    input_names, output_names and dynamic_shapes. optimize=False keeps every weight under its parameter path (the
    exporter's optimizer folds transposes into renamed copies); onnxruntime does that folding itself when it loads
    the file. `math_attention` traces scaled_dot_product_attention with its math backend: with a float mask (T5's
    position bias) torch 2.13's ONNX decompositions otherwise fail ("Cannot view a tensor with shape [B, T, h,
    hd] ... as a tensor with shape [B, T, h * hd]")."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = sdpa_kernel(SDPBackend.MATH) if math_attention else contextlib.nullcontext()
    with quiet(), torch.no_grad(), backend:
        program = torch.onnx.export(module, args, dynamo=True, optimize=False, **kw)
        return _inputs_named_back(program.model_proto, kw.get("input_names") or [])


def _inputs_named_back(proto, input_names: list[str]):
    """torch 2.13's exporter names a graph input after the output that returns it unchanged (a model that is the
    identity in eval mode, such as a lone Dropout): the file then asks for an input called 'output'. The input gets
    its name back, and an Identity node computes the output from it."""
    from onnx import helper
    outputs = {o.name for o in proto.graph.output}
    for given, graph_input in zip(input_names, proto.graph.input):
        if graph_input.name in outputs and graph_input.name != given:
            for node in proto.graph.node:
                node.input[:] = [given if i == graph_input.name else i for i in node.input]
            proto.graph.node.insert(0, helper.make_node("Identity", [given], [graph_input.name]))
            graph_input.name = given
    return proto


def save_graph(proto, metadata: dict[str, str], stage, target: Path, strip_prefix: str = "") -> Path:
    """The exported graph `proto` with initializers named by their parameter paths (a wrapper's prefix removed),
    without the exporter's per-node stack traces (a tenth of the file), and with specc's metadata, written for
    `target` into the export's staging folder `stage` (onnx_files.Staging) and checked there. Returns the staged
    path."""
    if strip_prefix:
        renames = {t.name: t.name[len(strip_prefix):] for t in proto.graph.initializer
                   if t.name.startswith(strip_prefix)}
        for t in proto.graph.initializer:
            t.name = renames.get(t.name, t.name)
        for node in proto.graph.node:
            node.input[:] = [renames.get(i, i) for i in node.input]
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return stage.write(proto, target)


def open_session(path: Path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def first(out):
    return out[0] if isinstance(out, (tuple, list)) else out
