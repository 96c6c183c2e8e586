"""IR -> a standalone, readable PyTorch file (`specc compile FILE --emit-torch out.py`): the eject path.

The file needs torch and nothing of specc: it carries the classes of backends/torch_modules.py, the torch classes
of any kind from another package (each with the imports and definitions it uses), and one class per module of the
spec, with straight-line forward code. Parameter names are the IR's paths, so a checkpoint of the
compiled spec loads into the ejected model unchanged. Generating it needs no torch.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib.util
import keyword
import re
from pathlib import Path

from .. import ir
from ..analysis import analyse
from ..errors import SpecError
from ..kinds import TorchForm, torch_form_of
from ..kinds.base import BUILTIN_TORCH_MODULE
from ..shapes import Sym
from ..version import __version__


def _camel(name: str) -> str:
    out = "".join(part[:1].upper() + part[1:] for part in name.replace("-", "_").split("_") if part)
    return out if out and out[0].isalpha() else f"M{out}"


def _attr(name: str) -> str:
    """self.<name>, or getattr for names that are Python keywords."""
    return f'getattr(self, "{name}")' if keyword.iskeyword(name) else f"self.{name}"


def _assign(name: str, value: str) -> str:
    return f'self.add_module("{name}", {value})' if keyword.iskeyword(name) else f"self.{name} = {value}"


def _wrap(call: str, width: int = 100) -> str:
    """Break a long constructor call after its commas, one argument a line."""
    if len(call) <= width:
        return call
    head, args = call.split("(", 1)
    parts = args[:-1].split(", ")
    return f"{head}(\n            " + ",\n            ".join(parts) + ",\n        )"


# What forward code itself refers to besides the spec's values: a value by one of these names would hide it.
_FORWARD_NAMES = {"self", "torch", "range", "block", "_"}


def _ident(name: str) -> str:
    """A value's name in forward code: an unnamed value `%3` is h3 (so a spec's own `h3` becomes h3_, as does a
    keyword or a name forward code refers to)."""
    if name.startswith("%"):
        return f"h{name[1:]}"
    clash = keyword.iskeyword(name) or name in _FORWARD_NAMES or re.fullmatch(r"h\d+", name)
    return f"{name}_" if clash else name


def _doc(text) -> str:
    """Text from a spec inside a generated docstring: backslashes and double quotes escaped, so no `\"\"\"` can
    end the docstring, and anything unprintable (a newline, a control, a bidirectional override) as its escape.
    The docstring reads back as the text itself."""
    return "".join("\\" + c if c in '\\"' else c if c.isprintable() else repr(c)[1:-1] for c in str(text))


@functools.lru_cache(maxsize=1)
def _support() -> str:
    """What the ejected file carries of torch_modules.py: all of it but the module docstring."""
    support = Path(__file__).with_name("torch_modules.py").read_text(encoding="utf-8")
    return support[support.index('"""', 3) + 3:].lstrip()


