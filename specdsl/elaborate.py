"""Syntax tree -> IR: resolve `use`, hyperparameters, presets and overrides, check assertions, expand blocks and
repeats, infer every tensor's shape, and name every parameter.

Errors are collected, not raised at the first one: a failing statement records its SpecError and binds a poison
value so that later statements don't report follow-on errors; everything found is raised together at the end.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ir
from . import syntax as S
from .errors import Span, SpecError, did_you_mean
from .io import file_kind
from .kinds import KINDS, REQUIRED, Args, Kind
from .parse import parse_text, read_source
from .resources import specs_root
from .shapes import ShapeError, Sym, TensorType, format_shape

MAX_BLOCK_DEPTH = 32
# The elaboration budget. Blocks calling blocks multiply: ten calls a level, six levels, is 10**6 layers from 2 KB
# of text (434 s and 4.5 GiB before these limits). Measured on the 2-core test machine with the worst cases of
# tests/test_hostile_core.py: a layer costs up to 100 us and 2 KB to elaborate, a step (an expression evaluated or a
# block expanded) up to 6 us, so either limit is reached within about 2 s and 50 MB. Real models are far below:
# the zoo's largest takes 19 layers and 114 steps (repeats are a count, not copies), and 200 transformer blocks
# written out by hand (tests/test_hostile_core.py) 1,800 layers and 11,000 steps.
MAX_LAYERS = 20_000  # layers, modules and element-wise ops created
MAX_STEPS = 250_000  # expressions evaluated and blocks expanded
MAX_STRING_CHARS = 1_000  # a `+` of strings; names and choices are a few words, and every value is shown in reports
MAX_INT_BITS = 256  # hyperparameter arithmetic beyond 2**256 is a mistake, not a model
_TYPES = {"int": int, "float": float, "bool": bool, "string": str}
_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "string"}
UNIVERSAL_ARGS = ("frozen",)  # accepted by every layer: `frozen = true` makes its parameters non-trainable
# The language's keywords: not hyperparameter names.
RESERVED = frozenset(("true", "false", "and", "or", "not", "if", "else", "repeat", "shared", "input", "return",
                      "assert", "use", "param", "preset", "block", "model", "train"))


class _Poison:
    """The value of something that already failed: using it fails silently (the first error was reported)."""


POISON = _Poison()


@dataclass(frozen=True)
class TVal:
    """A tensor value during elaboration: its type and its name in the module's dataflow."""

    type: TensorType
    ref: str


class _Abort(Exception):
    """Unwinds a statement whose error is already recorded."""


@dataclass
class _Builder:
    """Collects one Module's children and ops while its statements are elaborated."""

    name: str
    label: str
    span: Span
    path: str  # path prefix of this module's children ("h.{i}." inside a non-shared repeat)
    parent: _Builder | None = None
    in_repeat: bool = False  # under a non-shared repeat: its tensors have no single path
    children: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    names: dict[str, Span] = field(default_factory=dict)
    labels: dict[str, ir.Layer] = field(default_factory=dict)
    label_paths: dict[str, str] = field(default_factory=dict)
    auto: dict[str, int] = field(default_factory=dict)
    counter: int = 0

    def fresh(self) -> str:
        self.counter += 1
        return f"%{self.counter}"

    def find_label(self, label: str):
        b = self
        while b is not None:
            if label in b.labels:
                return b.labels[label], b.label_paths[label], b.in_repeat
            b = b.parent
        return None

    def all_labels(self) -> list[str]:
        out, b = [], self
        while b is not None:
            out.extend(b.labels)
            b = b.parent
        return out


@dataclass
class _Scope:
    """Names visible to expressions: hyperparameters and local values (tensors or scalars)."""

    values: dict[str, Any]

    def child(self) -> _Scope:
        return _Scope(dict(self.values))


def parse_override(text: str) -> tuple[str, Any]:
    """'d=1024' -> ('d', 1024). Values: int, float, true/false, else a string."""
    where = Span("--set", 0, 0)
    if "=" not in text:
        raise SpecError(f"--set takes NAME=VALUE, got '{text}'", where)
    name, raw = (s.strip() for s in text.split("=", 1))
    if not name.isidentifier():
        raise SpecError(f"--set: '{name}' is not a hyperparameter name", where)
    return name, _literal(raw)


def _literal(raw: str) -> Any:
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


def _type_name(v: Any) -> str:
    if isinstance(v, TVal):
        return f"tensor {v.type}"
    return _TYPE_NAMES.get(type(v), type(v).__name__)


