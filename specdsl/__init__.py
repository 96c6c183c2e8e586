"""specc: a declarative language for neural-network models, and its compiler.

    import specdsl
    ir = specdsl.load("specs/gpt2.spec", preset="medium", overrides={"layers": 6})
    ir.params.total            # exact parameter count (see specdsl.analysis for the conventions)

The core (parse, elaborate, IR, analysis) imports neither torch nor onnx.
"""

from __future__ import annotations

import importlib
import importlib.util

from .version import __version__

# Names the package re-exports, imported on first use (PEP 562): `import specdsl.cli` for `specc --help` then
# costs nothing of the compiler, while `specdsl.load(...)` and `from specdsl import Compiled` work as ever.
_LAZY = {"Analysis": "analysis", "Compiled": "compiled", "load": "compiled", "loads": "compiled",
         "Span": "errors", "SpecError": "errors", "Model": "ir"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: specdsl.parse, as before
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'specdsl' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = ["load", "loads", "to_torch", "load_weights", "emit_torch", "Compiled", "SpecError", "Span", "Model",
           "Analysis", "__version__"]


def to_torch(compiled, device="cpu", dtype=None):
    """The spec as a torch.nn.Module whose parameter names are the IR's parameter paths (imports torch)."""
    import torch

    from .backends.torch_backend import to_torch as _to_torch
    return _to_torch(compiled, device=device, dtype=dtype or torch.float32)


def load_weights(module, source, naming: str | None = None, strict: bool = True, *, family: str | None = None,
                 config=None) -> dict:
    """Copy a state dict, a weights file or a Hugging Face checkpoint folder into a compiled module: the family of
    names from the folder's config.json or family= (naming= is its old name), the config's architecture checked
    against the spec (backends/weights.py)."""
    from .backends.weights import load_weights as _load_weights
    return _load_weights(module, source, naming=naming, strict=strict, family=family, config=config)


def emit_torch(compiled) -> str:
    """A standalone PyTorch file (no import of specdsl) that builds the same module, with the same names."""
    from .backends.emit_torch import emit_torch as _emit
    from .compiled import Compiled
    return _emit(compiled.model if isinstance(compiled, Compiled) else compiled)
