"""The weights an exported .onnx holds, read from its graph without loading them: how many, of which types, where
(inline or in a data file), for `specc inspect`.

A weight is an initializer of rank 1 or more of a floating or 8-bit integer type. Not weights: the scalars
onnxruntime's constant folding leaves in an int8 file (a quantized weight's scale and zero point, the graph's own
constants), and integer shape constants. No layer kind declares a parameter of rank 0 (every zoo spec checked), so
in a file specc wrote this counts the spec's parameters, each stored tensor once.
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


def read_weights(path: str | Path) -> Weights:
    import onnx
    proto = onnx.load(str(path), load_external_data=False)  # the dims are in the file; nothing else is read
    weights = Weights()
    for tensor in proto.graph.initializer:
        kind = WEIGHT_TYPES.get(tensor.data_type)
        if kind is None or len(tensor.dims) == 0:
            continue
        n = math.prod(tensor.dims)
        weights.count += n
        weights.by_type[kind] += n
        weights.quantized += n if kind in ("int8", "uint8") else 0
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            weights.locations.update(e.value for e in tensor.external_data if e.key == "location")
        else:
            weights.inline += n
    return weights
