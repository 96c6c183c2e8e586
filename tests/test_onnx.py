"""`specc export --onnx`, `specc inspect` and `specc generate`: every family matches PyTorch on onnxruntime, shapes
are dynamic, the file describes itself, the KV cache changes nothing, and bad input is a clear error."""

import json
import os
import re
import shutil
import subprocess

import pytest

import specdsl
from conftest import SPECS, specc_here

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from specdsl.backends import onnx_export  # noqa: E402
from specdsl.backends.onnx_generate import OnnxGenerator, count_parameters, read_metadata  # noqa: E402
from specdsl.contract import is_causal, is_language_model  # noqa: E402

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out (pyproject.toml, markers)

torch.set_num_threads(1)
SMALL = {"d": 32, "layers": 2, "heads": 4, "vocab": 50, "ctx": 24}
FAMILIES = [
    ("gpt2.spec", None, SMALL),
    ("llama.spec", None, {**SMALL, "kv_heads": 2, "ffn": 48}),
    ("mixtral.spec", None, {**SMALL, "kv_heads": 1, "ffn": 40, "experts": 4, "top_k": 2}),
    ("bert.spec", None, {**SMALL, "ffn": 48}),
    ("albert.spec", None, {**SMALL, "ffn": 48, "emb": 16}),
    ("lenet5.spec", None, {}),
    ("gemma.spec", None, {**SMALL, "kv_heads": 1, "head_dim": 12, "ffn": 40}),  # 1 + w norms, scaled embedding
    ("qwen2.spec", None, {**SMALL, "kv_heads": 2, "ffn": 40}),  # q/k/v biases
    ("phi.spec", None, {**SMALL, "ffn": 40, "rotary_dims": 4}),  # partial rotary, parallel block
    ("gpt-neox.spec", None, {**SMALL, "ffn": 40}),
    ("opt.spec", None, {**SMALL, "ffn": 40}),  # positions from row 2
    ("olmo2.spec", None, {**SMALL, "kv_heads": 2, "ffn": 40}),  # q/k norms over all heads, norms after branches
]


@pytest.fixture(scope="module")
def family_export(tmp_path_factory):
    """A family of FAMILIES exported once for this module, on first use: (compiled, report, file). An export takes
    seconds (torch.export traces the model, twice with a KV cache); several tests read the same file."""
    done = {}

    def export(spec, preset, sets):
        if spec not in done:
            compiled = specdsl.load(SPECS / spec, preset=preset, overrides=sets)
            out = tmp_path_factory.mktemp(spec.split(".")[0]) / "m.onnx"
            done[spec] = compiled, onnx_export.export(compiled, out), out
        return done[spec]
    return export


@pytest.mark.parametrize("spec,preset,sets", FAMILIES, ids=[f[0].split(".")[0] for f in FAMILIES])
def test_export_matches_pytorch_with_dynamic_shapes(family_export, spec, preset, sets):
    compiled, report, out = family_export(spec, preset, sets)
    batches = {c["batch"] for c in report["checks"]}
    assert batches == {1, 3}
    if compiled.model.inputs[0].type.dtype == "int":
        assert {c["seq"] for c in report["checks"]} == {5, 24}
    assert report["max_abs_diff"] <= 1e-4
    assert count_parameters(out) == compiled.analysis.total
    if is_language_model(compiled.model) and is_causal(compiled.model):
        assert report["decode"]["cache_vs_full_max_abs_diff"] <= 1e-5
        assert out.with_name("m.decode.onnx").exists()
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_export_leaves_the_callers_random_state_alone(tmp_path):
    """export draws random weights from seed 0 on a fork of torch's RNG: the caller's stream goes on unchanged,
    and the file is the same whatever the caller's seed."""
    compiled = specdsl.load(SPECS / "mlp.spec")
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    onnx_export.export(compiled, tmp_path / "a.onnx")
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)
    onnx_export.export(compiled, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_language_model_graph_has_one_tokens_input_and_logits(family_export):
    import onnxruntime as ort
    _, _, out = family_export(*FAMILIES[0])  # gpt2, vocab 50
    session = ort.InferenceSession(str(out))
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, out.name) == ("tokens", "tensor(int64)", "logits")
    assert inp.shape == ["batch", "seq"] and out.shape[-1] == 50