def _binds(node: ast.stmt) -> set[str]:
    """The names a top-level statement binds: an import's, a def's or class's, an assignment's targets."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()


@functools.lru_cache(maxsize=1)
def _support_names() -> frozenset[str]:
    """Every name the support code binds at its top level (its imports, `F` and `nn` among them, classes,
    functions, constants), read from the code itself so the two cannot drift."""
    return frozenset(name for node in ast.parse(_support()).body for name in _binds(node))


def _reserved() -> frozenset[str]:
    """Names a generated class must not take: the support code's, the alias `Model`, builtins and keywords (a block
    named `none` would be class `None`)."""
    return _support_names() | {"Model", *dir(builtins), *keyword.kwlist}


def _carried(module: str, name: str) -> tuple[str, set[str]]:
    """A kind's own torch class, for the ejected file: the class and the top-level definitions and imports of its
    module that it uses, transitively, in the module's order; and the names they bind. Read from the source, not
    imported (generating needs no torch). Raises LookupError when there is no such class."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise LookupError(f"no Python source for module '{module}'")
    source = Path(spec.origin).read_text(encoding="utf-8")
    body = [n for n in ast.parse(source).body
            if not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    owner = {bound: node for node in body for bound in _binds(node)}
    if not isinstance(owner.get(name), ast.ClassDef):
        raise LookupError(f"module '{module}' defines no class '{name}'")
    wanted, todo = set(), [owner[name]]
    while todo:
        node = todo.pop()
        if id(node) in wanted:
            continue
        wanted.add(id(node))
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        todo += [owner[u] for u in used if u in owner and not isinstance(node, (ast.Import, ast.ImportFrom))]
    kept = [n for n in body if id(n) in wanted]
    names = set().union(*(_binds(n) for n in kept if not isinstance(n, (ast.Import, ast.ImportFrom))))
    return "\n\n\n".join(ast.get_source_segment(source, n) for n in kept), names


class _Emitter:
    def __init__(self, model: ir.Model):
        self.model = model
        self.classes: list[str] = []
        self.carried: dict[tuple[str, str], str] = {}  # (module, class) -> source, for kinds of other packages
        self.taken: set[str] = set(_reserved())

    def form(self, layer: ir.Layer) -> TorchForm:
        """The layer's torch form, its class carried into the file when it is not torch.nn's or specc's: a
        SpecError at the layer when the kind has no torch form or its class cannot be found."""
        form = torch_form_of(layer)
        module, name = form.location
        if module == BUILTIN_TORCH_MODULE and name not in _support_names():
            raise SpecError(f"layer kind '{layer.kind}' names torch class '{name}', which specc does not have",
                            layer.span, hint="a TorchForm names 'nn.X', a class of specc's torch_modules, "
                                             "or 'package.module:X'")
        if module not in ("torch.nn", BUILTIN_TORCH_MODULE) and (module, name) not in self.carried:
            try:
                source, names = _carried(module, name)
            except (LookupError, ImportError, SyntaxError, OSError, ValueError) as e:
                raise SpecError(f"the torch class '{form.constructor}' of layer kind '{layer.kind}' cannot be "
                                f"carried into the ejected file: {e}", layer.span) from None
            clash = names & self.taken
            if clash:
                raise SpecError(f"the torch class '{form.constructor}' of layer kind '{layer.kind}' defines "
                                f"{', '.join(sorted(clash))}, a name the ejected file already uses", layer.span,
                                hint="rename it in its module")
            self.taken |= names
            self.carried[(module, name)] = source
        return form

    def class_name(self, base: str) -> str:
        name, n = _camel(base), 1
        while name in self.taken:
            n += 1
            name = f"{_camel(base)}{n}"
        self.taken.add(name)
        return name

    def module(self, module: ir.Module, cls: str, root: bool = False) -> None:
        init, forward = [], []
        for child in module.children:
            if isinstance(child, ir.Layer):
                form = self.form(child)
                init.append(_assign(child.name, _wrap(form.source())))
            elif child.is_repeat:
                body = self.class_name(f"{child.name}_block")
                self.module(child, body)
                if child.shared:
                    init.append(_assign(child.name, f"{body}()") + f"  # one block, applied {child.count} times")
                else:
                    init.append(_assign(child.name, f"nn.ModuleList([{body}() for _ in range({child.count})])"))
            else:
                sub = self.class_name(child.label)
                self.module(child, sub)
                init.append(_assign(child.name, f"{sub}()"))
        kinds = {c.name: c for c in module.children}
        values = {name: _ident(name) for name in module.inputs}

        def val(v):
            return values[v] if isinstance(v, str) else repr(v)

        symbols = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
        for op in module.ops:
            out = _ident(op.out)
            values[op.out] = out
            if op.op != "call":
                forward.append(f"{out} = {val(op.args[0])} {symbols[op.op]} {val(op.args[1])}")
                continue
            child, x = kinds[op.target], val(op.args[0])
            extra = "".join(f", {val(a)}" for a in op.args[1:])  # tensors read beside the piped one (memory)
            if isinstance(child, ir.Module) and child.is_repeat and child.shared:
                forward.append(f"{out} = {x}")
                forward.append(f"for _ in range({child.count}):")
                forward.append(f"    {out} = {_attr(child.name)}({out}{extra})")
            elif isinstance(child, ir.Module) and child.is_repeat:
                forward.append(f"{out} = {x}")
                forward.append(f"for block in {_attr(child.name)}:")
                forward.append(f"    {out} = block({out}{extra})")
            else:
                forward.append(f"{out} = {_attr(child.name)}({x}{extra})")
        outputs = ", ".join(values[o] for o in module.outputs)
        params = ", ".join(_ident(n) for n in module.inputs)
        if root:
            params, defaults = self._root_inputs()
            forward = defaults + forward
            init += ["init_gpt2_(self)"] + self._ties()
        what = f"one block of a repeat: {module.body}" if module.is_repeat else f"block {module.label}"
        doc = f'    """{_doc(what)}."""\n' if not root else self._root_doc()
        lines = [f"class {cls}(nn.Module):", doc, "    def __init__(self):", "        super().__init__()"]
        lines += [f"        {line}" for line in init]
        lines += ["", f"    def forward(self, {params}):"]
        lines += [f"        {line}" for line in forward]
        lines.append(f"        return {outputs}")
        self.classes.append("\n".join(lines))

    def _root_inputs(self):
        names, defaults = [], []
        given = [i for i in self.model.inputs if i.default is None]
        for inp in self.model.inputs:
            if inp.default is None:
                names.append(_ident(inp.name))
                continue
            names.append(f"{_ident(inp.name)}=None")
            dims = []
            for d in inp.type.shape:
                if isinstance(d, Sym):
                    src = next((g, k) for g in given for k, e in enumerate(g.type.shape)
                               if isinstance(e, Sym) and e.name == d.name)
                    dims.append(f"{_ident(src[0].name)}.shape[{src[1]}]")
                else:
                    dims.append(str(d))
            ref = _ident(given[0].name)
            dtype = "torch.long" if inp.type.dtype == "int" else f"{ref}.dtype"
            defaults += [f"if {_ident(inp.name)} is None:  # an optional input: filled with its default",
                         f"    {_ident(inp.name)} = torch.full(({', '.join(dims)},), {inp.default!r}, "
                         f"dtype={dtype}, device={ref}.device)"]
        return ", ".join(names), defaults

    def _ties(self):
        lines = []
        for path, layer in ir.layers_with_paths(self.model.root):
            for p in layer.params:
                if p.tied_to is not None:
                    *inner, leaf = p.name.split(".")
                    owner = ".".join([path] + inner)
                    lines.append(f"self.get_submodule({owner!r}).{leaf} = self.get_parameter({p.tied_to!r})"
                                 "  # tied: one tensor")
        return lines

    def _root_doc(self) -> str:
        m, a = self.model, analyse(self.model)
        hyper = ", ".join(f"{k}={v!r}" for k, v in m.hyperparameters.items())
        where = f"{m.path or 'spec'}{', preset ' + m.preset if m.preset else ''}"
        return (f'    """{_doc(m.name)}: {a.total:,} parameters ({_doc(where)}).\n\n'
                f'    Hyperparameters: {_doc(hyper)}\n    """\n')


def emit_torch(model: ir.Model) -> str:
    """The standalone PyTorch source of a model."""
    emitter = _Emitter(model)
    for layer, _ in ir.applications(model.root):  # every torch form checked, and classes carried, before naming
        emitter.form(layer)
    root = emitter.class_name(model.name)
    emitter.module(model.root, root, root=True)
    support = "\n\n\n".join([_support().rstrip(), *emitter.carried.values()])
    header = (f'"""{_doc(model.name)}, generated by specc {__version__} from {_doc(model.path or "a spec")}.\n\n'
              f"Standalone PyTorch: no import of specc. Parameter names are the spec's parameter paths, so\n"
              f"specc checkpoints load here unchanged. Build it with `{root}()` (alias `Model`).\n"
              '"""\n\n')
    main = (f"\n\nModel = {root}\n"
            f'\n\nif __name__ == "__main__":\n    model = {root}()\n'
            f'    print(f"{root}: {{sum(p.numel() for p in model.parameters()):,}} parameters")\n')
    return header + support.rstrip() + "\n\n\n" + "\n\n\n".join(emitter.classes) + main
