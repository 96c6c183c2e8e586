"""Block calls and repeats: a block's arguments bound and its body elaborated (inlined when unlabelled, a module
when labelled); a repeat's body built once, as a module that records its count."""

from __future__ import annotations

from .. import ir
from .. import syntax as S
from .state import Abort, ElaborationState
from .values import ModuleBuilder, Poison, Scope, TVal, type_name

MAX_BLOCK_DEPTH = 32


class Blocks(ElaborationState):
    def apply_block(self, stage: S.LayerCall, block: S.BlockDef, x: TVal, scope: Scope, builder: ModuleBuilder):
        if len(self.call_stack) >= MAX_BLOCK_DEPTH:
            self.fail(f"blocks nest more than {MAX_BLOCK_DEPTH} deep: does '{block.name}' call itself?", stage.span)
        self.spend(stage.span, layers=stage.label is not None)  # a labelled call is a module
        block_scope = self._block_arguments(stage, block, scope, builder)
        if stage.label is not None:
            inner = ModuleBuilder(stage.label, block.name, stage.span, builder.path + stage.label + ".", builder,
                                  builder.in_repeat)
            inner.local.add(x.ref)
            self.claim_name(stage.label, block.name, stage.label_span or stage.span, builder)
        else:
            inner = builder  # an unlabelled block call is inlined: its layers are named in the caller's scope
        self.call_stack.append((block.name, stage.span))
        try:
            result = self.elaborate_body(block.body, block_scope, inner, piped=x, owner=block)
        finally:
            self.call_stack.pop()
        if not isinstance(result, TVal):
            raise Abort
        if inner is builder:
            return result
        # The tensors of the caller the body reads besides its input (a tensor parameter: `memory = enc`) are
        # inputs of the module too.
        module = ir.Module(inner.name, block.name, tuple(inner.children), tuple(inner.ops),
                           (x.ref, *inner.captures), (inner.localize(result.ref),), stage.span)
        builder.children.append(module)
        out = builder.emit("call", (x.ref, *inner.captures), target=inner.name)
        return TVal(result.type, out)

    def _block_arguments(self, stage: S.LayerCall, block: S.BlockDef, scope: Scope, builder: ModuleBuilder) -> Scope:
        """The block's own scope: each parameter as given by the call (evaluated in the caller's scope), or its
        default (evaluated in the block's)."""
        names = [p.name for p in block.params]
        bound = self.bind_args(f"block '{block.name}'", names, stage.args, stage.span)
        if "frozen" in bound:
            self.fail("`frozen` applies to layers, not to block calls", stage.span)
        block_scope = Scope({})
        for p in block.params:
            if p.type == "tensor":  # a tensor of the caller's (encoder memory), read by the body's layers
                block_scope.values[p.name] = self._tensor_argument(p, bound, block, stage, scope, builder)
                continue
            if p.name in bound:
                value = self.eval(bound[p.name], scope, builder)
                if isinstance(value, TVal):
                    self.fail(f"block argument '{p.name}' must be a hyperparameter, got a tensor",
                              bound[p.name].span, hint=f"declare it `{p.name}: tensor` to pass a tensor")
            elif p.default is not None:
                value = self._eval_in_block(p.default, block_scope, block, stage)
            else:
                self.fail(f"block '{block.name}' needs argument '{p.name}'", stage.span,
                          hint=f"{block.name}({', '.join(q.name for q in block.params if q.default is None)})")
            if isinstance(value, Poison):
                raise Abort
            value = self.check_type(value, p.type, p.name, (bound[p.name].span if p.name in bound else stage.span))
            block_scope.values[p.name] = value
        return block_scope

    def _tensor_argument(self, p: S.BlockParam, bound: dict, block: S.BlockDef, stage: S.LayerCall, scope: Scope,
                         builder: ModuleBuilder) -> TVal:
        """A `name: tensor` parameter: a tensor value of the caller's scope (no default: checked at parse)."""
        if p.default is not None:
            self.fail(f"tensor parameter '{p.name}' of block '{block.name}' cannot have a default", p.default.span,
                      hint="a tensor comes from the caller's scope: declare it `" + p.name + ": tensor`")
        if p.name not in bound:
            self.fail(f"block '{block.name}' needs argument '{p.name}' (a tensor)", stage.span,
                      hint=f"pass a tensor in scope: {p.name} = enc")
        value = self.eval(bound[p.name], scope, builder)
        if isinstance(value, Poison):
            raise Abort
        if not isinstance(value, TVal):
            self.fail(f"block argument '{p.name}' of '{block.name}' is a tensor, got {type_name(value)} "
                      f"{value!r}", bound[p.name].span, hint="pass a tensor value in scope, such as an encoder's "
                                                             "output")
        return value

    def _eval_in_block(self, expr, block_scope: Scope, block: S.BlockDef, stage: S.LayerCall):
        self.call_stack.append((block.name, stage.span))
        try:
            return self.eval_scalar(expr, block_scope)
        finally:
            self.call_stack.pop()

    def apply_repeat(self, stage: S.Repeat, x: TVal, scope: Scope, builder: ModuleBuilder):
        count = self.eval_scalar(stage.count, scope)
        if isinstance(count, Poison):
            raise Abort
        if isinstance(count, bool) or not isinstance(count, int):
            self.fail(f"repeat count must be an int, got {type_name(count)} {count!r}", stage.count.span)
        if count < 1:
            self.fail(f"repeat count must be at least 1, got {count}", stage.count.span)
        self.spend(stage.span, layers=1)
        name = self.claim_name(stage.label, "repeat", stage.label_span or stage.span, builder)
        prefix = builder.path + name + "." + ("" if stage.shared else "{i}.")
        inner = ModuleBuilder(name, "repeat", stage.span, prefix, builder, builder.in_repeat or not stage.shared)
        start = TVal(x.type, inner.fresh())  # the body is built once, from its own input
        value = start
        for body_stage in stage.body:
            value = self.apply_stage(body_stage, value, scope, inner)
        if value.type != x.type:
            self.fail(f"a repeated body must keep its input's shape: it turns {x.type} into {value.type}",
                      stage.span)
        body = " -> ".join(getattr(s, "callee", "repeat") for s in stage.body)
        # Tensors of the enclosing scope the body reads (`memory = enc`) are further inputs, the same for every
        # iteration.
        module = ir.Module(name, "repeat", tuple(inner.children), tuple(inner.ops), (start.ref, *inner.captures),
                           (value.ref,), stage.span, count=count, shared=stage.shared, body=body)
        builder.children.append(module)
        out = builder.emit("call", (x.ref, *inner.captures), target=name)
        return TVal(x.type, out)
