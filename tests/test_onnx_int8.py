"""`specc generate` on the int8 file `--quantize int8` wrote: it decodes with its own int8 decoding graph
(OUT.int8.decode.onnx, from the same export), never with a misleading hint."""

import subprocess

import pytest

from conftest import SPECS

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow


def test_generate_runs_on_the_int8_file_with_its_own_decoding_graph(tmp_path, specc_cmd):
    def specc(*args):
        done = subprocess.run([*specc_cmd, *map(str, args)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return done.stdout
    run, out = tmp_path / "run", tmp_path / "m.onnx"
    specc("train", SPECS / "nanogpt-shakespeare.spec", "--steps", 20, "--eval-every", 10, "--batch", 4, "--set", "d=32",
          "--set", "layers=1", "--set", "heads=2", "--set", "ctx=16", "--out", run)
    shown = specc("export", SPECS / "nanogpt-shakespeare.spec", "--checkpoint", run, "--onnx", "-o", out,
                  "--quantize", "int8")
    assert "m.int8.decode.onnx" in shown and (tmp_path / "m.int8.decode.onnx").is_file()
    int8 = specc("generate", tmp_path / "m.int8.onnx", "--prompt", "the ", "--max-new-tokens", 30, "--temperature", 0)
    assert int8.startswith("the ") and len(int8) > 30
    from specdsl.backends.onnx_generate import read_metadata
    a, b = read_metadata(tmp_path / "m.int8.onnx"), read_metadata(tmp_path / "m.int8.decode.onnx")
    assert a["specc.export_id"] == b["specc.export_id"] == read_metadata(out)["specc.export_id"]
