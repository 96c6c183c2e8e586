"""Pipeline stages: a built-in layer (its arguments checked against its kind, its parameters shaped, named and
perhaps tied), a block call (elaborate/blocks.py) or a repeat; and the names layers get in their module."""

from __future__ import annotations

from typing import Any

from .. import ir
from .. import syntax as S
from ..errors import Span, did_you_mean
from ..kinds import KINDS, REQUIRED, Args, Kind
from ..shapes import ShapeError, format_shape
from .state import Abort, ElaborationState
from .values import TYPE_NAMES, ModuleBuilder, Poison, Scope, TVal, type_name

UNIVERSAL_ARGS = ("frozen",)  # accepted by every layer: `frozen = true` makes its parameters non-trainable


class Layers(ElaborationState):
    def apply_stage(self, stage, x: TVal, scope: Scope, builder: ModuleBuilder):
        """The tensor `x -> stage` makes, its layers added to `builder`."""
        return self._STAGES[type(stage)](self, stage, x, scope, builder)

    def _apply_call(self, stage: S.LayerCall, x: TVal, scope: Scope, builder: ModuleBuilder):
        if stage.callee in KINDS:
            return self.apply_layer(stage, KINDS[stage.callee], x, scope, builder)
        if stage.callee in self.blocks:
            return self.apply_block(stage, self.blocks[stage.callee], x, scope, builder)
        hint = did_you_mean(stage.callee, list(KINDS) + list(self.blocks))
        if hint is None and stage.callee in scope.values:
            hint = f"'{stage.callee}' is a value; combine values with + - * /"
        if hint is None and stage.callee[:1].isupper():
            hint = (f"no installed package declares a kind '{stage.callee}' (specc looks in the "
                    f"'{KINDS.ENTRY_POINTS}' entry point group; docs/language.md, 'Adding a layer kind')")
        self.fail(f"unknown layer '{stage.callee}'", stage.span, hint=hint)

    def _apply_repeat(self, stage: S.Repeat, x: TVal, scope: Scope, builder: ModuleBuilder):
        return self.apply_repeat(stage, x, scope, builder)

    # How each kind of stage is applied: apply_stage looks its node's type up here.
    _STAGES = {S.LayerCall: _apply_call, S.Repeat: _apply_repeat}

    def bind_args(self, what: str, names: list[str], stage_args: S.Arguments, span: Span,
                  hints: dict[str, str] | None = None) -> dict[str, Any]:
        """Positional and keyword argument expressions -> {name: expr}, with errors for extras and repeats."""
        bound: dict[str, Any] = {}
        if len(stage_args.positional) > len(names):
            extra = stage_args.positional[len(names)]
            self.fail(f"{what} takes at most {len(names)} positional argument(s), got "
                      f"{len(stage_args.positional)}", extra.span)
        for name, expr in zip(names, stage_args.positional):
            bound[name] = expr
        for name, expr, kspan in stage_args.keyword:
            if name in UNIVERSAL_ARGS:
                bound[name] = expr
                continue
            if name not in names:
                self.fail(f"{what} has no argument '{name}'", kspan,
                          hint=(hints or {}).get(name) or did_you_mean(name, names)
                          or f"arguments: {', '.join(names) or 'none'}")
            if name in bound:
                self.fail(f"argument '{name}' of {what} is given twice", kspan)
            bound[name] = expr
        return bound

    def apply_layer(self, stage: S.LayerCall, kind: Kind, x: TVal, scope: Scope, builder: ModuleBuilder):
        names = [a.name for a in kind.args] + (["tie"] if kind.tie_param else [])
        bound = self.bind_args(kind.name, names, stage.args, stage.span, kind.absent_args)
        if "tie" in bound and stage.args.positional[len(kind.args):]:
            self.fail("tie is given by name: `tie = layer`", bound["tie"].span)
        frozen = False
        if "frozen" in bound:
            frozen = self._arg_value(bound["frozen"], bool, "frozen", kind, scope, builder)
        tensors: list[str] = []  # the refs of tensor arguments (`memory = enc`): further inputs of the call
        a = self._layer_arguments(stage, kind, bound, scope, builder, tensors)
        # `tie = label` is accepted by the kinds that declare a tie_param.
        tie_expr = next((e for n, e, _ in stage.args.keyword if n == "tie"), None)
        tie_target = self._resolve_tie(tie_expr, kind, builder) if tie_expr is not None else None
        try:
            out_type = kind.output_type(a, x.type)
            shapes = kind.params(a)
        except ShapeError as e:
            self.fail(str(e), stage.span)
        self.spend(stage.span, layers=1)
        name = self.claim_name(stage.label, kind.name.lower(), stage.label_span or stage.span, builder)
        params = self._layer_params(kind, shapes, frozen, tie_target, tie_expr)
        layer = ir.Layer(name, kind.name, tuple(a.items()), tuple(params), x.type, out_type,
                         stage.span, kind.describe(a))
        builder.children.append(layer)
        if stage.label is not None:
            builder.labels[stage.label] = layer
            builder.label_paths[stage.label] = builder.path + name
        out = builder.emit("call", (x.ref, *tensors), target=name)
        return TVal(out_type, out)

    def _layer_arguments(self, stage: S.LayerCall, kind: Kind, bound: dict, scope: Scope,
                         builder: ModuleBuilder, tensors: list[str]) -> Args:
        """Every argument of the kind: as given, or its default; each checked by the kind. A tensor argument's
        value is its type (what the kind's shape rules read); its ref is appended to `tensors`."""
        a = Args()
        for arg in kind.args:
            if arg.type == "tensor":
                a[arg.name] = self._tensor_arg(stage, kind, arg.name, bound, scope, builder, tensors)
                continue
            if arg.name in bound:
                expr = bound[arg.name]
                a[arg.name] = self._arg_value(expr, arg.type, arg.name, kind, scope, builder, arg.choices)
            elif arg.default is REQUIRED:
                self.fail(f"{kind.name} needs argument '{arg.name}'", stage.span,
                          hint=f"{kind.name}({', '.join(n.name for n in kind.args if n.default is REQUIRED)})")
            else:
                try:
                    a[arg.name] = arg.default(a) if callable(arg.default) else arg.default
                except ShapeError as e:
                    self.fail(str(e), stage.span)
            complaint = arg.check(a[arg.name]) if arg.check else None
            if complaint:
                where = bound[arg.name].span if arg.name in bound else stage.span
                self.fail(f"{kind.name} argument {arg.name}={a[arg.name]!r} {complaint}", where)
        return a

    def _tensor_arg(self, stage: S.LayerCall, kind: Kind, name: str, bound: dict, scope: Scope,
                    builder: ModuleBuilder, tensors: list[str]):
        """A tensor argument (`memory = enc`): a tensor value in scope, read by the layer beside its piped input.
        An optional one (declared with the default None, Attention's `position_bias`) left out is None, and the
        layer's call passes nothing for it: only the last tensor arguments of a kind may be optional."""
        arg = next(arg for arg in kind.args if arg.name == name)
        if name not in bound and arg.default is None:
            return None
        if name not in bound:
            self.fail(f"{kind.name} needs argument '{name}', a tensor", stage.span,
                      hint=f"name a tensor in scope: {kind.name}(..., {name} = enc)")
        value = self.eval(bound[name], scope, builder)
        if isinstance(value, Poison):
            raise Abort
        if not isinstance(value, TVal):
            self.fail(f"{kind.name} argument '{name}' must be a tensor, got {type_name(value)} {value!r}",
                      bound[name].span, hint=f"name a tensor value in scope, such as an encoder's output: "
                                             f"{name} = enc")
        tensors.append(builder.localize(value.ref))
        return value.type

    def _layer_params(self, kind: Kind, shapes: dict, frozen: bool, tie_target, tie_expr) -> list[ir.Param]:
        """The layer's parameters; the one a `tie` names shares the tied layer's tensor (same shape)."""
        params = []
        for pname, shape in shapes.items():
            tied_to = None
            if tie_target is not None and pname == kind.tie_param:
                target_layer, target_path = tie_target
                target_shape = dict((p.name, p.shape) for p in target_layer.params)[KINDS[target_layer.kind].tie_param]
                if tuple(target_shape) != tuple(shape):
                    self.fail(f"cannot tie {kind.name} {pname} {format_shape(shape)} to "
                              f"'{target_layer.name}' {KINDS[target_layer.kind].tie_param} "
                              f"{format_shape(target_shape)}: shapes differ", tie_expr.span)
                tied_to = target_path
            params.append(ir.Param(pname, tuple(shape), trainable=not frozen, embedding=kind.embedding,
                                   tied_to=tied_to))
        return params

    def _arg_value(self, expr, want, name: str, kind: Kind, scope, builder, choices=()):
        if want is str and choices and isinstance(expr, S.Name) and expr.id not in scope.values:
            value = expr.id  # a bare choice word: act = gelu
        else:
            value = self.eval(expr, scope, builder)
        if isinstance(value, Poison):
            raise Abort
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not want:
            self.fail(f"{kind.name} argument '{name}' must be {TYPE_NAMES.get(want, want)}, got "
                      f"{type_name(value)} {value!r}" if not isinstance(value, TVal) else
                      f"{kind.name} argument '{name}' must be {TYPE_NAMES.get(want, want)}, got a tensor",
                      expr.span)
        if choices and value not in choices:
            self.fail(f"{kind.name} argument '{name}' must be one of {', '.join(choices)}, got '{value}'", expr.span,
                      hint=did_you_mean(value, choices))
        return value

    def _resolve_tie(self, expr, kind: Kind, builder: ModuleBuilder):
        if kind.tie_param is None:
            self.fail(f"{kind.name} has no weight to tie", expr.span)
        if not isinstance(expr, S.Name):
            self.fail("tie takes the label of a layer, e.g. `tie = wte`", expr.span)
        found = builder.find_label(expr.id)
        if found is None and _labelled_in_repeat(builder, expr.id, lambda: self.spend(expr.span)):
            self.fail(f"cannot tie to '{expr.id}': it is inside a repeat, whose layers are not visible outside it",
                      expr.span)
        if found is None:
            self.fail(f"no layer labelled '{expr.id}' to tie to", expr.span,
                      hint=did_you_mean(expr.id, builder.all_labels()))
        layer, path, in_repeat = found
        target_kind = KINDS[layer.kind]
        if target_kind.tie_param is None:
            self.fail(f"'{expr.id}' is a {layer.kind}, which has no weight to tie", expr.span)
        if in_repeat:
            self.fail(f"cannot tie to '{expr.id}': it is inside a repeat, one tensor per iteration", expr.span)
        return layer, f"{path}.{target_kind.tie_param}"

    def claim_name(self, label: str | None, base: str, span: Span, builder: ModuleBuilder) -> str:
        """The name of a new child of `builder`: its label (unique in the module), else `base` numbered (linear_0)."""
        if label is not None:
            if label in builder.names:
                self.fail(f"name '{label}' is already used in this scope (at {builder.names[label]})", span,
                          hint="labels name parameters; each must be unique where it appears")
            builder.names[label] = span
            return label
        while True:
            n = builder.auto.get(base, 0)
            builder.auto[base] = n + 1
            name = f"{base}_{n}"
            if name not in builder.names:
                builder.names[name] = span
                return name


def _labelled_in_repeat(builder: ModuleBuilder, label: str, step) -> bool:
    """Whether a layer named `label` sits inside a repeat already built in this scope or an enclosing one (its label
    is not visible from outside, but "no layer labelled" would be a confusing thing to say). `step()` is called for
    each node visited: a block with a bad tie, called 10**4 times, would walk up to MAX_LAYERS nodes each time."""
    b = builder
    while b is not None:
        stack = [(child, False) for child in b.children]
        while stack:
            step()
            node, under_repeat = stack.pop()
            if isinstance(node, ir.Module):
                stack.extend((c, under_repeat or node.is_repeat) for c in node.children)
            elif under_repeat and node.name == label:
                return True
        b = b.parent
    return False
