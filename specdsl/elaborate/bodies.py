"""The statements of a model's or block's body: `input`, named values, `assert`, `if` and `return`; what a block
returns, what a model outputs, and values computed but never used."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import ir
from .. import syntax as S
from ..errors import SpecError
from ..shapes import Sym, TensorType
from .state import Abort, ElaborationState
from .values import POISON, ModuleBuilder, Poison, Scope, TVal, type_name


@dataclass
class _Body:
    """One body being elaborated: where it is, and what its statements have declared and returned so far."""

    scope: Scope
    builder: ModuleBuilder
    piped: TVal | None  # what the pipeline feeds a block; None for a model
    owner: S.BlockDef | S.ModelDef
    hyperparameters: set[str]  # the model's hyperparameters, or the block's parameters
    inputs: list[ir.Input] = field(default_factory=list)
    failed_inputs: int = 0
    returned: list | Poison | None = None
    returned_exprs: tuple = ()
    tensors: list[tuple[S.Let, str]] = field(default_factory=list)  # tensor values named, to find those never read


class Bodies(ElaborationState):
    def elaborate_body(self, body, scope: Scope, builder: ModuleBuilder, piped: TVal | None, owner):
        """Run a block's or model's statements. Returns the block's single output (or the model's outputs)."""
        scope = scope.child()
        state = _Body(scope, builder, piped, owner, set(scope.values))
        for stmt in self._statements(body, scope):
            try:
                if state.returned is not None and not isinstance(stmt, S.Return):
                    self.fail("a statement after `return`: it would never count", stmt.span,
                              hint="move it before the return")
                self._STATEMENTS[type(stmt)](self, stmt, state)
            except Abort:
                pass
        if state.returned is not None:
            self._unused(state.tensors)
        if isinstance(owner, S.BlockDef):
            return self._block_output(state)
        return self._model_outputs(state)

    def _statements(self, body, scope: Scope):
        """The statements of a body, with each `if` replaced by its chosen branch (evaluated when reached)."""
        for stmt in body:
            if not isinstance(stmt, S.If):
                yield stmt
                continue
            cond = self.condition(stmt.condition, scope, "`if`", stmt.condition.span)
            if cond is None:
                continue
            yield from self._statements(stmt.then if cond else stmt.otherwise, scope)

    def _input_statement(self, stmt: S.Input, body: _Body) -> None:
        try:
            if isinstance(body.owner, S.BlockDef):
                declared = self._block_input(stmt, body, len(body.inputs) + body.failed_inputs)
            else:
                declared = self._model_input(stmt, body.scope)
                body.builder.local.add(declared.name)
            body.inputs.append(declared)
        except Abort:
            # Declared but broken (already reported): poison the name so that its uses, and the
            # "no `input`" check, don't report follow-on errors.
            body.failed_inputs += 1
            body.scope.values[stmt.name] = POISON
            raise

    def _let_statement(self, stmt: S.Let, body: _Body) -> None:
        scope = body.scope
        if stmt.name in body.hyperparameters:
            scope.values[stmt.name] = POISON  # reported once; its uses stay quiet
            self.fail(f"'{stmt.name}' is a hyperparameter: a value needs another name", stmt.span,
                      hint="hyperparameters change with --set or a preset, never inside the model")
        try:
            scope.values[stmt.name] = self.eval(stmt.value, scope, body.builder)
        except Abort:
            scope.values[stmt.name] = POISON
        if isinstance(scope.values[stmt.name], TVal):
            body.tensors.append((stmt, scope.values[stmt.name].ref))

    def _assert_statement(self, stmt: S.Assert, body: _Body) -> None:
        self.check_assert(stmt, body.scope)

    def _return_statement(self, stmt: S.Return, body: _Body) -> None:
        if body.returned is not None:
            self.fail("a second return", stmt.span)
        body.returned_exprs = stmt.values
        body.returned = POISON  # until every value is evaluated: a failure leaves the body returned, but broken
        body.returned = [self.eval(v, body.scope, body.builder) for v in stmt.values]

    # How each kind of statement is elaborated (an `if` is replaced by its branch first, in _statements).
    _STATEMENTS = {S.Input: _input_statement, S.Let: _let_statement, S.Assert: _assert_statement,
                   S.Return: _return_statement}

    def _block_output(self, body: _Body) -> TVal:
        owner, returned = body.owner, body.returned
        if not body.inputs and not body.failed_inputs:
            self.fail(f"block '{owner.name}' has no `input`", owner.span,
                      hint="a block starts with `input x` and ends with `return ...`")
        if returned is None:
            self.fail(f"block '{owner.name}' has no `return`", owner.span)
        if returned is POISON or any(isinstance(v, Poison) for v in returned):
            raise Abort
        if len(returned) != 1 or not isinstance(returned[0], TVal):
            self.fail(f"block '{owner.name}' must return one tensor", body.returned_exprs[0].span)
        return returned[0]

    def _model_outputs(self, body: _Body) -> list[tuple[str, TVal]]:
        """The model's outputs, named after the values returned (`output` or `output_i` for expressions)."""
        owner, returned = body.owner, body.returned
        if returned is None:
            self.fail(f"model '{owner.name}' has no `return`", owner.span,
                      hint="end the model with `return logits`")
        if not body.inputs and not body.failed_inputs:
            self.fail(f"model '{owner.name}' has no `input`", owner.span,
                      hint="declare one, e.g. `input tokens: int[batch, seq <= ctx]`")
        self.model_inputs = body.inputs
        if returned is POISON:
            raise Abort
        outputs = []
        for i, (v, e) in enumerate(zip(returned, body.returned_exprs)):
            if isinstance(v, Poison):
                raise Abort
            if not isinstance(v, TVal):
                self.fail(f"a model returns tensors, got {type_name(v)} {v!r}", e.span)
            oname = e.id if isinstance(e, S.Name) else ("output" if len(returned) == 1 else f"output_{i}")
            outputs.append((oname, v))
        return outputs

    def _unused(self, tensors: list) -> None:
        """A tensor named and never read: its layers would be counted, and trained, for nothing (and DDP refuses
        parameters that get no gradient). An error, like a statement after `return`."""
        for stmt, ref in tensors:
            if ref not in self.read_refs:
                self.record(SpecError(f"'{stmt.name}' is computed but never used: its layers would not affect the "
                                      "output", stmt.span, hint=f"use '{stmt.name}', return it, or delete the line"))

    def _block_input(self, stmt: S.Input, body: _Body, index: int) -> ir.Input:
        """A block's input is what the pipeline feeds it; a declared type is checked against it."""
        owner, piped, scope = body.owner, body.piped, body.scope
        if stmt.name in scope.values:
            self.fail(f"input '{stmt.name}' shadows a hyperparameter or value of the same name", stmt.span)
        if index > 0:
            self.fail(f"block '{owner.name}' takes one input; '{stmt.name}' is a second", stmt.span)
        if stmt.default is not None:
            self.fail("a block's input has no default: it is what the pipeline feeds in", stmt.default.span)
        if stmt.type is not None:
            declared = self._tensor_type(stmt.type, scope)
            if not _compatible(declared, piped.type):
                self.fail(f"block '{owner.name}' expects input {declared} but got {piped.type}", stmt.span)
        scope.values[stmt.name] = TVal(piped.type, piped.ref)
        return ir.Input(stmt.name, piped.type, stmt.span)

    def _model_input(self, stmt: S.Input, scope: Scope) -> ir.Input:
        if stmt.name in scope.values:
            self.fail(f"input '{stmt.name}' shadows a hyperparameter or value of the same name", stmt.span)
        if stmt.type is None:
            self.fail(f"model input '{stmt.name}' needs a type", stmt.span,
                      hint=f"input {stmt.name}: int[batch, seq <= ctx]")
        ttype = self._tensor_type(stmt.type, scope)
        default = None
        if stmt.default is not None:
            default = self.eval_scalar(stmt.default, scope)
            if isinstance(default, bool) or not isinstance(default, (int, float)):
                self.fail(f"an input's default fills the tensor: a number, got {type_name(default)}",
                          stmt.default.span)
        scope.values[stmt.name] = TVal(ttype, stmt.name)
        return ir.Input(stmt.name, ttype, stmt.span, default)

    def _tensor_type(self, t: S.TensorType, scope: Scope) -> TensorType:
        """A declared tensor type: each dimension a size, a name (a symbol), or a name bounded (`seq <= ctx`)."""
        dims = []
        for d in t.dims:
            if isinstance(d, S.Name) and d.id not in scope.values:
                dims.append(Sym(d.id))
            elif isinstance(d, S.BinOp) and d.op == "<=" and isinstance(d.left, S.Name):
                bound = self.eval_scalar(d.right, scope)
                if isinstance(bound, Poison):
                    raise Abort
                if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
                    self.fail(f"a dimension bound must be a positive int, got {bound!r}", d.right.span)
                dims.append(Sym(d.left.id, bound))
            else:
                v = self.eval_scalar(d, scope)
                if isinstance(v, Poison):
                    raise Abort
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    self.fail(f"a dimension must be a positive int or a name, got {v!r}", d.span)
                dims.append(v)
        return TensorType(t.dtype or "float", tuple(dims))


def _compatible(declared: TensorType, actual: TensorType) -> bool:
    if declared.rank != actual.rank or declared.dtype != actual.dtype:
        return False
    return all(not isinstance(d, int) or d == a for d, a in zip(declared.shape, actual.shape))
