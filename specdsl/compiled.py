"""A compiled spec: the IR and its analysis, as the library's users and its backends receive it (torch-free).
It lives beside the pipeline's stages, not in the package's __init__, so a backend can import it without importing
the package that imports the backends."""

from __future__ import annotations

from .analysis import Analysis, analyse
from .contract import contract
from .elaborate import load as _load_model
from .elaborate import load_saved as _load_saved_model
from .elaborate import loads as _loads_model
from .errors import SpecError
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


def load(path, preset: str | None = None, overrides: dict | None = None, lora: dict | None = None) -> Compiled:
    """Parse, elaborate and analyse a spec file. Raises SpecError with every error found. `lora`: LoRA settings
    over the spec's `lora` section, as the --lora flags give them: {"rank": 8, "targets": ["*.attn.q"]}."""
    return Compiled(_load_model(path, preset, overrides, lora))


def loads(text: str, preset: str | None = None, overrides: dict | None = None, name: str = "<string>",
          lora: dict | None = None) -> Compiled:
    """Like load, from a string."""
    return Compiled(_loads_model(text, preset, overrides, name, lora))


def load_saved(sources, uses, preset: str | None = None, overrides: dict | None = None,
               lora: dict | None = None) -> Compiled:
    """Like load, from saved sources (a run directory's): see elaborate.load_saved."""
    return Compiled(_load_saved_model(sources, uses, preset, overrides, lora))



def vocabulary_hyperparameter(model: Model, overrides: dict | None = None) -> str | None:
    """The hyperparameter a language model's vocabulary (the logits' width) follows, whatever the spec calls it
    (`vocab`, `n_vocab`, `V`), or None when no one hyperparameter decides it (a fixed number, or not a language
    model). When the token input's id table had the vocabulary's size, it must follow too. See _follower."""
    facts = contract(model)
    return _follower(model, overrides, facts.vocab,
                     lambda changed, value: changed.vocab == value and (facts.ids != facts.vocab or
                                                                        changed.ids == value))


def context_hyperparameter(model: Model, overrides: dict | None = None) -> str | None:
    """The hyperparameter a language model's context follows (`ctx`, `block_size`), or None. See _follower."""
    return _follower(model, overrides, contract(model).context, lambda changed, value: changed.context == value)


def _follower(model: Model, overrides: dict | None, fact: int | None, follows) -> str | None:
    """The hyperparameter a fact of the contract follows, found by perturbation, never by name: each int
    hyperparameter whose value equals the fact is changed by one and the spec elaborated again, from the model's
    own sources, preset and `overrides` (the --set values it was built with); the first for which
    `follows(new contract, new value)` holds is it. Only those few candidates cost an elaboration."""
    if fact is None:
        return None
    for name, value in model.hyperparameters.items():
        if type(value) is not int or value != fact:  # bool is an int; a bool is never a size
            continue
        try:
            changed = contract(_load_saved_model(model.sources, model.uses, model.preset,
                                                 {**(overrides or {}), name: value + 1}))
        except SpecError:  # the spec refuses the other value (an assertion, a divisibility): not this one
            continue
        if follows(changed, value + 1):
            return name
    return None
