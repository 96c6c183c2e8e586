"""The `lora { ... }` section and the --lora flags -> ir.Lora: LoRA's settings checked, and its targets resolved to
the matrices they name, each error located at the target (or setting) that caused it.

A target names matrices by path or by kind. By path: a glob (fnmatch; `*` also matches dots) over the names
`LAYER.MATRIX` of every matrix some kind declares adaptable (kinds/base.py, Adaptable), repeats unrolled
(`h.0.attn.q`, `h.*.mlp.fc`, `*.attn.qkv`); a Linear's own weight is named by the layer's path (`lm_head`). By
kind: `Attention.q` is the q of every Attention layer, `Linear` every Linear's weight. A matrix may be a whole
weight or a part of a fused one (Attention's q, k, v rows of qkv), never both at once: an adapter on a part and one
on the whole would both add to the same rows.
"""

from __future__ import annotations

import math
import re
from fnmatch import fnmatchcase
from typing import Any

from .. import ir
from .. import syntax as S
from ..errors import Span, SpecError, did_you_mean
from ..kinds import KINDS, Args
from .state import Abort, ElaborationState
from .values import Poison, Scope, type_name

# peft's LoraConfig defaults (r=8, lora_alpha=8, lora_dropout=0.0; peft 0.21): the same settings give the same
# adapters. Targets have no default: peft's depend on the architecture's name, which a spec does not have.
DEFAULTS = {"rank": 8, "alpha": 8.0, "dropout": 0.0}
SETTINGS = ("rank", "alpha", "dropout", "targets")
FLAGS = {"rank": "--lora", "alpha": "--lora-alpha", "dropout": "--lora-dropout", "targets": "--lora-targets"}

# Targets are matched against layers with repeats unrolled. `specc compile` counts a model of any size, but one
# with more layers than this is no model anyone adapts (PyTorch builds at most 10**5 modules: torch_backend.py).
MAX_LORA_LAYERS = 100_000

_KIND_TARGET = re.compile(r"([A-Z]\w*)(?:\.(\w+))?")


