"""Issue 9, "nothing lost, nothing run": limits a spec cannot escape (elaboration budget, bounded reads of spec
files, `use` paths, the size of a PyTorch module, the memory guard), and specs that compile but that `specc train`
cannot run. Each case was found by an adversarial tester; each would hang, exhaust memory or end in a traceback
without its fix. A hang is caught by running the command in a subprocess with a timeout and a memory cap."""

import os
import resource
import subprocess
import sys

import pytest

import specdsl
from conftest import ROOT, SPECS, ZOO, specc_here
from specdsl.elaborate import MAX_LAYERS, MAX_STEPS, MAX_STRING_CHARS
from specdsl.errors import SpecError

ADDRESS_SPACE = 2 * 2**30  # for subprocesses that do not import torch: what they may allocate before they fail


def _capped():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run(code_or_args, timeout: float, capped: bool = True) -> tuple[subprocess.CompletedProcess, float]:
    """Run `specc ARGS...` (a list) or Python code (a string) from the checkout; (process, CPU seconds it used).
    CPU, not wall-clock, seconds: a machine busy with other work does not make the compiler look slow (a hang
    or a blow-up still runs into `timeout`)."""
    cmd = [sys.executable, "-c", code_or_args] if isinstance(code_or_args, str) else \
        [sys.executable, "-m", "specdsl.cli", *map(str, code_or_args)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    start = _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
                          preexec_fn=_capped if capped else None)
    return proc, _children_cpu() - start


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def located_error(proc: subprocess.CompletedProcess, path, words: str) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"{path}:"), proc.stderr[:2000]
    assert words in proc.stderr, proc.stderr[:2000]
    return proc.stderr


def first_error(text: str, name: str = "t.spec", **kw) -> SpecError:
    with pytest.raises(SpecError) as info:
        specdsl.loads(text, name=name, **kw)
    return info.value


# ---------------------------------------------------------------- 1. the elaboration budget

def fan_out(depth: int, labelled: bool) -> str:
    """Block b{k} calls b{k-1} ten times: 10**depth layers from a page of text."""
    lines = ["param d = 4", "block b0(d: int) {\n    input x\n    return x -> Linear(d, d)\n}"]
    for k in range(1, depth + 1):
        calls = " -> ".join(f"{'l%d: ' % i if labelled else ''}b{k - 1}(d)" for i in range(10))
        lines.append(f"block b{k}(d: int) {{\n    input x\n    return x -> {calls}\n}}")
    lines.append(f"model m {{\n    input x: float[batch, d]\n    return x -> b{depth}(d)\n}}\n")
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("labelled", [False, True], ids=["inlined", "labelled"])
def test_blocks_calling_blocks_stop_at_the_layer_budget(tmp_path, labelled):
    # 10**6 layers: 434 s and 4.5 GiB before the budget; now a located error within seconds.
    path = tmp_path / "fan.spec"
    path.write_text(fan_out(6, labelled))
    assert len(path.read_bytes()) < 2500
    proc, seconds = run(["compile", path], timeout=60)
    err = located_error(proc, path, f"the spec expands to more than {MAX_LAYERS:,} layers")
    assert "note: in block 'b0' called at" in err and "note: in block 'b6' called at" in err
    assert seconds < 20


def test_blocks_that_create_nothing_stop_at_the_step_budget():
    # Empty blocks create no layer, but running their statements 10**6 times is the same hang.
    err = first_error(fan_out(6, False).replace("return x -> Linear(d, d)", "assert d > 0\n    return x"))
    assert f"more than {MAX_STEPS:,} steps" in err.message and err.span.line > 1, str(err)


def test_a_bad_tie_called_ten_thousand_times_stays_within_the_budget(tmp_path):
    # Each failing tie looked through every layer built so far for a label inside a repeat: 46 s at 10**4 calls.
    lines = ["param d = 4", "block b0(d: int) {\n    input x\n    x = x -> Linear(d, d)\n"
             "    return x -> Linear(d, d, tie = nope)\n}"]
    for k in range(1, 5):
        lines.append(f"block b{k}(d: int) {{\n    input x\n"
                     + "".join(f"    y{i} = x -> b{k - 1}(d)\n" for i in range(10))
                     + f"    return {' + '.join(f'y{i}' for i in range(10))}\n}}")
    path = tmp_path / "ties.spec"
    path.write_text("\n".join(lines) + "\nmodel m {\n    input x: float[batch, d]\n    return x -> b4(d)\n}\n")
    proc, seconds = run(["compile", path], timeout=30)
    located_error(proc, path, "no layer labelled 'nope' to tie to")
    assert seconds < 20


