"""A compiled spec: the IR and its analysis, as the library's users and its backends receive it (torch-free).
It lives beside the pipeline's stages, not in the package's __init__, so a backend can import it without importing
the package that imports the backends."""

from __future__ import annotations

from .analysis import Analysis, analyse
from .elaborate import load as _load_model
from .elaborate import load_saved as _load_saved_model
from .elaborate import loads as _loads_model
from .ir import Model


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


def load_saved(sources, uses, preset: str | None = None, overrides: dict | None = None) -> Compiled:
    """Like load, from saved sources (a run directory's): see elaborate.load_saved."""
    return Compiled(_load_saved_model(sources, uses, preset, overrides))