def test_tied_weights_are_stored_once(tmp_path):
    # One block, not nanoGPT's four: the graph of each block (about 10 kB) would hide a second copy of wte
    # (65 x 128 x 4 = 33 kB) in the bound below; with one it cannot.
    compiled = specdsl.load(SPECS / "nanogpt-shakespeare.spec", overrides={"layers": 1})
    onnx_export.export(compiled, tmp_path / "m.onnx")
    size = (tmp_path / "m.onnx").stat().st_size
    assert size < 1.05 * 4 * compiled.analysis.total  # weights once, plus a small graph
    assert count_parameters(tmp_path / "m.onnx") == compiled.analysis.total  # no second copy of wte for the head
    wte_bytes = 4 * 65 * 128
    assert _without_metadata(tmp_path / "m.onnx") < 4 * compiled.analysis.total + wte_bytes / 2  # nor as a constant


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from rich.console import Console

    from specdsl.train.loop import train
    run = tmp_path_factory.mktemp("run") / "r"
    train(str(SPECS / "nanogpt-shakespeare.spec"), overrides={"d": 32, "layers": 1, "heads": 2, "ctx": 16},
          flags={"steps": 40, "batch": 8, "eval_every": 20, "eval_batches": 2, "lr": 1e-2, "out": str(run)},
          progress=False, console=Console(file=open(os.devnull, "w")))
    return run


@pytest.fixture(scope="module")
def trained_export(trained, tmp_path_factory):
    """The trained run through `specc export --onnx --quantize int8`, once: the folder holds m.onnx,
    m.decode.onnx and m.int8.onnx; returns the path of m.onnx and what the command printed."""
    out = tmp_path_factory.mktemp("export") / "m.onnx"
    done = specc_here("export", SPECS / "nanogpt-shakespeare.spec", "--onnx", "--checkpoint", trained, "-o", out,
                      "--quantize", "int8")
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def test_metadata_round_trip_and_inspect(trained_export, specc_cmd):
    out, printed = trained_export
    assert "int8" in printed and "validation loss" in printed
    meta = read_metadata(out)
    assert meta["specc.spec"] == (SPECS / "nanogpt-shakespeare.spec").read_text()
    sources = json.loads(meta["specc.sources"])  # the main file, then the library file it uses
    assert [s["text"] for s in sources] == [(SPECS / name).read_text() for name in ("nanogpt-shakespeare.spec",
                                                                                  "std/transformer.spec")]
    assert json.loads(meta["specc.hyperparameters"])["ctx"] == 16
    assert json.loads(meta["specc.tokenizer"])["kind"] == "char"
    assert meta["specc.version"] == specdsl.__version__
    shown = subprocess.run(specc_cmd + ["inspect", str(out)], capture_output=True, text=True)  # a real process
    assert shown.returncode == 0 and f"parameters in the file: {int(meta['specc.params']):,}" in shown.stdout
    # the sources and the tokenizer summed up (a subword tokenizer.json is megabytes), the spec itself in full
    lines = len((SPECS / "std/transformer.spec").read_text().splitlines())
    assert re.search(rf"specc.sources: 2 files: \S*nanogpt-shakespeare.spec \(\d+ lines\), "
                     rf"\S*std/transformer.spec \({lines} lines\)", shown.stdout), shown.stdout
    chars = len(json.loads(meta["specc.tokenizer"])["chars"])
    assert f"specc.tokenizer: char, {chars} characters\n" in shown.stdout
    assert shown.stdout.count("block gpt_block") == 0 and meta["specc.spec"] in shown.stdout
    assert _without_metadata(out.with_name("m.int8.onnx")) < _without_metadata(out) / 2