def test_string_doubling_stops_at_the_string_limit(tmp_path):
    # 2 * 2**40 characters: out of memory before the limit.
    path = tmp_path / "strings.spec"
    path.write_text("\n".join(['param s0 = "ab"'] + [f"param s{i} = s{i - 1} + s{i - 1}" for i in range(1, 41)])
                    + "\nmodel m {\n    input x: float[batch, 4]\n    return x -> Linear(4, 4)\n}\n")
    proc, seconds = run(["compile", path], timeout=60)
    err = located_error(proc, path, f"string is longer than {MAX_STRING_CHARS:,} characters")
    crossing = next(i for i in range(41) if 2 * 2**i > MAX_STRING_CHARS)
    assert err.startswith(f"{path}:{crossing + 1}:") and seconds < 20, err


def test_every_zoo_model_is_far_below_the_budget():
    for path in ZOO:
        for preset in [None] + [p.name for p in specdsl.parse.parse_file(path).presets]:
            specdsl.load(path, preset=preset)  # raises if a budget is reached


def test_two_hundred_blocks_written_out_by_hand_compile():
    calls = "\n".join(f"    x = x -> h{i}: gpt_block(d, heads)" for i in range(200))
    c = specdsl.loads(f'use "std/transformer.spec"\nparam d = 64\nparam heads = 4\nmodel m {{\n'
                      f"    input x: float[batch, seq <= 32, d]\n{calls}\n    return x\n}}\n")
    assert c.analysis.total == 200 * specdsl.loads(
        'use "std/transformer.spec"\nmodel m {\n    input x: float[batch, seq <= 32, 64]\n'
        "    return x -> gpt_block(64, 4)\n}\n").analysis.total


# ---------------------------------------------------------------- 2. bounded reads of spec files

def test_a_character_device_is_refused_without_reading_it():
    proc, _ = run(["compile", "/dev/zero"], timeout=30)
    located_error(proc, "/dev/zero", "'/dev/zero' is not a regular file (a character device)")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.spec"
    os.mkfifo(fifo)  # nobody writes to it: opening it for reading would wait forever
    proc, _ = run(["compile", fifo], timeout=30)
    located_error(proc, fifo, "is not a regular file (a named pipe)")


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(SpecError, match="is not a regular file \\(a directory\\)"):
        specdsl.load(tmp_path)


def test_read_is_bounded_even_when_the_size_says_zero(tmp_path):
    """A file that grows after its size was read (or a /proc file, whose size says 0) is read no further than the
    limit plus one byte: here a 4 GB sparse file whose size the file system reports as 0."""
    path = tmp_path / "growing.spec"
    with open(path, "wb") as f:
        f.truncate(4 * 2**30)
    code = f"""import os, specdsl
real_stat, real_fstat = os.stat, os.fstat
size_zero = lambda st: os.stat_result((*st[:6], 0, *st[7:10]))
os.stat = lambda *args, **kw: size_zero(real_stat(*args, **kw))
os.fstat = lambda fd: size_zero(real_fstat(fd))
try:
    specdsl.load({str(path)!r})
except specdsl.SpecError as e:
    print(e)
"""
    proc, _ = run(code, timeout=60)
    assert proc.stdout.startswith(f"{path}:1:1: error: spec file is larger than 1,000,000 bytes"), \
        proc.stdout + proc.stderr[-2000:]


# ---------------------------------------------------------------- 3. `use` paths

def test_use_takes_only_spec_files():
    err = first_error('use "/etc/passwd"\nmodel m {\n    input x: float[b, 4]\n    return x\n}\n')
    d = err.errors[0]
    assert (d.span.line, d.span.col) == (1, 5) and "use takes a .spec file" in str(err), str(err)
    assert "root" not in str(err)


