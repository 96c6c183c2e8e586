"""The layer kinds: the name used in the language -> its one declaration.

Importing a kind's module registers it (Kind.__init_subclass__); this package imports the built-in ones. A package
of one's own adds kinds through the `specdsl.kinds` entry point group, loaded the first time a spec calls a kind
that is not here (docs/language.md, "Adding a kind").
"""

from __future__ import annotations

# Each import registers its module's kinds, in this order: the order of the docs' reference and of did-you-mean.
# isort: off
from . import embedding, linear, norm, elementwise, attention, mlp, conv  # noqa: F401
from . import cross_attention, sinusoidal, relative_position  # noqa: F401
# isort: on
from .base import REGISTRY, REQUIRED, Arg, Args, Example, Kind, KindError, TorchForm
from .elementwise import ACTIVATIONS

KINDS = REGISTRY

__all__ = ["KINDS", "Kind", "Arg", "Args", "Example", "KindError", "TorchForm", "REQUIRED", "ACTIVATIONS"]