def _without_metadata(path) -> int:
    """Bytes of an ONNX file without its metadata: both files carry the spec's sources (the standard library among
    them), which at this size would hide what int8 saves."""
    import onnx
    model = onnx.load(str(path))
    del model.metadata_props[:]
    return model.ByteSize()


@pytest.mark.parametrize("overflow, window_runs", [("slide", 28), ("shift", 4)])
def test_generate_on_onnxruntime_equals_sample_in_pytorch(trained, trained_export, overflow, window_runs):
    from specdsl.train.sample import generate, load_run
    module, tokenizer, ctx = load_run(trained)
    prompt = tokenizer.encode("the ")
    ours = list(generate(module, prompt, 40, ctx, temperature=0, overflow=overflow, cache=False))  # 4 + 40 > 16
    assert list(generate(module, prompt, 40, ctx, temperature=0, overflow=overflow)) == ours  # PyTorch's cache
    generator = OnnxGenerator(trained_export[0])
    prefill, runs = generator._prefill, []
    generator._prefill = lambda ids: runs.append(len(ids)) or prefill(ids)
    onnx = list(generator.generate(prompt, 40, temperature=0, overflow=overflow))
    assert onnx == ours
    # slide: the prompt, then the whole window for each of the 27 tokens past it (the last token needs no run);
    # shift: the prompt, then the last ctx/2 tokens each time the window overflows (at lengths 17, 26 and 35)
    assert len(runs) == window_runs
    assert runs[1:] == ([ctx] * 27 if overflow == "slide" else [ctx // 2] * 3)


def test_overflow_windows_stay_within_the_context():
    from specdsl.context_window import prompt_start, window_start
    for policy, expected in [("slide", [0, 0, 1, 2, 3, 4, 5]), ("shift", [0, 0, 3, 3, 3, 6, 6])]:
        start, starts = prompt_start(2, 4), []
        for length in range(3, 10):  # a 2-token prompt, then one token at a time, ctx 4
            starts.append(start := window_start(start, length, 4, policy))
            assert 4 // 2 <= length - start <= 4 or length <= 4
        assert starts == expected
    assert prompt_start(10, 4) == 6  # a prompt longer than the context: its last ctx tokens, whatever the policy


def test_masked_language_model_exports_with_its_own_objective(tmp_path):
    from rich.console import Console

    from specdsl.train.loop import train
    run = tmp_path / "bert"
    train(str(SPECS / "bert.spec"), preset="mlm", overrides={"d": 32, "layers": 1, "heads": 2, "ffn": 64, "ctx": 16},
          flags={"steps": 20, "batch": 8, "eval_every": 20, "eval_batches": 2, "out": str(run)}, progress=False,
          console=Console(file=open(os.devnull, "w")))
    out = tmp_path / "bert.onnx"
    r = specc_here("export", SPECS / "bert.spec", "--onnx", "--checkpoint", run, "-o", out, "--quantize", "int8")
    assert r.returncode == 0, r.stderr
    # the int8 report scores the run's objective, masked tokens, on its validation split
    fp32, int8 = (float(v) for v in r.stdout.split("validation loss ")[1].split(" (")[0].split(" -> "))
    assert 2.0 < fp32 < 4.0 and abs(int8 - fp32) < 0.1
    assert not (tmp_path / "bert.decode.onnx").exists()  # no cache for a model that attends both ways
    refused = specc_here("generate", out)
    assert refused.returncode == 2 and "masked language model" in refused.stderr


def test_bad_inputs_are_clear_errors(tmp_path, trained, trained_export, specc_cmd):
    """In this process (specc_here), but for a bad prompt and a file that is not ONNX: real processes, which
    import no torch, for the exit status and stderr of the command itself."""
    spec = str(SPECS / "nanogpt-shakespeare.spec")
    ok = trained_export[0]

    def export(*extra):
        return specc_here("export", spec, "--onnx", "-o", tmp_path / "x.onnx", *extra)

    missing = export("--checkpoint", tmp_path / "nope")
    assert missing.returncode == 2 and "not a run directory" in missing.stderr
    other = specc_here("export", SPECS / "gpt2.spec", "--onnx", "-o", tmp_path / "x.onnx", "--checkpoint", trained)
    assert other.returncode == 2 and "trained from another spec" in other.stderr
    corrupt = tmp_path / "corrupt"
    shutil.copytree(trained, corrupt)
    (corrupt / "best" / "model.safetensors").write_bytes(b"\x00" * 100)
    (corrupt / "last" / "model.safetensors").write_bytes(b"\x00" * 100)
    broken = export("--checkpoint", corrupt)
    assert broken.returncode == 2 and "does not fit this spec" in broken.stderr and "Traceback" not in broken.stderr
    assert not (tmp_path / "x.onnx").exists()
    bad_prompt = subprocess.run(specc_cmd + ["generate", str(ok), "--prompt", "Q@Z"], capture_output=True, text=True)
    assert bad_prompt.returncode == 2 and "outside the vocabulary" in bad_prompt.stderr
    assert "Traceback" not in bad_prompt.stderr
    int4 = export("--quantize", "int4")
    assert int4.returncode == 2 and "unknown quantization" in int4.stderr and not (tmp_path / "x.onnx").exists()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    unwritable = specc_here("export", spec, "--onnx", "-o", blocked / "x.onnx")
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr and "Traceback" not in \
        unwritable.stderr
    empty = specc_here("generate", ok, "--prompt", "")
    assert empty.returncode == 2 and "the prompt is empty" in empty.stderr and "Traceback" not in empty.stderr
    negative = specc_here("generate", ok, "--temperature", "-1")
    assert negative.returncode == 2 and "--temperature" in negative.stderr
    bad_policy = specc_here("generate", ok, "--overflow", "wrap")
    assert bad_policy.returncode == 2 and "'wrap' is not one of" in bad_policy.stderr and "Traceback" not in \
        bad_policy.stderr
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(b"garbage")
    junk = subprocess.run(specc_cmd + ["inspect", str(not_onnx)], capture_output=True, text=True)
    assert junk.returncode == 2 and "not an ONNX model" in junk.stderr and "Traceback" not in junk.stderr


def test_a_mismatch_fails_and_leaves_no_file(tmp_path, monkeypatch):
    from specdsl.backends import onnx_graph
    monkeypatch.setattr(onnx_graph, "TOLERANCE", -1.0)  # any difference is now too much
    with pytest.raises(onnx_export.ExportError, match="differ"):
        onnx_export.export(specdsl.load(SPECS / "gpt2.spec", overrides=SMALL), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_the_shared_onnx_op_table_is_the_one_torch_builds():
    """conftest.py builds torch.onnx's table of ONNX functions once for the session (onnx_op_table_built_once) and
    every export above gets a copy: it must hold what a table built anew holds, op for op, in the same order."""
    from torch.onnx._internal.exporter import _registration
    table = _registration.ONNXRegistry.from_torchlib
    if not hasattr(table, "__wrapped__"):
        pytest.skip("this torch's exporter is not the one conftest.py shares a table of")
    fresh, shared = table.__wrapped__(_registration.ONNXRegistry), table()

    def summary(registry):
        return registry.opset_version, [(str(op), [(getattr(m.onnx_function, "name", repr(m.onnx_function)),
                                                    str(m.signature), m.is_custom, m.is_complex, m.opset_introduced,
                                                    m.device) for m in overloads])
                                        for op, overloads in registry.functions.items()]
    assert summary(shared) == summary(fresh) and len(fresh.functions) > 100
    assert shared.functions is not table().functions  # a copy each time: one export's additions stay its own
