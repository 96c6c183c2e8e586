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
from ..errors import SpecError
from .base import REGISTRY, REQUIRED, Adaptable, Arg, Args, Example, Kind, KindError, TorchForm
from .elementwise import ACTIVATIONS

KINDS = REGISTRY


def torch_form_of(layer) -> TorchForm:
    """The torch form of an IR layer, for the torch backend and the ejected file alike: a SpecError at the layer
    when its kind declares none (it is counted, but cannot be built)."""
    try:
        return KINDS[layer.kind].torch_form(Args(layer.args))
    except NotImplementedError:
        raise SpecError(f"layer kind '{layer.kind}' has no torch form: it is counted but cannot be built",
                        layer.span, hint="its declaration needs a torch_form() (docs/language.md, "
                                         "'Adding a layer kind')") from None


__all__ = ["KINDS", "torch_form_of", "Kind", "Adaptable", "Arg", "Args", "Example", "KindError", "TorchForm",
           "REQUIRED", "ACTIVATIONS"]
