"""The files of `specc export`: weights in one data file beside each graph (forced, or past the threshold), which
`specc generate` and `specc inspect` read, wherever the pair is moved; fp16 export checked against the fp32 model;
`specc inspect`'s parameter count against the spec's for every kind of file; and nothing left by a failed export.
The 2.5 GB export runs only when asked (`pytest -m big`)."""

import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

import specdsl
from conftest import SPECS, specc_here

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
from specdsl.backends import onnx_export, onnx_files, onnx_graph  # noqa: E402
from specdsl.backends.onnx_generate import OnnxGenerator, count_parameters, read_metadata  # noqa: E402

torch.set_num_threads(1)
NANO = SPECS / "nanogpt-shakespeare.spec"
TINY = {"d": 32, "layers": 1, "heads": 2, "ctx": 16}
SMALL_GPT2 = {"d": 32, "layers": 2, "heads": 4, "vocab": 50, "ctx": 24}


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _inspect_count(path) -> tuple[int, str]:
    """`specc inspect`'s parameter count and what it says beside it."""
    shown = specc_here("inspect", path)
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.startswith("parameters in the file: "))
    count, said = re.match(r"parameters in the file: ([\d,]+)(.*)", line).groups()
    return int(count.replace(",", "")), said


def _perturbed(compiled, seed: int = 0):
    """The spec's module with every parameter moved off its initial value (norm weights off 1, biases off 0), so
    the logits have a scale of their own."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = specdsl.to_torch(compiled).eval()
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.2)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from rich.console import Console

    from specdsl.train.loop import train
    run = tmp_path_factory.mktemp("run") / "r"
    train(str(NANO), overrides=TINY, flags={"steps": 20, "batch": 8, "eval_every": 20, "eval_batches": 1,
                                            "lr": 1e-2, "out": str(run)},
          progress=False, console=Console(file=open(os.devnull, "w")))
    return run


# ---- external data ----

@pytest.mark.slow
def test_external_data_export_runs_generates_inspects_and_moves(trained, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "m.onnx"
    done = specc_here("export", NANO, "--onnx", "--checkpoint", trained, "-o", out, "--external-data",
                      "--quantize", "int8")
    assert done.returncode == 0, done.stderr
    assert "m.onnx.data" in done.stdout
    graphs = ["m.onnx", "m.decode.onnx", "m.int8.onnx", "m.int8.decode.onnx"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(graphs + [g + ".data" for g in graphs])
    from specdsl.train import rundir
    compiled, record = rundir.compile_run(rundir.open_existing(trained))  # its vocabulary: the corpus' characters
    params = compiled.analysis.total
    for graph in ("m.onnx", "m.decode.onnx"):  # every weight in the data file, once; the .onnx the graph alone
        assert (folder / (graph + ".data")).stat().st_size == 4 * params
        assert (folder / graph).stat().st_size < 4 * params / 2
        assert onnx_files.external_location(folder / graph) == graph + ".data"
    # onnxruntime, from the path, against PyTorch with the checkpoint's weights
    from specdsl.commands.export import trained_module
    module = trained_module(compiled, trained / "best").eval()
    vocab = compiled.model.hyperparameters["vocab"]
    tokens = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(3))
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"tokens": tokens.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - module(tokens).numpy()).max() <= 1e-4
    text = specc_here("generate", out, "--prompt", "the ", "--max-new-tokens", 20, "--temperature", 0)
    assert text.returncode == 0 and text.stdout.startswith("the "), text.stderr
    int8 = specc_here("generate", folder / "m.int8.onnx", "--prompt", "the ", "--max-new-tokens", 20,
                      "--temperature", 0)
    assert int8.returncode == 0 and int8.stdout.startswith("the "), int8.stderr
    shown = specc_here("inspect", out)
    assert f"weights stored in: {folder / 'm.onnx.data'} ({4 * params:,} bytes)" in shown.stdout
    assert f"parameters in the file: {params:,} (the spec says {params:,})" in shown.stdout
    # The location is relative: the graphs move with their data files, and only with them.
    moved = tmp_path / "elsewhere"
    shutil.move(folder, moved)
    again = specc_here("generate", moved / "m.onnx", "--prompt", "the ", "--max-new-tokens", 20, "--temperature", 0)
    assert again.stdout == text.stdout
    (moved / "m.decode.onnx.data").rename(tmp_path / "lost.data")
    lost = specc_here("generate", moved / "m.onnx", "--prompt", "the ")
    assert lost.returncode == 2 and "onnxruntime cannot load" in lost.stderr and "Traceback" not in lost.stderr
    assert "MISSING" in specc_here("inspect", moved / "m.decode.onnx").stdout


@pytest.mark.slow
def test_the_threshold_decides_external_data(tmp_path, monkeypatch):
    compiled = specdsl.load(SPECS / "mlp.spec")
    onnx_export.export(compiled, tmp_path / "inline.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inline.onnx"]
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_THRESHOLD", 4 * compiled.analysis.total - 1)  # one byte under
    report = onnx_export.export(compiled, tmp_path / "big.onnx")
    assert report["external_data"] and (tmp_path / "big.onnx.data").stat().st_size == 4 * compiled.analysis.total
    assert report["bytes"] == sum((tmp_path / n).stat().st_size for n in ("big.onnx", "big.onnx.data"))
    assert count_parameters(tmp_path / "big.onnx") == compiled.analysis.total
    onnx_files.EXTERNAL_DATA_THRESHOLD = 4 * compiled.analysis.total  # at the threshold: inline (monkeypatch undoes)
    assert not onnx_export.export(compiled, tmp_path / "small.onnx")["external_data"]
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_a_failed_external_export_leaves_nothing_and_keeps_the_last_one(tmp_path, monkeypatch):
    compiled = specdsl.load(SPECS / "gpt2.spec", overrides=SMALL_GPT2)
    out = tmp_path / "m.onnx"
    monkeypatch.setattr(onnx_graph, "TOLERANCE", -1.0)
    with pytest.raises(onnx_graph.ExportError, match="differ"):
        onnx_export.export(compiled, out, external_data=True)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    onnx_export.export(compiled, out, external_data=True)  # an earlier export: replaced only by a good one
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(onnx_graph, "TOLERANCE", -1.0)
    with pytest.raises(onnx_graph.ExportError):
        onnx_export.export(compiled, out, module=_perturbed(compiled), external_data=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    onnx_export.export(compiled, out, module=_perturbed(compiled), external_data=True)  # ours: replaced
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after.keys() == before.keys() and after["m.onnx.data"] != before["m.onnx.data"]


@pytest.mark.parametrize("graphs", ["fp32", "int8"])
def test_ctrl_c_while_publishing_waits_until_every_file_of_the_export_is_in_place(tmp_path, monkeypatch, graphs,
                                                                                 sigint_raises):
    """A Ctrl-C that comes between renaming the new data file and its .onnx (or between the full and decoding
    graphs, fp32 or int8) is held until all of the set are renamed: the files left are one export's, never an old
    graph over new data."""
    compiled = specdsl.load(SPECS / "gpt2.spec", overrides=SMALL_GPT2)
    out = tmp_path / "m.onnx"
    quantize = "int8" if graphs == "int8" else None
    onnx_export.export(compiled, out, external_data=True, quantize=quantize)  # the export to replace
    renamed, rename = [], onnx_files._rename

    def interrupted_after_the_first(staged, target):
        rename(staged, target)
        if graphs in target.name or graphs == "fp32":
            renamed.append(target.name)
            if len(renamed) == 1:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(onnx_files, "_rename", interrupted_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export(compiled, out, module=_perturbed(compiled), external_data=True, quantize=quantize)
    prefix = "m.int8" if graphs == "int8" else "m"
    assert renamed == [f"{prefix}.onnx.data", f"{prefix}.onnx", f"{prefix}.decode.onnx.data", f"{prefix}.decode.onnx"]
    assert _leftovers(tmp_path) == []
    ids = {read_metadata(tmp_path / name)["specc.export_id"] for name in (f"{prefix}.onnx", f"{prefix}.decode.onnx")}
    assert len(ids) == 1
    tokens = np.zeros((1, 4), dtype=np.int64)
    session = ort.InferenceSession(str(tmp_path / f"{prefix}.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = _perturbed(compiled)(torch.from_numpy(tokens)).numpy()
    tolerance = 0.2 if graphs == "int8" else 1e-4  # its own data, the new weights (int8: quantized)
    assert np.abs(session.run(None, {"tokens": tokens})[0] - expected).max() < tolerance


def test_a_data_file_specc_did_not_write_is_never_replaced(tmp_path):
    theirs = tmp_path / "m.onnx.data"
    theirs.write_bytes(b"someone's data")
    done = specc_here("export", SPECS / "mlp.spec", "--onnx", "-o", tmp_path / "m.onnx", "--external-data")
    assert done.returncode == 2 and "is not the data file of" in done.stderr and "Traceback" not in done.stderr
    assert theirs.read_bytes() == b"someone's data" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx.data"]


def test_an_inline_export_over_an_external_one_removes_only_its_data_file(tmp_path):
    """The replaced external export's data file goes with it (nothing names it any more, and it can hold
    gigabytes); a data file the replaced .onnx did not name stays."""
    out = tmp_path / "m.onnx"
    done = specc_here("export", SPECS / "mlp.spec", "--onnx", "-o", out, "--external-data")
    assert done.returncode == 0 and (tmp_path / "m.onnx.data").is_file(), done.stderr
    done = specc_here("export", SPECS / "mlp.spec", "--onnx", "-o", out)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert count_parameters(out) == specdsl.load(SPECS / "mlp.spec").analysis.total
    other = tmp_path / "n.onnx"
    done = specc_here("export", SPECS / "mlp.spec", "--onnx", "-o", other)  # inline; then someone's n.onnx.data
    theirs = tmp_path / "n.onnx.data"
    theirs.write_bytes(b"someone's data")
    done = specc_here("export", SPECS / "mlp.spec", "--onnx", "-o", other)
    assert done.returncode == 0 and theirs.read_bytes() == b"someone's data", done.stderr


# ---- fp16 ----

def test_bf16_and_fp16_with_int8_are_refused_clearly(tmp_path):
    for extra, said in ((["--dtype", "bf16"], "bf16 export is not offered"), (["--dtype", "fp64"], "unknown --dtype"),
                        (["--dtype", "fp16", "--quantize", "int8"], "does not combine with --dtype fp16")):
        done = specc_here("export", SPECS / "mlp.spec", "--onnx", "-o", tmp_path / "m.onnx", *extra)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_fp16_export_is_checked_against_the_fp32_model_and_half_the_size(tmp_path):
    compiled = specdsl.load(SPECS / "llama.spec", overrides={**SMALL_GPT2, "d": 64, "kv_heads": 2, "ffn": 96})
    module = _perturbed(compiled)
    # external data: the weights' bytes apart from the graph and its metadata (the spec's sources, at this size)
    full = onnx_export.export(compiled, tmp_path / "fp32.onnx", module=module, external_data=True)
    half = onnx_export.export(compiled, tmp_path / "fp16.onnx", module=module, dtype="fp16", external_data=True)
    assert half["dtype"] == "fp16" and read_metadata(tmp_path / "fp16.onnx")["specc.dtype"] == "fp16"
    weights = {name: (tmp_path / f"{name}.onnx.data").stat().st_size for name in ("fp32", "fp16")}
    assert weights == {"fp32": 4 * compiled.analysis.total, "fp16": 2 * compiled.analysis.total}
    assert half["bytes"] / full["bytes"] < 0.6
    session = ort.InferenceSession(str(tmp_path / "fp16.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].type == "tensor(float16)"
    tokens = torch.randint(0, 50, (3, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = module(tokens).numpy()
    got = session.run(None, {"tokens": tokens.numpy()})[0].astype(np.float32)
    scale = np.abs(expected).max()
    diff = np.abs(got - expected).max()
    assert scale > 1 and 0 < diff <= onnx_graph.FP16_TOLERANCE * scale  # rounded, yet close: measured 0.1% of scale
    assert all(c["max_abs_diff"] <= c["tolerance"] for c in half["checks"])
    assert max(c["tolerance"] for c in half["checks"]) > onnx_graph.FP16_TOLERANCE  # relative to logits over 1
    decode = ort.InferenceSession(str(tmp_path / "fp16.decode.onnx"), providers=["CPUExecutionProvider"])
    assert {i.type for i in decode.get_inputs() if i.name.startswith("past.")} == {"tensor(float16)"}
    assert count_parameters(tmp_path / "fp16.onnx") == compiled.analysis.total


@pytest.mark.slow
def test_the_fp16_check_fails_a_graph_off_by_more_than_its_tolerance(tmp_path, monkeypatch):
    compiled = specdsl.load(SPECS / "gpt2.spec", overrides=SMALL_GPT2)
    monkeypatch.setattr(onnx_graph, "FP16_TOLERANCE", 1e-7)  # under fp16's own rounding: every graph fails
    with pytest.raises(onnx_graph.ExportError, match="differ"):
        onnx_export.export(compiled, tmp_path / "m.onnx", module=_perturbed(compiled), dtype="fp16")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_generate_runs_an_fp16_export(trained, tmp_path):
    out = tmp_path / "m.onnx"
    done = specc_here("export", NANO, "--onnx", "--checkpoint", trained, "-o", out, "--dtype", "fp16")
    assert done.returncode == 0, done.stderr
    assert "in fp16" in done.stdout and "(tolerance" in done.stdout
    generator = OnnxGenerator(out)
    assert generator.cache_dtype == np.float16
    prompt = generator.tokenizer.encode("the ")
    text = specc_here("generate", out, "--prompt", "the ", "--max-new-tokens", 30, "--temperature", 0)
    assert text.returncode == 0 and len(text.stdout) > 30, text.stderr
    assert len(list(generator.generate(prompt, 30, temperature=0))) == 30
    assert "specc.dtype: fp16" in specc_here("inspect", out).stdout


@pytest.mark.slow
def test_an_fp16_sequence_to_sequence_export_decodes_with_fp16_caches(tmp_path):
    compiled = specdsl.load(SPECS / "seq2seq-reverse.spec", overrides={"d": 32, "heads": 2})
    report = onnx_export.export(compiled, tmp_path / "m.onnx", module=_perturbed(compiled), dtype="fp16")
    assert report["encode"]["max_abs_diff"] <= report["encode"]["checks"][0]["tolerance"]
    assert report["decode"]["cache_vs_full_max_abs_diff"] > 0  # fp16 against PyTorch's fp32 full pass
    session = ort.InferenceSession(str(tmp_path / "m.decode.onnx"), providers=["CPUExecutionProvider"])
    assert {i.type for i in session.get_inputs() if i.name.startswith(("past.", "memory."))} == {"tensor(float16)"}


# ---- inspect's count against the spec's ----

@pytest.mark.slow
@pytest.mark.parametrize("case", ["plain", "tied", "int8-tied", "int8-untied", "fp16", "external"])
def test_inspect_counts_the_spec_s_parameters(tmp_path, case):
    """(a) a plain export (LLaMA, untied), (b) GPT-2 with its tied embedding and head, (d) int8 files, (e) fp16 and
    (f) external data: the count read from the file's initializers against the spec's (metadata specc.params). A
    LoRA run's merged export: tests/test_lora.py::test_the_merged_model_exports_and_samples_as_the_unmerged_one."""
    llama = ("llama.spec", {**SMALL_GPT2, "kv_heads": 2, "ffn": 48})
    spec, sets = llama if case in ("plain", "int8-untied") else ("gpt2.spec", SMALL_GPT2)
    compiled = specdsl.load(SPECS / spec, overrides=sets)
    out = tmp_path / "m.onnx"
    onnx_export.export(compiled, out, quantize="int8" if case.startswith("int8") else None,
                       dtype="fp16" if case == "fp16" else "fp32", external_data=case == "external")
    total = compiled.analysis.total
    count, said = _inspect_count(out.with_name("m.int8.onnx") if case.startswith("int8") else out)
    assert count == total and said == f" (the spec says {total:,})"
    if case == "tied":  # the head reads the embedding's table: one initializer, not two
        assert _initializer_shapes(out).count([50, 32]) == 1
    if case == "int8-tied":  # onnxruntime's quantizer stores it once per reader; the int8 pass shares the head's
        shapes = _initializer_shapes(out.with_name("m.int8.onnx"))
        assert shapes.count([32, 50]) == 1 and [50, 32] not in shapes


