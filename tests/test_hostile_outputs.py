"""Issue 9, "nothing lost, nothing run": what specc writes (--emit-torch, ONNX files) and shows (error reports, the
report, `specc inspect`, generated text) stays safe whatever a spec, a path or a file holds."""

import ast
import json
import os
import re
import shutil
import stat

import pytest

import specdsl
from conftest import SPECS
from specdsl.commands.generate import stream
from specdsl.errors import SpecError
from specdsl.io import check_output, write_text_atomic
from specdsl.text import printable
from specdsl.tokenizer import Tokenizer

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from typer.testing import CliRunner  # noqa: E402

from specdsl import cli  # noqa: E402
from specdsl.backends import onnx_export  # noqa: E402
from specdsl.backends.onnx_generate import OnnxGenerator, read_metadata  # noqa: E402

torch.set_num_threads(1)


def specc(*args):
    """`specc ARGS` in this process: (exit code, stdout, stderr)."""
    r = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception  # never a traceback
    return r.exit_code, r.stdout, r.stderr


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---- 1. --emit-torch: nothing from a spec runs when the ejected file is imported ----

PAYLOAD = "__import__('pathlib').Path('{}').touch()"
HOSTILE_SPEC = '''param about = "\\"\\"\\";{hyper};\\"\\"\\""
param d = 8
preset "p\\"\\"\\";{preset};\\"\\"\\"" {{ d = 4 }}
model m {{
    input x: float[batch, d]
    return x -> lin: Linear(d, d)
}}
'''


def _import_time_calls(tree: ast.Module) -> list[str]:
    """Calls the module makes when imported: outside classes, functions, lambdas and the __main__ guard; and
    statements other than the docstring that are bare expressions."""
    calls, todo = [], list(tree.body[1:])  # after the docstring
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.Lambda)) or \
                isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
            continue
        if isinstance(node, (ast.Call, ast.Expr)):
            calls.append(ast.unparse(node))
        todo.extend(ast.iter_child_nodes(node))
    return calls


def test_spec_text_in_the_ejected_file_is_never_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A hostile hyperparameter, a hostile preset name, and a path with triple quotes and newlines.
    name = 'm"""\n' + PAYLOAD.format("pwned-path") + '\n""".spec'
    spec = tmp_path / name
    spec.write_text(HOSTILE_SPEC.format(hyper=PAYLOAD.format("pwned-hyper"),
                                        preset=PAYLOAD.format("pwned-preset")))
    preset = 'p""";' + PAYLOAD.format("pwned-preset") + ';"""'
    compiled = specdsl.load(spec, preset=preset)
    source = specdsl.emit_torch(compiled)
    tree = ast.parse(source)
    assert _import_time_calls(tree) == []
    namespace: dict = {}
    exec(compile(source, "ejected.py", "exec"), namespace)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no payload ran
    doc = namespace["Model"].__doc__
    assert preset in doc and str(spec) in doc  # the docstrings read back as the text itself
    assert f"about={compiled.model.hyperparameters['about']!r}" in doc
    assert sum(p.numel() for p in namespace["Model"]().parameters()) == compiled.analysis.total == 20


BLOCK_NAMES_SPEC = """
param d = 8
block f(d: int) {
    input x
    return x -> attn: Attention(d, 2, causal = true)
}
""" + "".join(f"""
block {name}(d: int) {{
    input x
    return x -> lin: Linear(d, d)
}}
""" for name in ("nn", "torch", "math", "none")) + """
model m {
    input torch: float[batch, seq <= 8, d]
    self = torch -> a: f(d) -> b: nn(d) -> c: torch(d) -> e: math(d) -> g: none(d)
    return self -> h: repeat 2 { f(d) }
}
"""


def test_block_names_never_shadow_the_support_code(tmp_path):
    # f -> class F would hide torch.nn.functional as F; none -> class None is not Python; values named torch and
    # self would hide the module and the instance in forward.
    compiled = specdsl.loads(BLOCK_NAMES_SPEC)
    namespace: dict = {}
    exec(compile(specdsl.emit_torch(compiled), "ejected.py", "exec"), namespace)
    ejected = namespace["Model"]()
    assert sum(p.numel() for p in ejected.parameters()) == compiled.analysis.total
    reference = specdsl.to_torch(compiled).eval()
    ejected.load_state_dict(reference.state_dict())
    x = torch.randn(2, 5, 8)
    assert torch.equal(ejected.eval()(x), reference(x))


