"""The core stays torch-free, the CLI answers, and an installed wheel finds its grammar and spec library."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT, SPECS

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out (pyproject.toml, markers)

HEAVY = ("torch", "onnx", "onnxruntime", "onnxscript", "transformers", "numpy")


def test_compiling_imports_neither_torch_nor_onnx():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from specdsl.cli import app\n"
        f"r = CliRunner().invoke(app, ['compile', {str(SPECS / 'gpt4-moe.spec')!r}, '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(app, ['compile', {str(SPECS / 'gpt2.spec')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_json_and_exit_codes(specc_cmd, tmp_path):
    ok = subprocess.run(specc_cmd + ["compile", str(SPECS / "mixtral.spec"), "--json"], capture_output=True,
                        text=True)
    assert ok.returncode == 0
    j = json.loads(ok.stdout)
    assert j["params"]["total"] == 46_702_792_704 and j["params"]["active"] == 12_879_925_248
    over = subprocess.run(specc_cmd + ["compile", str(SPECS / "gpt2.spec"), "--preset", "medium", "--set",
                                       "layers=2", "--json"], capture_output=True, text=True)
    assert json.loads(over.stdout)["hyperparameters"]["layers"] == 2
    bad = tmp_path / "bad.spec"
    bad.write_text("param d = 8\nmodel m {\n  input x: float[n, d]\n  return x -> Atention(d, 2)\n}\n")
    err = subprocess.run(specc_cmd + ["compile", str(bad)], capture_output=True, text=True)
    assert err.returncode == 2 and "Traceback" not in err.stderr
    assert f"{bad}:4:15: error: unknown layer 'Atention'" in err.stderr
    assert "did you mean 'Attention'?" in err.stderr


def test_help_is_fast_to_import_and_lists_compile(specc_cmd):
    out = subprocess.run(specc_cmd + ["--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "compile" in out.stdout


def test_installed_wheel_finds_grammar_and_library(tmp_path):
    pytest.importorskip("hatchling")
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheel_dir.glob("specdsl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "specdsl/_data/grammar/specc.lark" in names and "specdsl/_data/specs/std/transformer.spec" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    # Run from an empty folder with only the installed copy on the path: no checkout to fall back on.
    user_spec = tmp_path / "user.spec"
    user_spec.write_text('use "std/transformer.spec"\nparam d = 16\nmodel m {\n input t: int[b, s <= 8]\n'
                         ' x = t -> Embedding(10, d) -> gpt_block(d, 2)\n return x }\n')
    code = ("import specdsl, specdsl.resources as r, sys\n"
            "print(specdsl.__file__)\nprint(r.grammar_path())\n"
            f"print(specdsl.load({str(user_spec)!r}).analysis.total)\n"
            "print(specdsl.load(r.specs_root() / 'gpt2.spec').analysis.total)\n")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         check=True).stdout.split()
    assert out[0].startswith(str(target)) and out[1].startswith(str(target))
    assert int(out[2]) == 10 * 16 + 12 * 16 * 16 + 13 * 16
    assert int(out[3]) == 124_439_808