def test_use_of_a_name_too_long_for_the_file_system_is_located():
    err = first_error(f'use "{"a" * 300}.spec"\nmodel m {{\n    input x: float[b, 4]\n    return x\n}}\n')
    d = err.errors[0]
    assert (d.span.line, d.span.col) == (1, 5) and "cannot read" in d.message, str(err)


def test_use_of_a_fifo_is_refused_at_the_use(tmp_path):
    os.mkfifo(tmp_path / "pipe.spec")
    spec = tmp_path / "main.spec"
    spec.write_text('use "pipe.spec"\nmodel m {\n    input x: float[b, 4]\n    return x\n}\n')
    proc, _ = run(["compile", spec], timeout=30)
    err = located_error(proc, spec, "is not a regular file (a named pipe)")
    assert err.startswith(f"{spec}:1:5: error:"), err


# ---------------------------------------------------------------- 4 and 5. the PyTorch module: size and memory

TORCH_HEADER = "import torch\ntorch.set_num_threads(1)\nimport specdsl\n"


@pytest.mark.slow
def test_to_torch_refuses_a_repeat_of_a_million_billion_modules():
    # One module per iteration: building it never ended.
    code = TORCH_HEADER + """
try:
    specdsl.to_torch(specdsl.loads("model m {\\n    input x: float[b, 4]\\n"
                                   "    return x -> repeat 10**15 { ReLU }\\n}\\n"))
except specdsl.SpecError as e:
    print(e)
"""
    proc, _ = run(code, timeout=60, capped=False)
    assert "<string>:3:17: error: " in proc.stdout and "10**15" not in proc.stderr, proc.stdout + proc.stderr[-2000:]
    assert "too large for PyTorch" in proc.stdout


def test_to_torch_refuses_a_shared_repeat_whose_forward_would_never_end():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    c = specdsl.loads("param d = 4\nmodel m {\n    input x: float[b, d]\n"
                      "    return x -> repeat 10**15 shared { Linear(d, d) -> ReLU }\n}\n")
    assert c.analysis.total == 20 and c.analysis.forward_flops == 10**15 * 32  # the analysis counts it
    with pytest.raises(SpecError, match="layer applications per forward pass") as info:
        specdsl.to_torch(c, device="meta")
    assert (info.value.span.line, info.value.span.col) == (4, 17)


def test_the_largest_zoo_models_are_far_below_the_module_bound():
    pytest.importorskip("torch")
    from specdsl.backends.torch_backend import MAX_TORCH_APPLICATIONS, torch_size
    for spec, preset in (("gpt3.spec", None), ("gpt4-moe.spec", None), ("llama.spec", "llama2-70b")):
        instances, applications = torch_size(specdsl.load(SPECS / spec, preset=preset).model)
        assert max(instances, applications) < MAX_TORCH_APPLICATIONS // 100


