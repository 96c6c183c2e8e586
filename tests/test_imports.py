"""The import graph follows the pipeline: no module of the core imports a backend, training, the CLI, torch, onnx or
numpy, not even inside a function; and no module imports one that imports it back (no cycles, lazy imports
included). Read from the source with ast, so a lazy import counts like any other."""

import ast
from pathlib import Path

from conftest import ROOT, SPECS

PACKAGE = ROOT / "specdsl"
CORE = ("parse", "syntax", "elaborate", "ir", "shapes", "analysis", "contract", "errors", "text", "io", "settings",
        "tokenizer", "context_window", "resources", "system", "compiled", "version", "kinds")
ABOVE_THE_CORE = ("specdsl.backends", "specdsl.train", "specdsl.cli", "specdsl.commands", "specdsl.launch", "torch",
                  "onnx", "onnxruntime", "onnxscript", "numpy")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known: dict) -> set[str]:
    """Every module `name` imports, anywhere in it. `from . import x` of a submodule x counts as x alone."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            submodules = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(base)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_the_core_imports_nothing_above_it():
    edges = graph()
    core = [m for m in edges if m.count(".") and m.split(".")[1] in CORE]
    assert len(core) > 20  # the kinds are in it
    wrong = {m: sorted(i for i in edges[m] if i == "specdsl" or i.startswith(ABOVE_THE_CORE)) for m in core}
    assert not {m: i for m, i in wrong.items() if i}


def test_no_import_cycles():
    full = graph()
    edges = {m: {i for i in deps if i in full} for m, deps in full.items()}
    done, cycles = set(), []

    def visit(node, path):
        for nxt in sorted(edges[node]):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for node in sorted(edges):
        if node not in done:
            visit(node, [node])
    assert not cycles


def test_onnx_export_knows_nothing_of_training():
    """The exporter takes loaded weights and a scoring task from its caller (the CLI reads the run): it imports
    nothing from specdsl.train, not even inside a function."""
    edges = graph()
    assert "specdsl.backends.onnx_export" in edges
    assert not sorted(i for i in edges["specdsl.backends.onnx_export"] if i.startswith("specdsl.train"))


def test_backends_know_nothing_of_training_or_the_command_line():
    """Backends are leaves above the core: the commands (specdsl/commands) read runs and call them, never the other
    way round."""
    edges = graph()
    backends = [m for m in edges if m.startswith("specdsl.backends.")]
    assert len(backends) > 5
    wrong = {m: sorted(i for i in edges[m] if i.startswith(("specdsl.train", "specdsl.cli", "specdsl.commands",
                                                             "specdsl.launch"))) for m in backends}
    assert not {m: i for m, i in wrong.items() if i}


def test_help_imports_nothing_of_the_compiler():
    """`specc --help` needs the command line and nothing else: not the parser, the kinds or the analysis (the
    package's names load on first use), let alone torch or numpy; nor rich, which typer's rich help would load
    (~120 ms with markdown_it: the app is built with rich_markup_mode=None, click's plain help)."""
    import subprocess
    import sys
    code = ("import sys\nsys.argv = ['specc', '--help']\nfrom specdsl.cli import run\ntry:\n    run()\n"
            "except SystemExit:\n    pass\n"
            "heavy = ('lark', 'specdsl.parse', 'specdsl.kinds', 'specdsl.analysis', 'specdsl.elaborate', 'torch', "
            "'numpy', 'onnx', 'rich', 'markdown_it')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_compile_imports_only_the_compiler():
    """`specc compile --json` (run in loops and scripts) imports the compiler and nothing heavy: no torch, numpy or
    onnx, and no pydantic (typer 0.29 builds a pydantic validator per option; pyproject pins typer below it)."""
    import subprocess
    import sys
    code = ("import sys\nsys.argv = ['specc', 'compile', sys.argv[1], '--json']\nfrom specdsl.cli import run\n"
            "try:\n    run()\nexcept SystemExit:\n    pass\n"
            "heavy = ('torch', 'numpy', 'onnx', 'onnxruntime', 'pydantic', 'transformers', 'tokenizers')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    done = subprocess.run([sys.executable, "-c", code, str(SPECS / "gpt2.spec")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"total": 124439808' in done.stdout and done.stdout.strip().splitlines()[-1] == "[]"


def test_the_package_gives_its_names_and_submodules_on_first_use():
    import subprocess
    import sys
    code = ("import specdsl\nassert specdsl.parse.parse_file and specdsl.load and specdsl.SpecError\n"
            "from specdsl import Compiled, loads\nprint(loads('model m {\\n input x: float[2, 3]\\n return x -> "
            "Linear(3, 4)\\n}\\n').analysis.total)\ntry:\n    specdsl.nothing_here\nexcept AttributeError:\n"
            "    print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["16", "ok"]