class Elaborator:
    def __init__(self, main: S.SpecFile, saved: SavedSources | None = None):
        self.main = main
        self.saved = saved  # a run's own copies of its sources: `use` reads these, not the filesystem
        self.sources: dict[str, str] = {}  # name -> text of every file `use`d, in the order read
        self.uses: list[tuple[str, str, str]] = []  # (using file, path as written, file it resolved to)
        self.errors: list[SpecError] = []
        self._seen: set[tuple[str, str]] = set()
        self.blocks: dict[str, S.BlockDef] = {}
        self.call_stack: list[tuple[str, Span]] = []
        self._read: set[str] = set()  # refs of tensor values some expression has read (unused-value check)
        self._layers = self._steps = 0  # what the elaboration has created and done (the budget, MAX_LAYERS, MAX_STEPS)
        self._over_budget = False

    # ---- errors ----
    def record(self, err: SpecError) -> None:
        for frame_name, frame_span in reversed(self.call_stack):
            err.add_note(f"in block '{frame_name}' called at {frame_span}")
        for d in err.errors:
            key = (str(d.span), d.message)
            if key not in self._seen:
                self._seen.add(key)
                self.errors.append(SpecError(d.message, d.span, d.hint, d.notes))

    def fail(self, message: str, span: Span, hint: str | None = None):
        self.record(SpecError(message, span, hint))
        raise _Abort

    # ---- the budget ----
    def _spend(self, span: Span, layers: int = 0) -> None:
        """Count one step (and `layers` new IR nodes); past a limit, one located error, and from then on every step
        fails silently, so that the rest of the spec unwinds at once instead of expanding further."""
        if self._over_budget:
            raise _Abort
        self._steps += 1
        self._layers += layers
        if self._layers > MAX_LAYERS or self._steps > MAX_STEPS:
            self._over_budget = True
            self.fail(f"the spec expands to more than {MAX_LAYERS:,} layers" if self._layers > MAX_LAYERS else
                      f"the spec takes more than {MAX_STEPS:,} steps to elaborate", span,
                      hint="blocks that call blocks multiply; to apply a block n times write `repeat n { ... }`, "
                           "which is a count, not copies")

    # ---- files ----
    def load_uses(self, spec: S.SpecFile, visiting: tuple[str, ...] = ()) -> None:
        for block in spec.blocks:
            self._add_block(block)
        for use in spec.uses:
            path = self._resolve_saved(use, spec.path) if self.saved else self._resolve_use(use, spec.path)
            if path is None:
                continue
            key = path if self.saved else os.path.realpath(path)
            if key in visiting:
                continue
            if key in self._loaded:
                self.uses.append((spec.path, use.path, self._loaded[key]))
                continue
            try:
                name, text = (path, self.saved.files[path]) if self.saved else read_source(path)
                used = parse_text(text, name)
            except SpecError as e:
                e.add_note(f"in the file used at {use.span}")
                self.record(e)
                continue
            self._loaded[key] = name
            self.sources[name] = text
            self.uses.append((spec.path, use.path, name))
            self.load_uses(used, visiting + (key,))

    _loaded: dict[str, str]  # the files read so far (real path, or a saved name) -> their name

    def _resolve_saved(self, use: S.Use, from_file: str) -> str | None:
        """A `use` of a run's saved sources: the file it meant when the run was trained, never the filesystem."""
        name = self.saved.links.get((from_file, use.path))
        if name is None or name not in self.saved.files:
            self.record(SpecError(f"'{use.path}' is not among the sources saved with this run", use.span))
            return None
        return name

    def _add_block(self, block: S.BlockDef) -> None:
        if block.name in KINDS:
            self.record(SpecError(f"block '{block.name}' has the name of a built-in layer", block.span,
                                  hint="choose another name"))
            return
        prior = self.blocks.get(block.name)
        if prior is not None and prior is not block:
            if prior.span != block.span:
                self.record(SpecError(f"block '{block.name}' is defined twice (first at {prior.span})", block.span))
            return
        self.blocks[block.name] = block

    def _resolve_use(self, use: S.Use, from_file: str) -> str | None:
        if not use.path.endswith(".spec"):  # nor will a parse error quote the first line of /etc/passwd
            self.record(SpecError(f"cannot use '{use.path}': not a .spec file", use.span,
                                  hint='use takes a .spec file, e.g. use "std/transformer.spec"'))
            return None
        here = Path(from_file).parent if from_file and not from_file.startswith("<") else Path(".")
        for base in (here, specs_root()):
            candidate = base / use.path
            try:
                mode = os.stat(candidate).st_mode
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:  # a name too long for the file system, a loop of links...
                self.record(SpecError(f"cannot read '{use.path}' to use: {e.strerror or e}", use.span))
                return None
            if not stat.S_ISREG(mode):  # read_source's check, reported at the use
                self.record(SpecError(f"'{use.path}' is not a regular file ({file_kind(mode)})", use.span,
                                      hint="a spec is a text file"))
                return None
            return str(candidate)
        self.record(SpecError(f"cannot find '{use.path}' to use", use.span,
                              hint=f"paths are relative to the spec's folder, then to the library {specs_root()}"))
        return None

    # ---- hyperparameters ----
    def hyperparameters(self, preset: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
        spec = self.main
        declared = {p.name: p for p in spec.params}
        assigned: dict[str, tuple[Any, bool]] = {}  # name -> (Expr or value, is_expr)
        if preset is not None:
            presets = {p.name: p for p in spec.presets}
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
        first_preset: dict[str, S.Preset] = {}
        for p in spec.presets:
            if p.name in first_preset:
                self.record(SpecError(f"preset '{p.name}' is defined twice (first at {first_preset[p.name].span})",
                                      p.span))
            first_preset.setdefault(p.name, p)
        seen: dict[str, S.ParamDecl] = {}
        scope = _Scope({})
        for decl in spec.params:
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
                value = self._check_type(value, decl.type, decl.name, decl.span)
            except _Abort:
                value = POISON
            scope.values[decl.name] = value
        for a in spec.asserts:
            self.check_assert(a, scope)
        return scope.values

    def _coerce_like(self, value, default, decl: S.ParamDecl):
        # An untyped hyperparameter takes the type of its default: --set p=1 on `param p = 0.1` is the float 1.0.
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(default, _Poison) or type(value) is type(default):
            return value
        self.fail(f"--set {decl.name}={value}: expected {_type_name(default)} like its default, "
                  f"got {_type_name(value)}", Span("--set", 0, 0))

    def _check_type(self, value, type_name: str | None, name: str, span: Span):
        if type_name is None or isinstance(value, _Poison):
            return value
        want = _TYPES[type_name]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if type(value) is not want:
            self.fail(f"'{name}' is declared {type_name} but its value {value!r} is {_type_name(value)}", span)
        return value

    def condition(self, expr, scope: _Scope, what: str, span: Span) -> bool | None:
        """A compile-time true/false (`assert`, `if`), or None when it failed (and was reported)."""
        try:
            value = self.eval_scalar(expr, scope)
        except _Abort:
            return None
        if isinstance(value, _Poison):
            return None
        if not isinstance(value, bool):
            self.record(SpecError(f"{what} needs a true/false condition, got {_type_name(value)} {value!r}", span))
            return None
        return value

    def check_assert(self, a: S.Assert, scope: _Scope) -> None:
        ok = self.condition(a.condition, scope, "assert", a.span)
        if ok is None:
            return
        if not ok:
            names = sorted({n.id for n in _names_in(a.condition) if n.id in scope.values})
            shown = ", ".join(f"{n} = {scope.values[n]!r}" for n in names
                              if not isinstance(scope.values[n], (TVal, _Poison)))
            self.record(SpecError(f"assertion failed: {a.message or 'condition is false'}", a.span,
                                  notes=[f"with {shown}"] if shown else None))

    # ---- expressions ----
    def eval_scalar(self, expr, scope: _Scope):
        value = self.eval(expr, scope, None)
        if isinstance(value, TVal):
            self.fail("a tensor is not allowed here: expected a number, bool or string", expr.span)
        return value

    def eval(self, expr, scope: _Scope, builder: _Builder | None):
        self._spend(expr.span)
        if isinstance(expr, (S.Number, S.String, S.Bool)):
            if isinstance(expr, S.Number) and isinstance(expr.value, int) and expr.value.bit_length() > MAX_INT_BITS:
                self.fail("number is too large (more than 2**256)", expr.span)
            return expr.value
        if isinstance(expr, S.Name):
            if expr.id in scope.values:
                value = scope.values[expr.id]
                if isinstance(value, TVal):
                    self._read.add(value.ref)
                return value
            known = list(scope.values)
            hint = did_you_mean(expr.id, known)
            if builder is not None and builder.find_label(expr.id):
                hint = f"'{expr.id}' is a layer, not a value"
            self.fail(f"unknown name '{expr.id}'", expr.span, hint=hint)
        if isinstance(expr, S.UnaryOp):
            v = self.eval(expr.operand, scope, builder)
            return self._unary(expr, v)
        if isinstance(expr, S.BinOp):
            if expr.op in ("and", "or"):
                left = self.eval(expr.left, scope, builder)
                self._want_bool(left, expr.left)
                if isinstance(left, _Poison) or (expr.op == "and" and not left) or (expr.op == "or" and left):
                    return left
                right = self.eval(expr.right, scope, builder)
                self._want_bool(right, expr.right)
                return right
            left = self.eval(expr.left, scope, builder)
            right = self.eval(expr.right, scope, builder)
            return self._binary(expr, left, right, builder)
        if isinstance(expr, S.Call):
            return self._call_function(expr, scope, builder)
        if isinstance(expr, S.Pipe):
            if builder is None:
                self.fail("a layer pipeline is only allowed inside a model or block", expr.span)
            source = self.eval(expr.source, scope, builder)
            if isinstance(source, _Poison):
                return POISON
            if not isinstance(source, TVal):
                self.fail(f"'->' needs a tensor on its left, got {_type_name(source)} {source!r}", expr.span)
            return self.apply_stage(expr.stage, source, scope, builder)
        raise AssertionError(f"unknown expression {expr!r}")

    def _want_bool(self, v, expr):
        if not isinstance(v, (bool, _Poison)):
            shown = "" if isinstance(v, TVal) else f" {v!r}"  # a tensor's type says it all; its repr is internals
            self.fail(f"expected true or false, got {_type_name(v)}{shown}", expr.span)

    def _unary(self, expr: S.UnaryOp, v):
        if isinstance(v, _Poison):
            return v
        if expr.op == "not":
            self._want_bool(v, expr.operand)
            return not v
        if isinstance(v, TVal):
            self.fail(f"unary '{expr.op}' on a tensor is not supported", expr.span)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(f"unary '{expr.op}' needs a number, got {_type_name(v)}", expr.span)
        return -v if expr.op == "-" else v

    _ARITH = {"+": "add", "-": "sub", "*": "mul", "/": "div"}

    def _binary(self, expr: S.BinOp, a, b, builder):
        op = expr.op
        if isinstance(a, _Poison) or isinstance(b, _Poison):
            return POISON
        if isinstance(a, TVal) or isinstance(b, TVal):
            return self._tensor_op(expr, a, b, builder)
        if op in ("==", "!="):
            same = a == b and type(a) is type(b) if isinstance(a, bool) or isinstance(b, bool) else a == b
            return same if op == "==" else not same
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            if len(a) + len(b) > MAX_STRING_CHARS:
                self.fail(f"string is longer than {MAX_STRING_CHARS:,} characters", expr.span)
            return a + b
        for v, side in ((a, expr.left), (b, expr.right)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                self.fail(f"'{op}' needs numbers, got {_type_name(v)} {v!r}", side.span)
        try:
            if op in ("<", "<=", ">", ">="):
                return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
            if op in ("/", "//", "%") and b == 0:
                self.fail(f"division by zero in '{op}'", expr.span)
            if op == "**":
                # |a| ** b has at least (bits(a) - 1) * b + 1 bits: refuse only what is surely over the limit
                # (2 ** 200 is fine); what passes is at most 2 * MAX_INT_BITS bits, cheap, and checked below.
                if isinstance(b, int) and isinstance(a, int) and b > 0 and \
                        (abs(a).bit_length() - 1) * b >= MAX_INT_BITS:
                    self.fail(f"{a} ** {b} is too large", expr.span)
                result = a ** b
                if isinstance(result, complex):
                    self.fail(f"{a} ** {b} is not a real number", expr.span)
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

    def _tensor_op(self, expr: S.BinOp, a, b, builder: _Builder | None):
        name = self._ARITH.get(expr.op)
        if name is None or builder is None:
            self.fail(f"'{expr.op}' is not defined on tensors (element-wise ops are + - * /)", expr.span)
        for v, side in ((a, expr.left), (b, expr.right)):
            if not isinstance(v, TVal) and (isinstance(v, bool) or not isinstance(v, (int, float))):
                self.fail(f"'{expr.op}' needs a tensor or a number, got {_type_name(v)} {v!r}", side.span)
        if isinstance(a, TVal) and isinstance(b, TVal):
            if a.type.shape != b.type.shape:
                self.fail(f"shape mismatch in '{expr.op}': {format_shape(a.type.shape)} vs "
                          f"{format_shape(b.type.shape)}", expr.span)
            if a.type.dtype != b.type.dtype:
                self.fail(f"dtype mismatch in '{expr.op}': {a.type} vs {b.type}", expr.span)
            out_type = a.type
        else:
            out_type = a.type if isinstance(a, TVal) else b.type
        self._spend(expr.span, layers=1)
        out = builder.fresh()
        builder.ops.append(ir.Op(name, tuple(v.ref if isinstance(v, TVal) else v for v in (a, b)), out))
        return TVal(out_type, out)

    _FUNCTIONS = {
        "min": (min, 2, None), "max": (max, 2, None), "abs": (abs, 1, 1), "int": (int, 1, 1),
        "float": (float, 1, 1), "round": (round, 1, 1), "ceil": (math.ceil, 1, 1), "floor": (math.floor, 1, 1),
        "sqrt": (math.sqrt, 1, 1),
    }

    def _call_function(self, expr: S.Call, scope: _Scope, builder):
        spec = self._FUNCTIONS.get(expr.func)
        if spec is None:
            where = "layer" if expr.func in KINDS or expr.func in self.blocks else None
            if where:
                self.fail(f"'{expr.func}' is a {where}; apply it in a pipeline", expr.span,
                          hint=f"x -> {expr.func}(...)")
            self.fail(f"unknown function '{expr.func}'", expr.span,
                      hint=did_you_mean(expr.func, self._FUNCTIONS) or
                      f"functions: {', '.join(self._FUNCTIONS)}")
        func, lo, hi = spec
        if expr.args.keyword:
            self.fail(f"{expr.func}() takes no keyword arguments", expr.args.keyword[0][2])
        args = [self.eval(a, scope, builder) for a in expr.args.positional]
        if len(args) < lo or (hi is not None and len(args) > hi):
            self.fail(f"{expr.func}() takes {lo if lo == hi else f'at least {lo}'} argument(s), got {len(args)}",
                      expr.span)
        if any(isinstance(a, _Poison) for a in args):
            return POISON
        for a, node in zip(args, expr.args.positional):
            if isinstance(a, bool) or not isinstance(a, (int, float)):
                shown = "" if isinstance(a, TVal) else f" {a!r}"
                self.fail(f"{expr.func}() needs numbers, got {_type_name(a)}{shown}", node.span)
        try:
            result = func(*args)
        except (ValueError, OverflowError) as e:
            self.fail(f"{expr.func}(): {e}", expr.span)
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:  # int(1e300), like 10 ** 300
            self.fail("value is too large (more than 2**256)", expr.span)
        return result

    # ---- layers, blocks and repeats ----
    def apply_stage(self, stage, x: TVal, scope: _Scope, builder: _Builder):
        if isinstance(stage, S.Repeat):
            return self.apply_repeat(stage, x, scope, builder)
        if stage.callee in KINDS:
            return self.apply_layer(stage, KINDS[stage.callee], x, scope, builder)
        if stage.callee in self.blocks:
            return self.apply_block(stage, self.blocks[stage.callee], x, scope, builder)
        hint = did_you_mean(stage.callee, list(KINDS) + list(self.blocks))
        if hint is None and stage.callee in scope.values:
            hint = f"'{stage.callee}' is a value; combine values with + - * /"
        self.fail(f"unknown layer '{stage.callee}'", stage.span, hint=hint)

    def _bind_args(self, what: str, names: list[str], stage_args: S.Arguments, span: Span) -> dict[str, Any]:
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
                          hint=did_you_mean(name, names) or f"arguments: {', '.join(names) or 'none'}")
            if name in bound:
                self.fail(f"argument '{name}' of {what} is given twice", kspan)
            bound[name] = expr
        return bound

    def apply_layer(self, stage: S.LayerCall, kind: Kind, x: TVal, scope: _Scope, builder: _Builder):
        names = [a.name for a in kind.args] + (["tie"] if kind.tie_param else [])
        bound = self._bind_args(kind.name, names, stage.args, stage.span)
        if "tie" in bound and stage.args.positional[len(kind.args):]:
            self.fail("tie is given by name: `tie = layer`", bound["tie"].span)
        a = Args()
        tie_target: tuple[ir.Layer, str] | None = None
        frozen = False
        if "frozen" in bound:
            frozen = self._arg_value(bound["frozen"], bool, "frozen", kind, scope, builder)
        for arg in kind.args:
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
        # `tie = label` is accepted by the kinds that declare a tie_param.
        tie_expr = next((e for n, e, _ in stage.args.keyword if n == "tie"), None)
        if tie_expr is not None:
            tie_target = self._resolve_tie(tie_expr, kind, builder)
        try:
            out_type = kind.output_type(a, x.type)
            shapes = kind.params(a)
        except ShapeError as e:
            self.fail(str(e), stage.span)
        self._spend(stage.span, layers=1)
        name = self._claim_name(stage.label, kind.name.lower(), stage.label_span or stage.span, builder)
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
        layer = ir.Layer(name, kind.name, tuple(a.items()), tuple(params), x.type, out_type,
                         stage.span, kind.describe(a))
        builder.children.append(layer)
        if stage.label is not None:
            builder.labels[stage.label] = layer
            builder.label_paths[stage.label] = builder.path + name
        out = builder.fresh()
        builder.ops.append(ir.Op("call", (x.ref,), out, target=name))
        return TVal(out_type, out)

    def _arg_value(self, expr, want, name: str, kind: Kind, scope, builder, choices=()):
        if want is str and choices and isinstance(expr, S.Name) and expr.id not in scope.values:
            value = expr.id  # a bare choice word: act = gelu
        else:
            value = self.eval(expr, scope, builder)
        if isinstance(value, _Poison):
            raise _Abort
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not want:
            self.fail(f"{kind.name} argument '{name}' must be {_TYPE_NAMES.get(want, want)}, got "
                      f"{_type_name(value)} {value!r}" if not isinstance(value, TVal) else
                      f"{kind.name} argument '{name}' must be {_TYPE_NAMES.get(want, want)}, got a tensor",
                      expr.span)
        if choices and value not in choices:
            self.fail(f"{kind.name} argument '{name}' must be one of {', '.join(choices)}, got '{value}'", expr.span,
                      hint=did_you_mean(value, choices))
        return value

    def _resolve_tie(self, expr, kind: Kind, builder: _Builder):
        if kind.tie_param is None:
            self.fail(f"{kind.name} has no weight to tie", expr.span)
        if not isinstance(expr, S.Name):
            self.fail("tie takes the label of a layer, e.g. `tie = wte`", expr.span)
        found = builder.find_label(expr.id)
        if found is None and _labelled_in_repeat(builder, expr.id, lambda: self._spend(expr.span)):
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

    def _claim_name(self, label: str | None, base: str, span: Span, builder: _Builder) -> str:
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

    def apply_block(self, stage: S.LayerCall, block: S.BlockDef, x: TVal, scope: _Scope, builder: _Builder):
        if len(self.call_stack) >= MAX_BLOCK_DEPTH:
            self.fail(f"blocks nest more than {MAX_BLOCK_DEPTH} deep: does '{block.name}' call itself?", stage.span)
        self._spend(stage.span, layers=stage.label is not None)  # a labelled call is a module
        names = [p.name for p in block.params]
        bound = self._bind_args(f"block '{block.name}'", names, stage.args, stage.span)
        if "frozen" in bound:
            self.fail("`frozen` applies to layers, not to block calls", stage.span)
        block_scope = _Scope({})
        for p in block.params:
            if p.name in bound:
                value = self.eval(bound[p.name], scope, builder)
                if isinstance(value, TVal):
                    self.fail(f"block argument '{p.name}' must be a hyperparameter, got a tensor",
                              bound[p.name].span)
            elif p.default is not None:
                value = self._eval_in_block(p.default, block_scope, block, stage)
            else:
                self.fail(f"block '{block.name}' needs argument '{p.name}'", stage.span,
                          hint=f"{block.name}({', '.join(q.name for q in block.params if q.default is None)})")
            if isinstance(value, _Poison):
                raise _Abort
            value = self._check_type(value, p.type, p.name, (bound[p.name].span if p.name in bound else stage.span))
            block_scope.values[p.name] = value
        if stage.label is not None:
            inner = _Builder(stage.label, block.name, stage.span, builder.path + stage.label + ".", builder,
                             builder.in_repeat)
            self._claim_name(stage.label, block.name, stage.label_span or stage.span, builder)
        else:
            inner = builder  # an unlabelled block call is inlined: its layers are named in the caller's scope
        self.call_stack.append((block.name, stage.span))
        try:
            result = self.elaborate_body(block.body, block_scope, inner, piped=x, owner=block)
        finally:
            self.call_stack.pop()
        if not isinstance(result, TVal):
            raise _Abort
        if inner is builder:
            return result
        module = ir.Module(inner.name, block.name, tuple(inner.children), tuple(inner.ops), (x.ref,),
                           (result.ref,), stage.span)
        builder.children.append(module)
        out = builder.fresh()
        builder.ops.append(ir.Op("call", (x.ref,), out, target=inner.name))
        return TVal(result.type, out)

    def _eval_in_block(self, expr, block_scope, block, stage):
        self.call_stack.append((block.name, stage.span))
        try:
            return self.eval_scalar(expr, block_scope)
        finally:
            self.call_stack.pop()

    def apply_repeat(self, stage: S.Repeat, x: TVal, scope: _Scope, builder: _Builder):
        count = self.eval_scalar(stage.count, scope)
        if isinstance(count, _Poison):
            raise _Abort
        if isinstance(count, bool) or not isinstance(count, int):
            self.fail(f"repeat count must be an int, got {_type_name(count)} {count!r}", stage.count.span)
        if count < 1:
            self.fail(f"repeat count must be at least 1, got {count}", stage.count.span)
        self._spend(stage.span, layers=1)
        name = self._claim_name(stage.label, "repeat", stage.label_span or stage.span, builder)
        prefix = builder.path + name + "." + ("" if stage.shared else "{i}.")
        inner = _Builder(name, "repeat", stage.span, prefix, builder, builder.in_repeat or not stage.shared)
        value = x
        start = TVal(x.type, "x")
        value = start
        for body_stage in stage.body:
            value = self.apply_stage(body_stage, value, scope, inner)
        if value.type != x.type:
            self.fail(f"a repeated body must keep its input's shape: it turns {x.type} into {value.type}",
                      stage.span)
        body = " -> ".join(getattr(s, "callee", "repeat") for s in stage.body)
        module = ir.Module(name, "repeat", tuple(inner.children), tuple(inner.ops), ("x",), (value.ref,),
                           stage.span, count=count, shared=stage.shared, body=body)
        builder.children.append(module)
        out = builder.fresh()
        builder.ops.append(ir.Op("call", (x.ref,), out, target=name))
        return TVal(x.type, out)

    # ---- statements ----
    def elaborate_body(self, body, scope: _Scope, builder: _Builder, piped: TVal | None, owner):
        """Run a block's or model's statements. Returns the block's single output (or the model's outputs)."""
        scope = scope.child()
        inputs: list[ir.Input] = []
        returned = None
        returned_exprs: tuple = ()
        failed_inputs = 0
        hyperparameters = set(scope.values)  # the model's hyperparameters, or the block's parameters
        tensors: list[tuple[S.Let, str]] = []  # tensor values the body names, to find the ones never read
        for stmt in self._statements(body, scope):
            try:
                if returned is not None and not isinstance(stmt, S.Return):
                    self.fail("a statement after `return`: it would never count", stmt.span,
                              hint="move it before the return")
                if isinstance(stmt, S.Input):
                    try:
                        inputs.append(self._input(stmt, scope, builder, piped, owner, len(inputs) + failed_inputs))
                    except _Abort:
                        # Declared but broken (already reported): poison the name so that its uses, and the
                        # "no `input`" check below, don't report follow-on errors.
                        failed_inputs += 1
                        scope.values[stmt.name] = POISON
                        raise
                elif isinstance(stmt, S.Let):
                    if stmt.name in hyperparameters:
                        scope.values[stmt.name] = POISON  # reported once; its uses stay quiet
                        self.fail(f"'{stmt.name}' is a hyperparameter: a value needs another name", stmt.span,
                                  hint="hyperparameters change with --set or a preset, never inside the model")
                    try:
                        scope.values[stmt.name] = self.eval(stmt.value, scope, builder)
                    except _Abort:
                        scope.values[stmt.name] = POISON
                    if isinstance(scope.values[stmt.name], TVal):
                        tensors.append((stmt, scope.values[stmt.name].ref))
                elif isinstance(stmt, S.Assert):
                    self.check_assert(stmt, scope)
                elif isinstance(stmt, S.Return):
                    if returned is not None:
                        self.fail("a second return", stmt.span)
                    returned_exprs = stmt.values
                    returned = POISON
                    returned = [self.eval(v, scope, builder) for v in stmt.values]
            except _Abort:
                pass
        if returned is not None:
            self._unused(tensors)
        if isinstance(owner, S.BlockDef):
            if not inputs and not failed_inputs:
                self.fail(f"block '{owner.name}' has no `input`", owner.span,
                          hint="a block starts with `input x` and ends with `return ...`")
            if returned is None:
                self.fail(f"block '{owner.name}' has no `return`", owner.span)
            if returned is POISON or any(isinstance(v, _Poison) for v in returned):
                raise _Abort
            if len(returned) != 1 or not isinstance(returned[0], TVal):
                self.fail(f"block '{owner.name}' must return one tensor", returned_exprs[0].span)
            return returned[0]
        if returned is None:
            self.fail(f"model '{owner.name}' has no `return`", owner.span,
                      hint="end the model with `return logits`")
        if not inputs and not failed_inputs:
            self.fail(f"model '{owner.name}' has no `input`", owner.span,
                      hint="declare one, e.g. `input tokens: int[batch, seq <= ctx]`")
        self._model_inputs = inputs
        if returned is POISON:
            raise _Abort
        outputs = []
        for i, (v, e) in enumerate(zip(returned, returned_exprs)):
            if isinstance(v, _Poison):
                raise _Abort
            if not isinstance(v, TVal):
                self.fail(f"a model returns tensors, got {_type_name(v)} {v!r}", e.span)
            oname = e.id if isinstance(e, S.Name) else ("output" if len(returned) == 1 else f"output_{i}")
            outputs.append((oname, v))
        return outputs

    def _unused(self, tensors: list) -> None:
        """A tensor named and never read: its layers would be counted, and trained, for nothing (and DDP refuses
        parameters that get no gradient). An error, like a statement after `return`."""
        for stmt, ref in tensors:
            if ref not in self._read:
                self.record(SpecError(f"'{stmt.name}' is computed but never used: its layers would not affect the "
                                      "output", stmt.span, hint=f"use '{stmt.name}', return it, or delete the line"))

    def _statements(self, body, scope: _Scope):
        """The statements of a body, with each `if` replaced by its chosen branch (evaluated when reached)."""
        for stmt in body:
            if not isinstance(stmt, S.If):
                yield stmt
                continue
            cond = self.condition(stmt.condition, scope, "`if`", stmt.condition.span)
            if cond is None:
                continue
            yield from self._statements(stmt.then if cond else stmt.otherwise, scope)

    def _input(self, stmt: S.Input, scope: _Scope, builder: _Builder, piped, owner, index: int) -> ir.Input:
        if stmt.name in scope.values:
            self.fail(f"input '{stmt.name}' shadows a hyperparameter or value of the same name", stmt.span)
        if isinstance(owner, S.BlockDef):
            if index > 0:
                self.fail(f"block '{owner.name}' takes one input; '{stmt.name}' is a second", stmt.span)
            value = piped
            if stmt.default is not None:
                self.fail("a block's input has no default: it is what the pipeline feeds in", stmt.default.span)
            if stmt.type is not None:
                declared = self._tensor_type(stmt.type, scope)
                if not _compatible(declared, piped.type):
                    self.fail(f"block '{owner.name}' expects input {declared} but got {piped.type}", stmt.span)
            scope.values[stmt.name] = TVal(value.type, value.ref)
            return ir.Input(stmt.name, value.type, stmt.span)
        if stmt.type is None:
            self.fail(f"model input '{stmt.name}' needs a type", stmt.span,
                      hint=f"input {stmt.name}: int[batch, seq <= ctx]")
        ttype = self._tensor_type(stmt.type, scope)
        default = None
        if stmt.default is not None:
            default = self.eval_scalar(stmt.default, scope)
            if isinstance(default, bool) or not isinstance(default, (int, float)):
                self.fail(f"an input's default fills the tensor: a number, got {_type_name(default)}",
                          stmt.default.span)
        scope.values[stmt.name] = TVal(ttype, stmt.name)
        return ir.Input(stmt.name, ttype, stmt.span, default)

    def _tensor_type(self, t: S.TensorType, scope: _Scope) -> TensorType:
        dims = []
        for d in t.dims:
            if isinstance(d, S.Name) and d.id not in scope.values:
                dims.append(Sym(d.id))
            elif isinstance(d, S.BinOp) and d.op == "<=" and isinstance(d.left, S.Name):
                bound = self.eval_scalar(d.right, scope)
                if isinstance(bound, _Poison):
                    raise _Abort
                if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
                    self.fail(f"a dimension bound must be a positive int, got {bound!r}", d.right.span)
                dims.append(Sym(d.left.id, bound))
            else:
                v = self.eval_scalar(d, scope)
                if isinstance(v, _Poison):
                    raise _Abort
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    self.fail(f"a dimension must be a positive int or a name, got {v!r}", d.span)
                dims.append(v)
        return TensorType(t.dtype or "float", tuple(dims))

    def _in_source_order(self) -> list[SpecError]:
        """The errors as a reader meets them: the command line's (--set, --preset) first, then this file's by line
        and column (blocks and hyperparameters are checked before the model, wherever they are written), then those
        of used files in the order found."""
        def key(e: SpecError):
            s = e.span
            if s.file == self.main.path:
                return (1, s.line, s.col)
            return (0 if s.file.startswith("--") else 2, 0, 0)
        return sorted(self.errors, key=key)

    # ---- the model ----
    def model(self, preset: str | None, overrides: dict[str, Any]) -> ir.Model:
        spec = self.main
        self._loaded = {}
        self.load_uses(spec)
        hyper = self.hyperparameters(preset, overrides)
        if not spec.models:
            where = spec.start
            raise SpecError.combine(self._in_source_order() + [SpecError(
                "no model in this file", where, hint="a spec defines `model NAME { input ...  return ... }`")])
        for extra in spec.models[1:]:
            self.record(SpecError(f"a second model '{extra.name}': one model per file", extra.span))
        model_def = spec.models[0]
        root = _Builder("", model_def.name, model_def.span, "")
        outputs = None
        self._model_inputs = []
        try:
            outputs = self.elaborate_body(model_def.body, _Scope(dict(hyper)), root, None, model_def)
        except _Abort:
            pass
        train = self.settings(spec, hyper)
        if self.errors:
            raise SpecError.combine(self._in_source_order())
        inputs = tuple(self._model_inputs)
        module = ir.Module("", model_def.name, tuple(root.children), tuple(root.ops),
                           tuple(i.name for i in inputs), tuple(v.ref for _, v in outputs), model_def.span)
        return ir.Model(model_def.name, module, inputs, tuple((n, v.type) for n, v in outputs),
                        {k: v for k, v in hyper.items()}, path=spec.path, preset=preset, train=train,
                        sources=tuple(self.sources.items()), uses=tuple(self.uses))

    def settings(self, spec: S.SpecFile, hyper: dict[str, Any]) -> dict[str, Any]:
        """The `train { ... }` section, each value checked against the setting's type (specdsl/settings.py)."""
        from .settings import TrainConfig, setting_problem, setting_type
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
                    value = self.eval_scalar(expr, _Scope(dict(hyper)))
                except _Abort:
                    continue
                want = setting_type(name)
                if want is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if type(value) is not want:
                    self.record(SpecError(f"training setting '{name}' must be {_TYPE_NAMES[want]}, got "
                                          f"{_type_name(value)} {value!r}", expr.span))
                    continue
                problem = setting_problem(name, value)
                if problem:
                    self.record(SpecError(problem, expr.span))
                    continue
                settings[name] = value
        return settings


def _labelled_in_repeat(builder: _Builder, label: str, step) -> bool:
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


def _compatible(declared: TensorType, actual: TensorType) -> bool:
    if declared.rank != actual.rank or declared.dtype != actual.dtype:
        return False
    return all(not isinstance(d, int) or d == a for d, a in zip(declared.shape, actual.shape))


def _names_in(expr):
    if isinstance(expr, S.Name):
        yield expr
    for attr in ("left", "right", "operand"):
        child = getattr(expr, attr, None)
        if child is not None:
            yield from _names_in(child)
    if isinstance(expr, S.Call):
        for a in expr.args.positional:
            yield from _names_in(a)


@dataclass(frozen=True)
class SavedSources:
    """A spec's files as a run saved them: texts by name, and which file each `use` resolved to."""

    files: dict[str, str]
    links: dict[tuple[str, str], str]


def elaborate(spec: S.SpecFile, preset: str | None = None, overrides: dict[str, Any] | None = None,
              saved: SavedSources | None = None) -> ir.Model:
    try:
        return Elaborator(spec, saved).model(preset, dict(overrides or {}))
    except RecursionError:
        raise SpecError("the spec nests too deeply to elaborate", spec.start) from None


def load(path: str | os.PathLike, preset: str | None = None, overrides: dict[str, Any] | None = None) -> ir.Model:
    """Read, parse and elaborate a spec file. Raises SpecError (with every error found) on bad input."""
    name, text = read_source(path)
    return _with_source(elaborate(parse_text(text, name), preset, overrides), text)


def loads(text: str, preset: str | None = None, overrides: dict[str, Any] | None = None,
          name: str = "<string>") -> ir.Model:
    return _with_source(elaborate(parse_text(text, name), preset, overrides), text)


def load_saved(sources: list[tuple[str, str]], uses: list[tuple[str, str, str]], preset: str | None = None,
               overrides: dict[str, Any] | None = None) -> ir.Model:
    """Elaborate a spec from saved sources (a run directory's): `sources` is (name, text), the main file first;
    `uses` says which saved file each `use` resolved to when they were saved."""
    (name, text), files = sources[0], dict(sources)
    saved = SavedSources(files, {(using, written): to for using, written, to in uses})
    return _with_source(elaborate(parse_text(text, name), preset, overrides, saved), text)


def _with_source(model: ir.Model, source: str) -> ir.Model:
    from dataclasses import replace
    return replace(model, source=source, sources=((model.path, source),) + model.sources)