PEAK = TORCH_HEADER + """
import sys
from specdsl.backends import torch_backend

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

spec = ("param d = 2048\\nmodel m {\\n    input x: float[b, d]\\n"
        "    return x -> repeat 4 { Linear(d, d) -> ReLU }\\n}\\n")
torch_backend.to_torch(specdsl.loads(spec.replace("2048", "16")), dtype=torch.bfloat16)  # torch's first allocations
c = specdsl.loads(spec)
open("/proc/self/clear_refs", "w").write("5")  # resets the peak resident size (VmHWM), Linux 4.0+
before = status("VmRSS")
module = torch_backend.to_torch(c, dtype=getattr(torch, sys.argv[1]))
print((status("VmHWM") - before) / c.analysis.total)
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures the peak resident size on Linux")
@pytest.mark.parametrize("dtype,size", [("float32", 4), ("bfloat16", 2)])
def test_a_build_peaks_at_its_weights_in_the_target_dtype(dtype, size):
    """The memory guard counts `size` bytes a weight: the build must not need more (it needed 4.5 bytes a weight in
    bf16 when it was built in fp32 and then converted). Measured as the peak resident size of a fresh process."""
    pytest.importorskip("torch")
    proc, _ = run(PEAK.replace("sys.argv[1]", repr(dtype)), timeout=120, capped=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_weight = float(proc.stdout)
    assert size * 0.95 < per_weight < size * 1.1, per_weight


def test_the_guard_counts_the_target_dtype_and_tied_weights_once(monkeypatch):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from specdsl.backends import torch_backend
    c = specdsl.load(SPECS / "nanogpt-shakespeare.spec", overrides=dict(d=32, layers=1, heads=2))
    tensors = {id(p): p for p in torch_backend.to_torch(c, device="meta").parameters()}
    assert sum(p.numel() for p in tensors.values()) == c.analysis.total  # the tied head counted once
    for dtype in (torch.float32, torch.bfloat16):
        need = c.analysis.total * dtype.itemsize
        monkeypatch.setattr(torch_backend, "_free_bytes", lambda device, need=need: need / 0.9 + 1)
        torch_backend.to_torch(c, dtype=dtype)
        monkeypatch.setattr(torch_backend, "_free_bytes", lambda device, need=need: need / 0.9 - 1)
        with pytest.raises(SpecError, match="needs"):
            torch_backend.to_torch(c, dtype=dtype)


def bf16_build_and_reference(c):
    import torch
    torch.manual_seed(0)
    reference = {k: v.to(torch.bfloat16) for k, v in specdsl.to_torch(c).state_dict().items()}
    torch.manual_seed(0)
    got = specdsl.to_torch(c, dtype=torch.bfloat16).state_dict()
    assert torch.get_default_dtype() == torch.float32  # restored
    assert got.keys() == reference.keys() and {v.dtype for v in got.values()} == {torch.bfloat16}
    return got, reference


def test_a_bf16_build_has_the_values_of_an_fp32_build_cast_to_bf16():
    """The same random draws, in the same order: a transformer's weights are those of the fp32 build, cast."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    got, reference = bf16_build_and_reference(specdsl.loads(
        "param d = 32\nmodel m {\n    input tokens: int[batch, seq <= 16]\n"
        "    x = tokens -> wte: Embedding(50, d) -> wpe: PositionalEmbedding(16, d)\n"
        "    x = x + (x -> ln: LayerNorm(d) -> attn: Attention(d, 4))\n"
        "    x = x + (x -> RMSNorm(d) -> moe: MoE(d, 64, 4, 2, bias = true))\n"
        "    return x -> head: Linear(d, 50, tie = wte)\n}\n"))
    for k in reference:
        assert torch.equal(got[k], reference[k]), k


