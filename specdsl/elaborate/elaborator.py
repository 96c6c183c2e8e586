"""The elaborator: one spec file's syntax tree -> its ir.Model.

Its concerns live in sibling modules, one class each, combined here: `use` (uses.py), hyperparameters, presets and
training settings (hyperparameters.py), expressions (expressions.py), layers (layers.py), blocks and repeats
(blocks.py), the statements of a body (bodies.py) and the LoRA section (lora.py). They call one another through
`self` because the language nests them in both directions (an expression may be a pipeline, whose block has a body
of statements, whose values are expressions), and they share one ElaborationState (state.py): the errors collected,
the call stack, the budget.
"""

from __future__ import annotations

from typing import Any

from .. import ir
from ..errors import SpecError
from .blocks import Blocks
from .bodies import Bodies
from .expressions import Expressions
from .hyperparameters import Hyperparameters
from .layers import Layers
from .lora import LoraSection
from .state import Abort
from .uses import Uses
from .values import ModuleBuilder, Scope


class Elaborator(Uses, Hyperparameters, Expressions, Layers, Blocks, Bodies, LoraSection):
    def model(self, preset: str | None, overrides: dict[str, Any], lora: dict[str, Any] | None = None) -> ir.Model:
        """The model, or one SpecError with every error found, in source order. `lora`: the --lora flags."""
        spec = self.main
        self.load_uses(spec)
        hyper = self.hyperparameters(preset, overrides)
        if not spec.models:
            raise SpecError.combine(self.in_source_order() + [SpecError(
                "no model in this file", spec.start, hint="a spec defines `model NAME { input ...  return ... }`")])
        for extra in spec.models[1:]:
            self.record(SpecError(f"a second model '{extra.name}': one model per file", extra.span))
        model_def = spec.models[0]
        root = ModuleBuilder("", model_def.name, model_def.span, "")
        outputs = None
        try:
            outputs = self.elaborate_body(model_def.body, Scope(dict(hyper)), root, None, model_def)
        except Abort:
            pass
        train = self.settings(spec, hyper)
        lora_settings = self.lora_settings(spec, hyper, lora)
        if self.errors:
            raise SpecError.combine(self.in_source_order())
        inputs = tuple(self.model_inputs)
        module = ir.Module("", model_def.name, tuple(root.children), tuple(root.ops),
                           tuple(i.name for i in inputs), tuple(v.ref for _, v in outputs), model_def.span)
        adapters = self.choose_adapters(lora_settings, module) if lora_settings else None
        if self.errors:  # the LoRA targets, which need the whole model
            raise SpecError.combine(self.in_source_order())
        return ir.Model(model_def.name, module, inputs, tuple((n, v.type) for n, v in outputs),
                        {k: v for k, v in hyper.items()}, path=spec.path, preset=preset, train=train,
                        sources=tuple(self.sources.items()), uses=tuple(self.uses), lora=adapters)
