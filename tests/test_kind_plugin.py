"""A layer kind from another package: its declaration and its plain-PyTorch class, nothing of specc edited.

The package (LayerScale, Touvron et al. 2021, CaiT) is written to a temporary folder with the metadata pip would
install, so the `specdsl.kinds` entry point finds it as it would an installed package. Then: compile counts it,
to_torch builds it, `--emit-torch` carries its class into a file that runs without the package, ONNX exports it,
and it keeps the contract every built-in kind keeps (tests/kind_contract.py).
"""

import importlib
import json
import os
import subprocess
import sys

import pytest
from kind_contract import check_kind

from specdsl.kinds import KINDS

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow  # `make test-fast` leaves these out (pyproject.toml, markers)

DECLARATION = '''"""LayerScale (Touvron et al. 2021, CaiT): a learned per-channel scale, declared outside specc."""
from specdsl.kinds import Arg, Example, Kind, TorchForm
from specdsl.kinds.base import expect_float, expect_last_dim, positive


class LayerScale(Kind):
    name = "LayerScale"
    summary = "x * gamma, one learned scale per channel (CaiT)"
    args = (Arg("dim", int, check=positive, doc="channels"), Arg("init", float, 1e-5, doc="initial scale"))
    examples = (Example("12", "float[2, 3, 12]"), Example("12, init = 0.1", "float[batch, seq <= 4, 12]"))

    def params(self, a):
        return {"gamma": (a.dim,)}

    def output_type(self, a, x):
        expect_float(x, self.name)
        expect_last_dim(x, a.dim, f"LayerScale({a.dim})")
        return x

    def torch_form(self, a):
        return TorchForm("layerscale_kind.torch_layer:LayerScale", (a.dim, a.init))
'''

TORCH_CLASS = '''import torch
from torch import nn

UNUSED = "a definition the class does not use stays out of the ejected file"


def _scale(x, gamma):
    return x * gamma


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x):
        return _scale(x, self.gamma)
'''

SPEC = """param d = 16
model scaled {
    input x: float[batch, seq <= 8, d]
    y = x -> ln: LayerNorm(d) -> attn: Attention(d, 4) -> ls: LayerScale(d, init = 0.5)
    return x + y
}
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    (root / "layerscale_kind").mkdir()
    (root / "layerscale_kind" / "__init__.py").write_text(DECLARATION)
    (root / "layerscale_kind" / "torch_layer.py").write_text(TORCH_CLASS)
    meta = root / "layerscale_kind-0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: layerscale-kind\nVersion: 0.1\n")
    (meta / "entry_points.txt").write_text("[specdsl.kinds]\nlayerscale = layerscale_kind\n")
    (root / "scaled.spec").write_text(SPEC)
    return root


def run(cmd, plugin_path=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if plugin_path is not None:
        env["PYTHONPATH"] = str(plugin_path)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_the_cli_finds_the_kind_through_its_entry_point(plugin, specc_cmd):
    spec = plugin / "scaled.spec"
    done = run([*specc_cmd, "compile", str(spec), "--json"], plugin)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["params"]["total"] == 16 * 2 + 16 * 3 * 16 + 16 * 16 + 16  # ln, qkv, out, gamma
    # Without the package, the same spec is a located error, not a traceback.
    missing = run([*specc_cmd, "compile", str(spec)])
    assert missing.returncode != 0 and "scaled.spec:4:" in missing.stderr and "Traceback" not in missing.stderr


def test_the_ejected_file_carries_the_class_and_runs_without_the_package(plugin, specc_cmd, tmp_path):
    out = tmp_path / "scaled.py"
    done = run([*specc_cmd, "compile", str(plugin / "scaled.spec"), "--emit-torch", str(out)], plugin)
    assert done.returncode == 0, done.stderr
    source = out.read_text()
    assert "class LayerScale(nn.Module)" in source and "def _scale" in source and "UNUSED" not in source
    ran = run([sys.executable, str(out)], cwd=tmp_path)  # no PYTHONPATH: the package is not importable here
    assert ran.returncode == 0, ran.stderr
    assert "1,072 parameters" in ran.stdout


def test_onnx_export_from_the_cli(plugin, specc_cmd, tmp_path):
    done = run([*specc_cmd, "export", str(plugin / "scaled.spec"), "--onnx", "-o", str(tmp_path / "s.onnx")], plugin)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s.onnx").is_file() and "max |diff|" in done.stdout


def test_the_kind_keeps_the_contract_of_every_kind(plugin, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin))
    importlib.invalidate_caches()
    try:
        module = importlib.import_module("layerscale_kind")  # importing the declaration registers the kind
        for example in module.LayerScale.examples:
            check_kind("LayerScale", example, tmp_path)
    finally:
        dict.pop(KINDS, "LayerScale", None)
        for name in ("layerscale_kind", "layerscale_kind.torch_layer"):
            sys.modules.pop(name, None)


def test_a_package_whose_kinds_fail_to_load_is_named_in_one_line(tmp_path, specc_cmd):
    (tmp_path / "broken_kinds.py").write_text("raise RuntimeError('half-installed')\n")
    meta = tmp_path / "broken_kinds-0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-kinds\nVersion: 0.1\n")
    (meta / "entry_points.txt").write_text("[specdsl.kinds]\nbroken = broken_kinds\n")
    (tmp_path / "scaled.spec").write_text(SPEC)
    done = run([*specc_cmd, "compile", str(tmp_path / "scaled.spec")], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "the kinds of 'broken' (broken_kinds" in done.stderr and "half-installed" in done.stderr
    assert "bug in specc" not in done.stderr
    # A spec that calls only specc's own kinds never loads other packages.
    (tmp_path / "plain.spec").write_text("model m {\n    input x: float[2, 4]\n    return x -> Linear(4, 2)\n}\n")
    assert run([*specc_cmd, "compile", str(tmp_path / "plain.spec")], tmp_path).returncode == 0