def test_a_bf16_build_differs_only_where_torch_draws_differently_in_bf16():
    """Two exceptions, both in torch's CPU kernels, both draws of the same distribution: uniform_ in bf16 maps a
    value that rounds up to the upper bound to the lower one (0.1% of a convolution's weights), and normal_ draws
    the tail of a tensor of 16 or more elements whose size is not a multiple of 16 (the last 16) otherwise."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    got, reference = bf16_build_and_reference(specdsl.load(SPECS / "lenet5.spec"))
    for k in reference:
        differ = got[k] != reference[k]
        tail = reference[k].numel() % 16 and differ.flatten()[:-16].sum() == 0
        assert differ.float().mean() < 0.005 or tail, k
        assert got[k].abs().max() <= reference[k].abs().max(), k  # within the same bounds


def test_the_default_dtype_is_restored_when_a_build_fails(monkeypatch):
    torch = pytest.importorskip("torch")
    from specdsl.backends import torch_backend

    def fail(module):
        raise RuntimeError("boom")
    monkeypatch.setattr(torch_backend, "init_gpt2_", fail)
    with pytest.raises(RuntimeError, match="boom"):
        torch_backend.to_torch(specdsl.load(SPECS / "mlp.spec"), dtype=torch.bfloat16)
    assert torch.get_default_dtype() == torch.float32


# ---------------------------------------------------------------- 6. specs that compile but cannot train

LM = """param vocab = 65
param d = 32
model lm {{
    input tokens: int[batch, seq <= 16]
    x = tokens -> wte: Embedding(vocab, d)
    {body}
}}
"""


@pytest.mark.parametrize("body,line,col,words", [
    ("return x -> Softmax(dim = 7) -> head: Linear(d, vocab)", 6, 17, "Softmax(dim=7) is out of range"),
    ("return x -> Softmax(dim = -4) -> head: Linear(d, vocab)", 6, 17, "Softmax(dim=-4) is out of range"),
    ("return x + (x -> Attention(d, 4, window = 10**30)) -> head: Linear(d, vocab)", 6, 47, "window"),
    ("return x -> Select(dim = 1, index = 2**70) -> head: Linear(d, vocab)", 6, 41, "index"),
    ("return x -> Select(dim = 1, index = 16) -> head: Linear(d, vocab)", 6, 17, "Select(index=16) is out of range"),
], ids=["softmax-dim", "softmax-negative-dim", "window", "select-index", "select-past-the-bound"])
def test_arguments_torch_cannot_take_are_compile_errors(body, line, col, words):
    d = first_error(LM.format(body=body)).errors[0]
    assert (d.span.line, d.span.col) == (line, col) and words in d.message, d.render()


def test_softmax_over_any_dim_of_its_input_compiles():
    for dim in (-3, -1, 0, 2):
        specdsl.loads(LM.format(body=f"return x -> Softmax(dim = {dim}) -> head: Linear(d, vocab)"))


@pytest.mark.parametrize("body,line,words", [
    ("return x -> head: Linear(d, vocab), x -> aux: Linear(d, 4)", 6, "returns 2 outputs"),
    ("return x -> Select(dim = 1, index = 0) -> head: Linear(d, vocab)", 6, "[batch, seq, vocab]"),
    ("return x -> head: Linear(d, vocab) -> Select(dim = 2, index = 0)", 6, "[batch, seq, vocab]"),
], ids=["two-outputs", "select", "no-vocab"])
def test_check_trainable_refuses_what_the_loop_cannot_train(body, line, words):
    from specdsl.train.trainable import check_trainable
    with pytest.raises(SpecError) as info:
        check_trainable(specdsl.loads(LM.format(body=body), name="t.spec").model)
    d = info.value.errors[0]
    assert d.span.line == line and words in d.message and "specc train trains" in d.hint, d.render()


@pytest.mark.parametrize("text,words", [
    (LM.replace("    input tokens", "    input types: int[batch, seq <= 16]\n    input tokens")
     .format(body="return (x + (types -> Embedding(2, d))) -> head: Linear(d, vocab)"), "no default"),
    ((SPECS / "mlp.spec").read_text().replace("param classes = 10", "param classes = 5"), "10 digits"),
    ((SPECS / "mlp.spec").read_text().replace("param inputs = 64", "param inputs = 32"), "[batch, 64]"),
], ids=["second-input-without-default", "five-classes", "wrong-pixels"])
def test_check_trainable_refuses_inputs_and_classes_the_data_cannot_fill(text, words):
    from specdsl.train.trainable import check_trainable
    with pytest.raises(SpecError, match=words.replace("[", "\\[")):
        check_trainable(specdsl.loads(text).model)


def test_check_trainable_accepts_what_the_loop_trains():
    from specdsl.train.trainable import check_trainable
    for spec, preset in (("nanogpt-shakespeare.spec", None), ("gpt2.spec", None), ("llama.spec", None),
                         ("mixtral.spec", None), ("bert.spec", "mlm"), ("mlp.spec", None), ("lenet5.spec", None)):
        check_trainable(specdsl.load(SPECS / spec, preset=preset).model)


@pytest.mark.slow
def test_specc_train_refuses_two_outputs_before_it_starts(tmp_path):
    path = tmp_path / "two.spec"
    path.write_text(LM.format(body="return x -> head: Linear(d, vocab), x -> aux: Linear(d, 4)"))
    proc = specc_here("train", path, "--steps", "2", "--out", tmp_path / "run")  # the command, in this process
    located_error(proc, path, "returns 2 outputs")
    assert not (tmp_path / "run").exists()


def test_the_checks_do_not_import_torch():
    code = ("import sys, specdsl\nfrom specdsl.train.trainable import check_trainable\n"
            f"check_trainable(specdsl.load({str(SPECS / 'mlp.spec')!r}).model)\n"
            "print('torch' in sys.modules)")
    proc, _ = run(code, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]