def _initializer_shapes(path) -> list[list[int]]:
    import onnx
    return [list(t.dims) for t in onnx.load(str(path), load_external_data=False).graph.initializer]


# ---- a model past protobuf's 2 GB ----

@pytest.mark.big
def test_a_2_5_gb_model_exports_to_external_data(tmp_path, specc_cmd):
    """mlp.spec 8448 wide and 10 deep: 643,027,978 fp32 parameters, 2.57 GB of weights, past protobuf's 2 GiB
    limit: exported by a real `specc export` (its time and peak memory printed), then run on onnxruntime."""
    import resource
    sets = {"hidden": 8448, "depth": 10}
    compiled = specdsl.load(SPECS / "mlp.spec", overrides=sets)
    params = compiled.analysis.total
    assert 4 * params > 2**31
    out = tmp_path / "big.onnx"
    started = time.perf_counter()
    done = subprocess.run([*specc_cmd, "export", str(SPECS / "mlp.spec"), "--onnx", "-o", str(out),
                           *(a for k, v in sets.items() for a in ("--set", f"{k}={v}"))],
                          capture_output=True, text=True, timeout=3600)
    took = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux: GiB
    print(f"\nexport of {params:,} parameters: {took:.0f} s, peak RSS {peak:.1f} GiB\n{done.stdout}")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert out.stat().st_size < 1 << 20 and (tmp_path / "big.onnx.data").stat().st_size == 4 * params
    import onnx
    onnx.checker.check_model(str(out))  # from the path: the data file beside it
    assert count_parameters(out) == params
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    logits = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    assert logits.shape == (2, 10) and np.isfinite(logits).all()
