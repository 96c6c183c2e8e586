"""The spec's top-level values: hyperparameters with their defaults, then a preset, then `--set` overrides; the
file's assertions; and the `train { ... }` section's settings."""

from __future__ import annotations

from typing import Any

from .. import syntax as S
from ..errors import Span, SpecError, did_you_mean
from ..settings import TrainConfig, setting_problem, setting_type
from .state import Abort, ElaborationState
from .values import POISON, TYPE_NAMES, TYPES, Poison, Scope, type_name

# The language's keywords: not hyperparameter names.
RESERVED = frozenset(("true", "false", "and", "or", "not", "if", "else", "repeat", "shared", "input", "return",
                      "assert", "use", "param", "preset", "block", "model", "train", "lora"))


def parse_override(text: str) -> tuple[str, Any]:
    """'d=1024' -> ('d', 1024). Values: int, float, true/false, else a string."""
    where = Span("--set", 0, 0)
    if "=" not in text:
        raise SpecError(f"--set takes NAME=VALUE, got '{text}'", where)
    name, raw = (s.strip() for s in text.split("=", 1))
    if not name.isidentifier():
        raise SpecError(f"--set: '{name}' is not a hyperparameter name", where)
    return name, _override_value(raw)


def _override_value(raw: str) -> Any:
    if raw in ("true", "True"):
        return True
    if raw in ("false", "False"):
        return False
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw.strip('"')


class Hyperparameters(ElaborationState):
    def hyperparameters(self, preset: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
        """Every hyperparameter's value (POISON where it failed), with the file's assertions checked."""
        declared = {p.name: p for p in self.main.params}
        assigned = self._assignments(preset, overrides, declared)
        self._check_presets_unique()
        scope = self._declare(assigned)
        for a in self.main.asserts:
            self.check_assert(a, scope)
        return scope.values

    def _assignments(self, preset: str | None, overrides: dict[str, Any],
                     declared: dict[str, S.ParamDecl]) -> dict[str, tuple[Any, bool]]:
        """What the preset, then the overrides, assign: name -> (expression or value, whether an expression)."""
        assigned: dict[str, tuple[Any, bool]] = {}
        if preset is not None:
            presets = {p.name: p for p in self.main.presets}
            if preset not in presets:
                hint = did_you_mean(preset, presets) or (f"presets of this spec: {', '.join(presets)}" if presets
                                                        else "this spec defines no presets")
                self.record(SpecError(f"unknown preset '{preset}'", Span("--preset", 0, 0), hint=hint))
            else:
                for name, expr, span in presets[preset].assignments:
                    if name not in declared:
                        self.record(SpecError(f"preset '{preset}' sets unknown hyperparameter '{name}'", span,
                                              hint=did_you_mean(name, declared)))
                    assigned[name] = (expr, True)
        for name, value in overrides.items():
            if name not in declared:
                self.record(SpecError(f"--set {name}: no hyperparameter '{name}' in this spec", Span("--set", 0, 0),
                                      hint=did_you_mean(name, declared)
                                      or f"hyperparameters: {', '.join(declared) or 'none'}"))
                continue
            assigned[name] = (value, False)
        return assigned

    def _check_presets_unique(self) -> None:
        first_preset: dict[str, S.Preset] = {}
        for p in self.main.presets:
            if p.name in first_preset:
                self.record(SpecError(f"preset '{p.name}' is defined twice (first at {first_preset[p.name].span})",
                                      p.span))
            first_preset.setdefault(p.name, p)

    def _declare(self, assigned: dict[str, tuple[Any, bool]]) -> Scope:
        """The hyperparameters in the order declared, each seeing those before it."""
        seen: dict[str, S.ParamDecl] = {}
        scope = Scope({})
        for decl in self.main.params:
            if decl.name in RESERVED:
                self.record(SpecError(f"'{decl.name}' is a keyword of the language, not a hyperparameter name",
                                      decl.span, hint=f"call it {decl.name}_ or another name"))
                continue
            if decl.name in seen:
                self.record(SpecError(f"hyperparameter '{decl.name}' is declared twice (first at "
                                      f"{seen[decl.name].span})", decl.span))
                continue
            seen[decl.name] = decl
            try:
                value = self.eval_scalar(decl.value, scope)
                if decl.name in assigned:
                    given, is_expr = assigned[decl.name]
                    value = self.eval_scalar(given, scope) if is_expr else given
                    if decl.type is None and not is_expr:
                        value = self._coerce_like(value, self.eval_scalar(decl.value, scope), decl)
                value = self.check_type(value, decl.type, decl.name, decl.span)
            except Abort:
                value = POISON
            scope.values[decl.name] = value
        return scope

    def _coerce_like(self, value, default, decl: S.ParamDecl):
        # An untyped hyperparameter takes the type of its default: --set p=1 on `param p = 0.1` is the float 1.0.
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(default, Poison) or type(value) is type(default):
            return value
        self.fail(f"--set {decl.name}={value}: expected {type_name(default)} like its default, "
                  f"got {type_name(value)}", Span("--set", 0, 0))

    def check_type(self, value, declared_type: str | None, name: str, span: Span):
        """`value` as the type declared (`param p: float = 1` is 1.0), or an error where it is not of that type."""
        if declared_type is None or isinstance(value, Poison):
            return value
        if declared_type == "tensor":
            self.fail(f"'{name}' is declared tensor: only a block's parameter may be a tensor (hyperparameters are "
                      "numbers, bools and strings)", span)
        want = TYPES[declared_type]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if type(value) is not want:
            self.fail(f"'{name}' is declared {declared_type} but its value {value!r} is {type_name(value)}", span)
        return value

    def settings(self, spec: S.SpecFile, hyper: dict[str, Any]) -> dict[str, Any]:
        """The `train { ... }` section, each value checked against the setting's type (specdsl/settings.py)."""
        known = TrainConfig.names()
        settings: dict[str, Any] = {}
        for section in spec.train[1:]:
            self.record(SpecError("a second `train` section: one per file", section.span))
        for section in spec.train[:1]:
            for name, expr, span in section.assignments:
                if name not in known:
                    self.record(SpecError(f"unknown training setting '{name}'", span,
                                          hint=did_you_mean(name, known) or f"settings: {', '.join(known)}"))
                    continue
                if name in settings:
                    self.record(SpecError(f"training setting '{name}' is given twice", span))
                    continue
                try:
                    value = self.eval_scalar(expr, Scope(dict(hyper)))
                except Abort:
                    continue
                want = setting_type(name)
                if want is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if type(value) is not want:
                    self.record(SpecError(f"training setting '{name}' must be {TYPE_NAMES[want]}, got "
                                          f"{type_name(value)} {value!r}", expr.span))
                    continue
                problem = setting_problem(name, value)
                if problem:
                    self.record(SpecError(problem, expr.span))
                    continue
                settings[name] = value
        return settings
