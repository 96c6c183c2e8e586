"""The contract every layer kind keeps, checked from its declaration and one example call (Kind.examples):

- the spec with that one layer compiles, and the torch module's parameters are the declared names and shapes;
- the declared FLOPs equal what torch's FlopCounterMode counts on the same input (attention through SDPA's math
  kernel, so its matmuls are ones the counter sees; element-wise work counts 0 on both sides);
- the ejected file (`--emit-torch`) builds a module that loads the compiled one's weights and computes the same;
- the ONNX export runs on onnxruntime and computes the same as torch.

tests/test_kinds.py runs it over every built-in kind; tests/test_kind_plugin.py over a kind from another package.
"""

from __future__ import annotations

from math import prod
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import specdsl
from specdsl.backends.emit_torch import emit_torch
from specdsl.contract import contract
from specdsl.kinds import KINDS, Args, Example
from specdsl.shapes import Sym

BATCH = 2  # an unbounded symbolic dim runs at this size


def example_spec(kind: str, example: Example) -> str:
    extra = "".join(f"    input {name}: {type_}\n" for name, type_ in example.tensors)  # what tensor args name
    return (f"model one_{kind.lower()} {{\n    input x: {example.input}\n{extra}"
            f"    return x -> layer: {kind}({example.call})\n}}\n")


def compile_example(kind: str, example: Example):
    return specdsl.loads(example_spec(kind, example), name=f"{kind}.spec")


def example_input(compiled, seed: int = 0) -> tuple[torch.Tensor, int]:
    """A concrete input for the model's one input (symbolic dims at their bound, or BATCH), and the product of
    the symbolic dims' sizes: FLOPs per token times it are the FLOPs of this input."""
    (x, *_), symbolic = example_inputs(compiled, seed)
    return x, symbolic


def example_inputs(compiled, seed: int = 0) -> tuple[tuple[torch.Tensor, ...], int]:
    """Concrete tensors for every input of the model (the piped one, then those tensor arguments name), a symbol
    the same size wherever it appears; and the product of the first input's symbolic sizes."""
    gen = torch.Generator().manual_seed(seed)
    tensors, symbolic = [], None
    for inp in compiled.model.inputs:
        shape = [d if isinstance(d, int) else (d.bound or BATCH) for d in inp.type.shape]
        if symbolic is None:
            symbolic = prod(n for d, n in zip(inp.type.shape, shape) if isinstance(d, Sym))
        if inp.type.dtype == "int":
            tensors.append(torch.randint(0, contract(compiled.model).ids, shape, generator=gen))
        else:
            tensors.append(torch.randn(*shape, generator=gen))
    return tuple(tensors), symbolic


def check_parameters(compiled, module) -> None:
    layer = compiled.model.root.children[0]
    declared = {f"layer.{name}": shape for name, shape in KINDS[layer.kind].params(Args(layer.args)).items()}
    built = {name: tuple(p.shape) for name, p in module.named_parameters()}
    assert built == declared
    assert sum(p.numel() for p in module.parameters()) == compiled.analysis.total


def check_flops(compiled, module, x, symbolic: int) -> None:
    xs = x if isinstance(x, tuple) else (x,)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        module(*xs)
    assert counter.get_total_flops() == compiled.analysis.forward_flops * symbolic


def check_ejected(compiled, module, x, folder: Path) -> None:
    xs = x if isinstance(x, tuple) else (x,)
    source = emit_torch(compiled.model)
    path = folder / "ejected.py"
    path.write_text(source, encoding="utf-8")
    namespace: dict = {"__name__": "ejected"}
    exec(compile(source, str(path), "exec"), namespace)
    ejected = namespace["Model"]().eval()
    ejected.load_state_dict(module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ejected(*xs), module(*xs), rtol=0, atol=0)


def check_onnx(compiled, module, x: torch.Tensor | tuple, folder: Path) -> None:
    """export() compares onnxruntime with its torch module on two batch sizes (and lengths) and refuses a
    difference over its tolerance; here: it ran those checks, and the file runs on this input (or these inputs:
    the piped one, then those tensor arguments name) too."""
    import onnxruntime as ort

    from specdsl.backends.onnx_export import export
    from specdsl.backends.onnx_graph import TOLERANCE
    xs = x if isinstance(x, tuple) else (x,)
    out = folder / "layer.onnx"
    report = export(compiled, out)
    assert len(report["checks"]) >= 2 and report["max_abs_diff"] <= TOLERANCE
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(xs)
    got = session.run(None, {name: t.numpy() for name, t in zip(names, xs)})[0]
    assert got.shape == tuple(module(*xs).shape)


def check_kind(kind: str, example: Example, folder: Path, onnx: bool = True) -> None:
    compiled = compile_example(kind, example)
    torch.manual_seed(0)
    module = specdsl.to_torch(compiled).eval()
    xs, symbolic = example_inputs(compiled)
    check_parameters(compiled, module)
    check_flops(compiled, module, xs, symbolic)
    check_ejected(compiled, module, xs, folder)
    if onnx:
        check_onnx(compiled, module, xs, folder)
