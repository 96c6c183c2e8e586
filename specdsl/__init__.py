"""specc: a declarative language for neural-network models, and its compiler.

    import specdsl
    ir = specdsl.load("specs/gpt2.spec", preset="medium", overrides={"layers": 6})
    ir.params.total            # exact parameter count (see specdsl.analysis for the conventions)

The core (parse, elaborate, IR, analysis) imports neither torch nor onnx.
"""

from __future__ import annotations

from .analysis import Analysis, analyse
from .elaborate import load as _load_model
from .elaborate import loads as _loads_model
from .errors import Span, SpecError
from .ir import Model

__version__ = "0.1.0"


class Compiled:
    """A loaded spec: the IR (`.model`) and its analysis (`.params`, `.flops`, `.memory`, `.to_json()`)."""

    def __init__(self, model: Model):
        self.model = model
        self.analysis: Analysis = analyse(model)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def params(self) -> Analysis:
        return self.analysis

    def to_json(self) -> dict:
        return self.analysis.to_json()

    def __repr__(self) -> str:
        return f"<specdsl.Compiled {self.name}: {self.analysis.total:,} params>"


def load(path, preset: str | None = None, overrides: dict | None = None) -> Compiled:
    """Parse, elaborate and analyse a spec file. Raises SpecError with every error found."""
    return Compiled(_load_model(path, preset, overrides))


def loads(text: str, preset: str | None = None, overrides: dict | None = None, name: str = "<string>") -> Compiled:
    """Like load, from a string."""
    return Compiled(_loads_model(text, preset, overrides, name))


__all__ = ["load", "loads", "to_torch", "load_weights", "emit_torch", "Compiled", "SpecError", "Span", "Model",
           "Analysis", "__version__"]


def to_torch(compiled, device="cpu", dtype=None):
    """The spec as a torch.nn.Module whose parameter names are the IR's parameter paths (imports torch)."""
    import torch

    from .backends.torch_backend import to_torch as _to_torch
    return _to_torch(compiled, device=device, dtype=dtype or torch.float32)


def load_weights(module, source, naming: str | None = None, strict: bool = True) -> dict:
    """Copy a state dict or .safetensors weights into a compiled module; naming="hf" maps Hugging Face names."""
    from .backends.weights import load_weights as _load_weights
    return _load_weights(module, source, naming=naming, strict=strict)


def emit_torch(compiled) -> str:
    """A standalone PyTorch file (no import of specdsl) that builds the same module, with the same names."""
    from .backends.emit_torch import emit_torch as _emit
    return _emit(compiled.model if isinstance(compiled, Compiled) else compiled)