# ---- 2. Files we write for users ----

def test_an_output_target_must_be_a_regular_file_in_an_existing_folder(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    cases = {"fifo": "a named pipe", "folder": "a directory", "link": "a symbolic link",
             "missing/x.py": "does not exist", "file/x.py": "cannot write"}
    for target, what in cases.items():
        with pytest.raises(SpecError, match=what) as e:
            check_output(tmp_path / target)
        assert e.value.span.line == 0 and e.value.span.file == str(tmp_path / target)
    with pytest.raises(SpecError, match="a character device"):
        check_output("/dev/null")
    check_output(tmp_path / "file")
    check_output(tmp_path / "new.py")
    assert not (tmp_path / "missing").exists() and sorted(p.name for p in tmp_path.iterdir()) == \
        ["fifo", "file", "folder", "link"]


def test_written_files_get_the_umask_or_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "new.txt", "x")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o604)
        write_text_atomic(kept, "new")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o604 and kept.read_text() == "new"
    finally:
        os.umask(old)


def test_emit_torch_refuses_what_it_must_not_replace(tmp_path):
    spec = SPECS / "mlp.spec"
    os.mkfifo(tmp_path / "fifo.py")
    (tmp_path / "dir.py").mkdir()
    (tmp_path / "target.py").write_text("mine")
    (tmp_path / "link.py").symlink_to(tmp_path / "target.py")
    for target, what in [("fifo.py", "a named pipe"), ("dir.py", "a directory"), ("link.py", "a symbolic link"),
                         ("nope/out.py", "does not exist")]:
        code, _, err = specc("compile", spec, "--emit-torch", tmp_path / target)
        assert code == 2 and what in err, err
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo.py").st_mode) and (tmp_path / "dir.py").is_dir()
    assert (tmp_path / "link.py").is_symlink() and (tmp_path / "target.py").read_text() == "mine"
    assert not (tmp_path / "nope").exists()
    code, out, err = specc("compile", spec, "--emit-torch", tmp_path / "ok.py")
    assert code == 0 and f"wrote {tmp_path / 'ok.py'}" in err and "params" in out
    assert stat.S_IMODE((tmp_path / "ok.py").stat().st_mode) == 0o666 & ~_umask()
    code, out, _ = specc("compile", spec, "--emit-torch", "-")  # the source alone on stdout
    assert code == 0 and out == (tmp_path / "ok.py").read_text()


