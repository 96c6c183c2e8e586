"""The weights an exported .onnx holds, read from its graph without loading them: how many, of which types, where
(inline or in a data file), for `specc inspect`.

A weight is an initializer of rank 1 or more of a floating or 8-bit integer type. Not weights: the scalars
onnxruntime's constant folding leaves in an int8 file (a quantized weight's scale and zero point, the graph's own
constants), and integer shape constants. No layer kind declares a parameter of rank 0 (every zoo spec checked). The
tensors that folding computes from no weight at all (a rotary table from its frequencies) become Constant nodes
again before an int8 file is written (constants_to_nodes), so in a file specc wrote this counts the spec's
parameters, each stored tensor once.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# onnx.TensorProto's data types that hold weights: FLOAT, UINT8, INT8, FLOAT16, DOUBLE, BFLOAT16.
WEIGHT_TYPES = {1: "float32", 2: "uint8", 3: "int8", 10: "float16", 11: "float64", 16: "bfloat16"}


@dataclass
class Weights:
    count: int = 0
    by_type: Counter = field(default_factory=Counter)  # elements per type name
    quantized: int = 0  # elements of int8/uint8 weights (a --quantize int8 file)
    locations: set[str] = field(default_factory=set)  # data files named by external initializers
    inline: int = 0  # elements stored in the .onnx itself


def is_weight(tensor) -> bool:
    """Whether an initializer (onnx.TensorProto) is a weight, by the rule above."""
    return tensor.data_type in WEIGHT_TYPES and len(tensor.dims) > 0


def read_weights(path: str | Path) -> Weights:
    import onnx
    proto = onnx.load(str(path), load_external_data=False)  # the dims are in the file; nothing else is read
    weights = Weights()
    for tensor in proto.graph.initializer:
        if not is_weight(tensor):
            continue
        kind = WEIGHT_TYPES[tensor.data_type]
        n = math.prod(tensor.dims)
        weights.count += n
        weights.by_type[kind] += n
        weights.quantized += n if kind in ("int8", "uint8") else 0
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            weights.locations.update(e.value for e in tensor.external_data if e.key == "location")
        else:
            weights.inline += n
    return weights


def constants_to_nodes(folded, source) -> None:
    """In `folded` (an optimized, quantized copy of the graph `source`), turn every float initializer of rank 1 or
    more that `source` computes from no initializer into a Constant node: the initializers left are the weights
    (and values computed from them, as a transposed weight), so read_weights counts the spec's parameters. A name
    `source` does not know stays an initializer: counted, never hidden."""
    import onnx
    from_weights = {t.name for t in source.graph.initializer}
    known = set(from_weights)
    for node in source.graph.node:  # in topological order, as ONNX requires
        known.update(node.output)
        if any(i in from_weights for i in node.input):
            from_weights.update(node.output)
    constants = [t for t in folded.graph.initializer
                 if is_weight(t) and t.name in known and t.name not in from_weights]
    for tensor in constants:
        folded.graph.initializer.remove(tensor)
    nodes = [onnx.helper.make_node("Constant", [], [t.name], value=t) for t in constants]
    rest = list(folded.graph.node)
    del folded.graph.node[:]
    folded.graph.node.extend(nodes + rest)