class LoraSection(ElaborationState):
    def lora_settings(self, spec: S.SpecFile, hyper: dict[str, Any], flags: dict[str, Any] | None) -> dict | None:
        """{setting: (value, span)} from the spec's section, then the flags given (not None), each checked; None
        when neither asks for LoRA. Targets are [(text, span)]."""
        for section in spec.lora[1:]:
            self.record(SpecError("a second `lora` section: one per file", section.span))
        given = {k: v for k, v in (flags or {}).items() if v is not None}
        if not spec.lora and not given:
            return None
        settings: dict[str, tuple[Any, Span]] = {}
        for section in spec.lora[:1]:
            settings["section"] = (None, section.span)
            for name, expr, span in section.assignments:
                if name not in SETTINGS:
                    self.record(SpecError(f"unknown LoRA setting '{name}'", span,
                                          hint=did_you_mean(name, SETTINGS) or f"settings: {', '.join(SETTINGS)}"))
                elif name in settings:
                    self.record(SpecError(f"LoRA setting '{name}' is given twice", span))
                else:
                    settings[name] = self._section_value(name, expr, hyper)
        for name, value in given.items():
            where = Span(FLAGS.get(name, "--lora"), 0, 0)
            if name not in SETTINGS:
                self.record(SpecError(f"unknown LoRA setting '{name}'", where, hint=did_you_mean(name, SETTINGS)))
                continue
            if name == "targets" and isinstance(value, str):
                value = [t.strip() for t in value.split(",")]
            settings[name] = ([(t, where) for t in value] if name == "targets" and isinstance(value, (list, tuple))
                              else value, where)
        return self._checked(settings)

    def _section_value(self, name: str, expr, hyper: dict[str, Any]) -> tuple[Any, Span]:
        """A setting's value as written: expressions over the hyperparameters; targets a list of strings."""
        scope = Scope(dict(hyper))
        try:
            if isinstance(expr, S.ListValue):
                return [(self.eval_scalar(item, scope), item.span) for item in expr.items], expr.span
            return self.eval_scalar(expr, scope), expr.span
        except Abort:
            return Poison(), expr.span

    def _checked(self, settings: dict[str, tuple[Any, Span]]) -> dict:
        """Each setting's type and range; a problem is recorded at its value and the setting left out."""
        out: dict[str, Any] = {"span": settings.pop("section", (None, Span("--lora", 0, 0)))[1]}
        for name, (value, span) in settings.items():
            if isinstance(value, Poison):
                continue
            problem = _problem(name, value)
            if problem:
                self.record(SpecError(problem, span))
                continue
            out[name] = float(value) if name in ("alpha", "dropout") else value
        if "targets" not in settings:
            self.record(SpecError("LoRA needs targets: the matrices to adapt", out["span"],
                                  hint='targets = ["*.attn.q", "*.attn.v"] in the lora section, or --lora-targets '
                                       '"*.attn.q,*.attn.v" (docs/language.md, "LoRA")'))
        return {**DEFAULTS, **out}

    def choose_adapters(self, settings: dict, root: ir.Module) -> ir.Lora | None:
        """The matrices the targets name, in the model's order; an error at each target that names none, or that
        would adapt a tied weight or rows another target adapts already."""
        if "targets" not in settings:
            return None
        if _unrolled_layers(root) > MAX_LORA_LAYERS:
            self.record(SpecError(f"the model has more than {MAX_LORA_LAYERS:,} layers, repeats unrolled: too many "
                                  "to choose LoRA targets among", settings["span"], hint="a smaller model (--set)"))
            return None
        layers = list(ir.layers_with_paths(root))  # a shared repeat's layers once
        candidates = [ir.Adapter(path, layer.kind, m.name, f"{path}.{m.param}", m.rows, m.in_features,
                                 m.out_features)
                      for path, layer in layers for m in KINDS[layer.kind].adaptable(Args(layer.args))]
        chosen: dict[tuple[str, str], tuple[ir.Adapter, int]] = {}
        targets = settings["targets"]
        for index, (target, span) in enumerate(targets):
            found = [a for a in candidates if _names(target, a)]
            if not found:
                self.record(_no_match(target, span, candidates, layers))
            for adapter in found:
                chosen.setdefault((adapter.layer, adapter.matrix), (adapter, index))
        order = {(a.layer, a.matrix): i for i, a in enumerate(candidates)}
        picked = sorted(chosen.values(), key=lambda c: order[(c[0].layer, c[0].matrix)])
        self._check_overlaps(picked, targets)
        self._check_ties(picked, targets, layers)
        return ir.Lora(settings["rank"], settings["alpha"], settings["dropout"], tuple(t for t, _ in targets),
                       tuple(a for a, _ in picked), settings["span"])

    def _check_overlaps(self, picked: list[tuple[ir.Adapter, int]], targets: list[tuple[str, Span]]) -> None:
        """Two adapters on the same rows of one weight (a part and the whole) would both add to them: an error at
        the later of the two targets, once per pair."""
        seen: dict[str, list[tuple[ir.Adapter, int]]] = {}
        reported: set[tuple[int, int]] = set()
        for adapter, index in picked:
            for other, other_index in seen.get(adapter.param, ()):
                pair = (min(index, other_index), max(index, other_index))
                if _overlap(adapter, other) and pair not in reported:
                    reported.add(pair)
                    first, later = sorted(((adapter, index), (other, other_index)), key=lambda c: c[1])
                    self.record(SpecError(
                        f"'{targets[later[1]][0]}' and '{targets[first[1]][0]}' both adapt {adapter.param}: "
                        f"{_describe(later[0])} and {_describe(first[0])}", targets[later[1]][1],
                        hint="adapt the whole matrix or its parts, not both"))
            seen.setdefault(adapter.param, []).append((adapter, index))

    def _check_ties(self, picked: list[tuple[ir.Adapter, int]], targets: list[tuple[str, Span]], layers) -> None:
        """A tied weight is one tensor in two layers: merged into it for export, an adapter would change both."""
        tied = {}
        for path, layer in layers:
            for p in layer.params:
                if p.tied_to is not None:
                    tied[f"{path}.{p.name}"] = p.tied_to
                    tied.setdefault(p.tied_to, f"{path}.{p.name}")
        for adapter, index in picked:
            if adapter.param in tied:
                target, span = targets[index]
                self.record(SpecError(f"'{target}' names {adapter.target}, whose weight is tied ({adapter.param} is "
                                      f"{tied[adapter.param]}): merged for export, its adapter would change both",
                                      span, hint="adapt other matrices, or untie the weight"))


def _problem(name: str, value) -> str | None:
    """Why a LoRA setting's value is wrong, or None."""
    if name == "targets":
        if not isinstance(value, list) or not value:
            return f"LoRA targets are a list of names, e.g. [\"*.attn.q\"]; got {type_name(value)} {value!r}"
        bad = [t for t, _ in value if not isinstance(t, str) or not t.strip()]
        return f"a LoRA target is a name, got {bad[0]!r}" if bad else None
    if isinstance(value, list):
        return f"LoRA {name} is a number, not a list"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "rank":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"LoRA rank must be an int, got {type_name(value)} {value!r}"
        return None if value >= 1 else f"LoRA rank must be at least 1, got {value}"
    if not number or not math.isfinite(value):
        return f"LoRA {name} must be a finite number, got {type_name(value)} {value!r}"
    if name == "alpha":
        return None if value > 0 else f"LoRA alpha must be positive, got {value}"
    return None if 0 <= value < 1 else f"LoRA dropout must be in [0, 1), got {value}"


