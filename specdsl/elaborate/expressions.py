"""Expressions: numbers, strings, booleans, names, operators, functions, and the conditions of `assert` and `if`.

Hyperparameter arithmetic is bounded (MAX_INT_BITS, MAX_STRING_CHARS) so that a spec cannot make the compiler
compute forever; `+ - * /` on tensors are element-wise ops of the module being built. A pipeline (`x -> Layer`) is
an expression too: its stage is applied by elaborate/layers.py.
"""

from __future__ import annotations

import math

from .. import syntax as S
from ..errors import SpecError, did_you_mean
from ..kinds import KINDS
from ..shapes import format_shape
from .state import Abort, ElaborationState
from .values import POISON, ModuleBuilder, Poison, Scope, TVal, type_name

MAX_STRING_CHARS = 1_000  # a `+` of strings; names and choices are a few words, and every value is shown in reports
MAX_INT_BITS = 256  # hyperparameter arithmetic beyond 2**256 is a mistake, not a model

_ELEMENTWISE = {"+": "add", "-": "sub", "*": "mul", "/": "div"}  # tensor operators -> their ir.Op
# Functions of hyperparameters: name -> (function, fewest arguments, most arguments or None for any number).
FUNCTIONS = {
    "min": (min, 2, None), "max": (max, 2, None), "abs": (abs, 1, 1), "int": (int, 1, 1),
    "float": (float, 1, 1), "round": (round, 1, 1), "ceil": (math.ceil, 1, 1), "floor": (math.floor, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
}


class Expressions(ElaborationState):
    def eval_scalar(self, expr, scope: Scope):
        value = self.eval(expr, scope, None)
        if isinstance(value, TVal):
            self.fail("a tensor is not allowed here: expected a number, bool or string", expr.span)
        return value

    def eval(self, expr, scope: Scope, builder: ModuleBuilder | None):
        """The value of `expr`: a number, bool, string, tensor (TVal) or POISON. `builder` is the module a tensor
        expression adds its ops to; None where only hyperparameters are allowed."""
        self.spend(expr.span)
        evaluate = self._EVALUATORS.get(type(expr))
        if evaluate is None:
            raise AssertionError(f"unknown expression {expr!r}")
        return evaluate(self, expr, scope, builder)

    def _literal(self, expr: S.Number | S.String | S.Bool, scope: Scope, builder):
        if isinstance(expr, S.Number) and isinstance(expr.value, int) and expr.value.bit_length() > MAX_INT_BITS:
            self.fail("number is too large (more than 2**256)", expr.span)
        return expr.value

    def _name(self, expr: S.Name, scope: Scope, builder: ModuleBuilder | None):
        if expr.id in scope.values:
            value = scope.values[expr.id]
            if isinstance(value, TVal):
                self.read_refs.add(value.ref)
            return value
        known = list(scope.values)
        hint = did_you_mean(expr.id, known)
        if builder is not None and builder.find_label(expr.id):
            hint = f"'{expr.id}' is a layer, not a value"
        self.fail(f"unknown name '{expr.id}'", expr.span, hint=hint)

    def _unary_op(self, expr: S.UnaryOp, scope: Scope, builder: ModuleBuilder | None):
        v = self.eval(expr.operand, scope, builder)
        if isinstance(v, Poison):
            return v
        if expr.op == "not":
            self._want_bool(v, expr.operand)
            return not v
        if isinstance(v, TVal):
            self.fail(f"unary '{expr.op}' on a tensor is not supported", expr.span)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(f"unary '{expr.op}' needs a number, got {type_name(v)}", expr.span)
        return -v if expr.op == "-" else v

    def _binary_op(self, expr: S.BinOp, scope: Scope, builder: ModuleBuilder | None):
        if expr.op in ("and", "or"):  # the right side is evaluated only when it decides
            left = self.eval(expr.left, scope, builder)
            self._want_bool(left, expr.left)
            if isinstance(left, Poison) or (expr.op == "and" and not left) or (expr.op == "or" and left):
                return left
            right = self.eval(expr.right, scope, builder)
            self._want_bool(right, expr.right)
            return right
        left = self.eval(expr.left, scope, builder)
        right = self.eval(expr.right, scope, builder)
        if isinstance(left, Poison) or isinstance(right, Poison):
            return POISON
        if isinstance(left, TVal) or isinstance(right, TVal):
            return self._tensor_op(expr, left, right, builder)
        return self._scalar_op(expr, left, right)

    def _pipe(self, expr: S.Pipe, scope: Scope, builder: ModuleBuilder | None):
        if builder is None:
            self.fail("a layer pipeline is only allowed inside a model or block", expr.span)
        source = self.eval(expr.source, scope, builder)
        if isinstance(source, Poison):
            return POISON
        if not isinstance(source, TVal):
            self.fail(f"'->' needs a tensor on its left, got {type_name(source)} {source!r}", expr.span)
        return self.apply_stage(expr.stage, source, scope, builder)

    def _want_bool(self, v, expr):
        if not isinstance(v, (bool, Poison)):
            shown = "" if isinstance(v, TVal) else f" {v!r}"  # a tensor's type says it all; its repr is internals
            self.fail(f"expected true or false, got {type_name(v)}{shown}", expr.span)

    def _scalar_op(self, expr: S.BinOp, a, b):
        op = expr.op
        if op in ("==", "!="):
            same = a == b and type(a) is type(b) if isinstance(a, bool) or isinstance(b, bool) else a == b
            return same if op == "==" else not same
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            if len(a) + len(b) > MAX_STRING_CHARS:
                self.fail(f"string is longer than {MAX_STRING_CHARS:,} characters", expr.span)
            return a + b
        for v, side in ((a, expr.left), (b, expr.right)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                self.fail(f"'{op}' needs numbers, got {type_name(v)} {v!r}", side.span)
        try:
            if op in ("<", "<=", ">", ">="):
                return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
            if op in ("/", "//", "%") and b == 0:
                self.fail(f"division by zero in '{op}'", expr.span)
            if op == "**":
                result = self._power(expr, a, b)
            else:
                result = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
                          "//": lambda: a // b, "%": lambda: a % b}[op]()
        except OverflowError:
            self.fail(f"'{op}' overflows", expr.span)
        except ZeroDivisionError:
            self.fail(f"division by zero in '{op}'", expr.span)
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            self.fail("value is too large (more than 2**256)", expr.span)
        if isinstance(result, float) and not math.isfinite(result):
            self.fail("value is not finite", expr.span)
        return result

    def _power(self, expr: S.BinOp, a, b):
        # |a| ** b has at least (bits(a) - 1) * b + 1 bits: refuse only what is surely over the limit
        # (2 ** 200 is fine); what passes is at most 2 * MAX_INT_BITS bits, cheap, and checked by the caller.
        if isinstance(b, int) and isinstance(a, int) and b > 0 and (abs(a).bit_length() - 1) * b >= MAX_INT_BITS:
            self.fail(f"{a} ** {b} is too large", expr.span)
        result = a ** b
        if isinstance(result, complex):
            self.fail(f"{a} ** {b} is not a real number", expr.span)
        return result

    def _tensor_op(self, expr: S.BinOp, a, b, builder: ModuleBuilder | None):
        name = _ELEMENTWISE.get(expr.op)
        if name is None or builder is None:
            self.fail(f"'{expr.op}' is not defined on tensors (element-wise ops are + - * /)", expr.span)
        for v, side in ((a, expr.left), (b, expr.right)):
            if not isinstance(v, TVal) and (isinstance(v, bool) or not isinstance(v, (int, float))):
                self.fail(f"'{expr.op}' needs a tensor or a number, got {type_name(v)} {v!r}", side.span)
        if isinstance(a, TVal) and isinstance(b, TVal):
            if a.type.shape != b.type.shape:
                self.fail(f"shape mismatch in '{expr.op}': {format_shape(a.type.shape)} vs "
                          f"{format_shape(b.type.shape)}", expr.span)
            if a.type.dtype != b.type.dtype:
                self.fail(f"dtype mismatch in '{expr.op}': {a.type} vs {b.type}", expr.span)
            out_type = a.type
        else:
            out_type = a.type if isinstance(a, TVal) else b.type
        self.spend(expr.span, layers=1)
        out = builder.emit(name, tuple(v.ref if isinstance(v, TVal) else v for v in (a, b)))
        return TVal(out_type, out)

    def _call_function(self, expr: S.Call, scope: Scope, builder: ModuleBuilder | None):
        spec = FUNCTIONS.get(expr.func)
        if spec is None:
            where = "layer" if expr.func in KINDS or expr.func in self.blocks else None
            if where:
                self.fail(f"'{expr.func}' is a {where}; apply it in a pipeline", expr.span,
                          hint=f"x -> {expr.func}(...)")
            self.fail(f"unknown function '{expr.func}'", expr.span,
                      hint=did_you_mean(expr.func, FUNCTIONS) or
                      f"functions: {', '.join(FUNCTIONS)}")
        func, lo, hi = spec
        if expr.args.keyword:
            self.fail(f"{expr.func}() takes no keyword arguments", expr.args.keyword[0][2])
        args = [self.eval(a, scope, builder) for a in expr.args.positional]
        if len(args) < lo or (hi is not None and len(args) > hi):
            self.fail(f"{expr.func}() takes {lo if lo == hi else f'at least {lo}'} argument(s), got {len(args)}",
                      expr.span)
        if any(isinstance(a, Poison) for a in args):
            return POISON
        for a, node in zip(args, expr.args.positional):
            if isinstance(a, bool) or not isinstance(a, (int, float)):
                shown = "" if isinstance(a, TVal) else f" {a!r}"
                self.fail(f"{expr.func}() needs numbers, got {type_name(a)}{shown}", node.span)
        try:
            result = func(*args)
        except (ValueError, OverflowError) as e:
            self.fail(f"{expr.func}(): {e}", expr.span)
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:  # int(1e300), like 10 ** 300
            self.fail("value is too large (more than 2**256)", expr.span)
        return result

    # How each kind of expression is evaluated: eval looks its node's type up here.
    _EVALUATORS = {
        S.Number: _literal, S.String: _literal, S.Bool: _literal, S.Name: _name, S.UnaryOp: _unary_op,
        S.BinOp: _binary_op, S.Call: _call_function, S.Pipe: _pipe,
    }

    # ---- conditions ----
    def condition(self, expr, scope: Scope, what: str, span) -> bool | None:
        """A compile-time true/false (`assert`, `if`), or None when it failed (and was reported)."""
        try:
            value = self.eval_scalar(expr, scope)
        except Abort:
            return None
        if isinstance(value, Poison):
            return None
        if not isinstance(value, bool):
            self.record(SpecError(f"{what} needs a true/false condition, got {type_name(value)} {value!r}", span))
            return None
        return value

    def check_assert(self, a: S.Assert, scope: Scope) -> None:
        ok = self.condition(a.condition, scope, "assert", a.span)
        if ok is None:
            return
        if not ok:
            names = sorted({n.id for n in names_in(a.condition) if n.id in scope.values})
            shown = ", ".join(f"{n} = {scope.values[n]!r}" for n in names
                              if not isinstance(scope.values[n], (TVal, Poison)))
            self.record(SpecError(f"assertion failed: {a.message or 'condition is false'}", a.span,
                                  notes=[f"with {shown}"] if shown else None))


def names_in(expr):
    """Every Name an expression reads (for the values an assertion failure shows)."""
    if isinstance(expr, S.Name):
        yield expr
    for attr in ("left", "right", "operand"):
        child = getattr(expr, attr, None)
        if child is not None:
            yield from names_in(child)
    if isinstance(expr, S.Call):
        for a in expr.args.positional:
            yield from names_in(a)