def test_onnx_export_checks_every_target_before_the_export(tmp_path, monkeypatch):
    compiled = specdsl.load(SPECS / "nanogpt-shakespeare.spec", overrides={"d": 16, "layers": 1, "heads": 2})
    monkeypatch.setattr(onnx_export, "to_torch", lambda *a: pytest.fail("exported before checking the targets"))
    os.mkfifo(tmp_path / "m.decode.onnx")
    with pytest.raises(SpecError, match="a named pipe"):
        onnx_export.export(compiled, tmp_path / "m.onnx")
    (tmp_path / "n.int8.onnx").mkdir()
    with pytest.raises(SpecError, match="a directory"):
        onnx_export.export(compiled, tmp_path / "n.onnx", quantize="int8")
    with pytest.raises(SpecError, match="does not exist"):
        onnx_export.export(compiled, tmp_path / "sub" / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.decode.onnx", "n.int8.onnx"]


# ---- one export of a language model whose vocabulary (100) is larger than its tokenizer's (29 ids) ----

LARGER_VOCAB = {"d": 16, "layers": 1, "heads": 2, "ctx": 16, "vocab": 100}
CHARS = Tokenizer("char", "\n abcdefghijklmnopqrstuvwxyz")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    compiled = specdsl.load(SPECS / "nanogpt-shakespeare.spec", overrides=LARGER_VOCAB)
    out = tmp_path_factory.mktemp("hostile") / "m.onnx"
    onnx_export.export(compiled, out, tokenizer=CHARS.to_json())  # random weights: every id gets its chance
    return compiled, out


@pytest.mark.slow
def test_exported_files_get_the_umask(exported):
    out = exported[1]
    for path in (out, out.with_name("m.decode.onnx")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()


# ---- 3. A decoding graph from another export is never used ----

def _with_metadata(source, target, changes: dict):
    """A copy of an ONNX file with some metadata_props changed."""
    proto = onnx.load(str(source))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(changes)
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(target))
    return target


@pytest.mark.slow
def test_generate_refuses_a_decoding_graph_from_another_export(exported, tmp_path):
    out = exported[1]
    full, decode = read_metadata(out), read_metadata(out.with_name("m.decode.onnx"))
    assert full["specc.export_id"] == decode["specc.export_id"]
    assert list(OnnxGenerator(out).generate([1, 2], 3, temperature=0))  # its own pair: fine
    # Another model exported to the same name (a classifier: it writes no decoding graph) leaves the old one.
    shutil.copy(out.with_name("m.decode.onnx"), tmp_path / "m.decode.onnx")
    onnx_export.export(specdsl.load(SPECS / "mlp.spec"), tmp_path / "m.onnx")
    code, _, err = specc("generate", tmp_path / "m.onnx", "--max-new-tokens", 3)
    assert code == 2 and "does not belong to" in err and "export" in err
    assert (tmp_path / "m.decode.onnx").exists()  # refused, not deleted
    # A full graph of another export beside this decoding graph.
    _with_metadata(out, tmp_path / "m.onnx", {"specc.export_id": "another-export"})
    with pytest.raises(SpecError, match="does not belong to"):
        OnnxGenerator(tmp_path / "m.onnx")


# ---- 4. Crafted or damaged ONNX files ----

def test_inspect_an_empty_file_is_an_error(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    code, out, err = specc("inspect", tmp_path / "empty.onnx")
    assert code == 2 and "not an ONNX model" in err and "parameters" not in out


def _contract(**change) -> str:
    """The contract of the exported test model (nanoGPT, d=32, 1 layer, 2 heads, ctx 16), with `change` applied."""
    good = {"language_model": True, "causal": True, "inputs": ["tokens"], "outputs": ["logits"], "vocab": 37,
            "ids": 37, "context": 16, "cache": [[2, 16]]}
    return json.dumps({**good, **change})


CRAFTED = [
    ("specc.contract", "not json"), ("specc.contract", "[]"), ("specc.contract", "[" * 100000),
    ("specc.contract", _contract(cache=[[-1, 8]])), ("specc.contract", _contract(cache=[[10**12, 8]])),
    ("specc.contract", _contract(cache=[[2, 16], [2, 16]])), ("specc.contract", _contract(cache={"a": 1})),
    ("specc.contract", _contract(context=-5)), ("specc.contract", _contract(context="16")),
    ("specc.contract", json.dumps({"context": 16})),
    ("specc.tokenizer", "{"), ("specc.tokenizer", '{"kind": "sentencepiece"}'), ("specc.tokenizer", "[]"),
    ("specc.tokenizer", '{"kind": "char", "chars": 5}'), ("specc.tokenizer", '{"kind": "char", "chars": ""}'),
]


@pytest.mark.slow  # the export fixture
@pytest.mark.parametrize("key, value", CRAFTED)
def test_crafted_metadata_is_a_located_error(exported, tmp_path, key, value):
    out = exported[1]
    crafted = _with_metadata(out.with_name("m.decode.onnx"), tmp_path / "c.onnx", {key: value})
    with pytest.raises(SpecError) as e:
        list(OnnxGenerator(crafted).generate([1], 2))
    assert e.value.span.file == str(crafted) and f"'{key}'" in e.value.message


@pytest.mark.slow  # the export fixture
def test_inspect_shows_metadata_as_text(exported, tmp_path):
    out = exported[1]
    hostile = "[/x] [bold]\x1b[2J\x1b]0;title\x07\u202e"
    crafted = _with_metadata(out, tmp_path / "c.onnx", {
        "specc.model": hostile, "specc.params": "[/x]", "specc.spec": "line 1\n\x1b[31mline 2",
        "specc.sources": json.dumps([{"name": hostile, "text": "a\nb"}]), "specc.extra": "x" * 5000,
        "specc.tokenizer": json.dumps({"kind": hostile, "model": "y" * 3000})})
    code, shown, err = specc("inspect", crafted)
    assert code == 0, err
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "specc.model: [/x] [bold]␛[2J␛]0;title␇\ufffd" in shown and "line 1\n␛[31mline 2" in shown
    assert "specc.sources: 1 file: [/x] [bold]␛[2J␛]0;title␇\ufffd (2 lines)" in shown
    assert "specc.extra: " + "x" * 200 + "... (5,000 characters)" in shown and "x" * 201 not in shown
    assert "a tokenizer.json of 3,000 characters" in shown and "yyy" not in shown
    many = _with_metadata(out, tmp_path / "many.onnx",
                          {"specc.sources": json.dumps([{"name": "n" * 100, "text": ""}] * 50)})
    code, shown, err = specc("inspect", many)
    assert code == 0 and re.search(r"specc.sources: 50 files: n+ \(0 lines\), n+\.\.\. \([\d,]+ characters\)", shown)


@pytest.mark.slow  # the export fixture
def test_seed_is_bounded(exported):
    for command in ("generate", "sample"):  # typer checks options before the command runs
        code, _, err = specc(command, exported[1], "--seed", -1)
        assert code == 2 and "--seed" in err


# ---- 5. Terminal safety ----

def test_printable_shows_controls_one_character_for_one():
    text = "a\tb\x1b[2J\x00\x7f\x9b\u202e\u2066ok\n"
    shown = printable(text)
    assert len(shown) == len(text)
    assert shown == "a\tb␛[2J␀␡\ufffd\ufffd\ufffdok␊"
    assert printable(text, keep="\t\n").endswith("ok\n")


def test_error_reports_show_escape_sequences_with_the_caret_in_place():
    with pytest.raises(SpecError) as e:
        specdsl.loads('param s = "\x1b]0;t\x07\x1b[2J" + nope\nmodel m {\n input x: float[batch, 2]\n return x\n}\n')
    text = str(e.value)
    assert "\x1b" not in text and "\x07" not in text
    source, caret = [line for line in text.split("\n") if "|" in line][:2]
    assert source[caret.index("^")] == "n"  # under 'nope'


def test_the_report_shows_spec_text_as_text(tmp_path):
    folder = tmp_path / "a["
    folder.mkdir()
    spec = folder / "x].spec"
    spec.write_text('param about = "[/x]"\nparam d = 8\npreset "[/y]\x1b[2J" { d = 4 }\n'
                    "model m {\n    input x: float[batch, d]\n    return x -> lin: Linear(d, d)\n}\n")
    code, out, err = specc("compile", spec, "--preset", "[/y]\x1b[2J")
    assert code == 0, err
    assert "\x1b" not in out and f"({spec},preset[/y]␛[2J)" in "".join(out.split())  # the title wraps


# ---- 6. Streaming decodes whole characters ----

def test_byte_tokens_stream_whole_characters(capsys):
    byte = Tokenizer("byte")
    ids = byte.encode("brûlée")
    assert "".join(byte.stream(iter(ids))) == "brûlée" == byte.decode(ids)
    for bad in ([0xff, 0x41], [0xc3], [0x41, 0xe2, 0x82], [0xed, 0xa0, 0x80]):  # never raises: U+FFFD
        assert "".join(byte.stream(bad)) == bytes(bad).decode("utf-8", errors="replace")
    stream("", iter(ids), byte)
    assert capsys.readouterr().out == "brûlée\n"


def test_generated_text_on_a_terminal_shows_controls(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    stream("", iter(Tokenizer("byte").encode("a\x1b[2J\tb\n")), Tokenizer("byte"))
    assert capsys.readouterr().out == "a␛[2J\tb\n\n"


# ---- 7. A model with more outputs than its tokenizer has ids ----

@pytest.mark.slow  # the export fixture
def test_sampling_chooses_only_ids_the_tokenizer_decodes(exported):
    from specdsl.train.sample import generate
    compiled, out = exported
    hot = list(generate(specdsl.to_torch(compiled).eval(), [1], 150, 16, temperature=5, vocab=CHARS.data_size))
    assert max(hot) < CHARS.data_size
    assert max(OnnxGenerator(out).generate([1], 150, temperature=5)) < CHARS.data_size
    code, text, err = specc("generate", out, "--temperature", 5, "--max-new-tokens", 100)
    assert code == 0 and len(text) > 100, err


def test_specc_sample_chooses_only_ids_the_tokenizer_decodes(tmp_path):
    from rich.console import Console

    from specdsl.train.loop import train
    run = tmp_path / "run"
    train(str(SPECS / "nanogpt-shakespeare.spec"), overrides=LARGER_VOCAB,
          flags={"steps": 2, "batch": 2, "eval_every": 2, "eval_batches": 1, "out": str(run)}, progress=False,
          console=Console(file=open(os.devnull, "w")))
    code, text, err = specc("sample", run, "--temperature", 5, "--max-new-tokens", 100)
    assert code == 0 and len(text) > 100, err