def _names(target: str, adapter: ir.Adapter) -> bool:
    """Whether `target` names this matrix: by kind (Attention.q, Linear) or by a glob over its path."""
    kind = _KIND_TARGET.fullmatch(target)
    if kind and kind.group(1) in KINDS:
        return adapter.kind == kind.group(1) and adapter.matrix == (kind.group(2) or "")
    return fnmatchcase(adapter.target, target)


def _no_match(target: str, span: Span, candidates: list[ir.Adapter], layers) -> SpecError:
    """Why a target names no matrix, with the nearest names."""
    kind = _KIND_TARGET.fullmatch(target)
    if kind and kind.group(1) in KINDS:
        return _no_kind_match(target, span, kind.group(1), kind.group(2) or "", candidates, layers)
    bare = next((layer for path, layer in layers if fnmatchcase(path, target)), None)
    if bare is not None and not KINDS[bare.kind].adaptable(Args(bare.args)):
        return SpecError(f"'{target}' is a {bare.kind} layer: it has no matrix LoRA can adapt", span,
                         hint=_adaptable_kinds(candidates))
    layer, _, part = target.rpartition(".")
    for prefix, named in ((target, None), (layer, part)):  # the target is a layer; or a layer, then a matrix
        first = next((a for a in candidates if prefix and fnmatchcase(a.layer, prefix)), None)
        if first is None:
            continue
        names = [a.matrix for a in candidates if a.layer == first.layer]
        if named is None:
            return SpecError(f"'{target}' is a layer ({first.kind}): name its matrices", span,
                             hint="its matrices: " + ", ".join(f"{first.layer}.{n}" for n in names))
        return SpecError(f"{first.kind} layer {first.layer} has no matrix '{named}'", span,
                         hint=did_you_mean(named, names) or f"its matrices: {', '.join(names)}")
    if kind and did_you_mean(kind.group(1), list(KINDS)):
        return SpecError(f"unknown layer kind '{kind.group(1)}' in LoRA target '{target}'", span,
                         hint=did_you_mean(kind.group(1), list(KINDS)))
    patterns = sorted({re.sub(r"\.\d+(?=\.|$)", ".*", a.target) for a in candidates})
    if not patterns:
        return SpecError(f"LoRA target '{target}' names no matrix: this model has none LoRA can adapt", span)
    return SpecError(f"LoRA target '{target}' names no matrix of the model", span,
                     hint=did_you_mean(target, patterns) or "matrices LoRA can adapt: " + ", ".join(patterns[:8])
                     + (", ..." if len(patterns) > 8 else ""))


def _no_kind_match(target: str, span: Span, kind: str, part: str, candidates: list[ir.Adapter],
                   layers) -> SpecError:
    present = [a for a in candidates if a.kind == kind]
    if not present:
        if any(layer.kind == kind for _, layer in layers):
            return SpecError(f"{kind} has no matrix LoRA can adapt", span, hint=_adaptable_kinds(candidates))
        return SpecError(f"LoRA target '{target}': the model has no {kind} layer", span)
    names = list(dict.fromkeys(a.matrix for a in present))
    shown = [f"{kind}.{n}" if n else kind for n in names]
    if not part:
        return SpecError(f"'{kind}' has several matrices: name one", span, hint="its matrices: " + ", ".join(shown))
    return SpecError(f"{kind} has no matrix '{part}'", span,
                     hint=did_you_mean(part, [n for n in names if n]) or f"its matrices: {', '.join(shown)}")


def _adaptable_kinds(candidates: list[ir.Adapter]) -> str | None:
    kinds = list(dict.fromkeys(a.kind for a in candidates))
    return f"this model's layers with matrices to adapt: {', '.join(kinds)}" if kinds else None


def _overlap(a: ir.Adapter, b: ir.Adapter) -> bool:
    if a.rows is None or b.rows is None:
        return True
    return a.rows[0] < b.rows[1] and b.rows[0] < a.rows[1]


def _describe(a: ir.Adapter) -> str:
    return f"its rows {a.rows[0]}-{a.rows[1] - 1} ({a.target})" if a.rows else f"all of it ({a.target})"


def _unrolled_layers(module: ir.Module) -> int:
    """Layers with repeats unrolled (a shared repeat's once), counted without unrolling them."""
    inner = sum(1 if isinstance(c, ir.Layer) else _unrolled_layers(c) for c in module.children)
    return inner * module.count if module.is_repeat and not module.shared else inner
