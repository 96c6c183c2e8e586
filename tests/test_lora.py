"""LoRA (Hu et al. 2021) against Hugging Face peft on models built from config objects: the trainable count `specc
compile` prints equals peft's get_nb_trainable_parameters for the same settings, and the logits of a LoRA model equal
peft's with the same adapter values (every base parameter perturbed, B perturbed off zero). A LoRA run from a Hugging
Face folder trains only its adapters, its checkpoints hold only them, it resumes bit for bit, and its merged model
exports to ONNX equal to the unmerged one; sample works on it. Mistakes are located errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from test_hf_logits_parity import gpt2, llama, perturb
from test_init_from import SIZES, first_batch, hf_folder, quiet

import specdsl
from conftest import ROOT, SPECS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
torch.set_num_threads(1)

from specdsl.backends.lora import add_adapters, merge, merge_checked  # noqa: E402
from specdsl.commands.compile import compile_command  # noqa: E402
from specdsl.kinds import KINDS, Args  # noqa: E402

GPT2 = dict(vocab=97, ctx=16, d=48, layers=2, heads=4)
LLAMA = dict(vocab=97, ctx=16, d=64, layers=2, heads=4, kv_heads=2, ffn=100, eps=1e-5, rope_theta=10000.0)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# (family, spec, sizes, peft's target_modules, specc's targets): the same matrices named both ways. GPT-2's
# "c_proj" is two modules, the attention's output and the MLP's second matrix; "attn.c_proj" is the first alone.
CASES = [
    ("gpt2", "gpt2.spec", GPT2, ["c_attn"], ["*.attn.qkv"]),
    ("gpt2", "gpt2.spec", GPT2, ["c_attn", "c_proj"], ["*.attn.qkv", "*.attn.out", "*.mlp.proj"]),
    ("gpt2", "gpt2.spec", GPT2, ["c_attn", "attn.c_proj"], ["*.attn.qkv", "*.attn.out"]),
    ("gpt2", "gpt2.spec", GPT2, ["c_fc"], ["MLP.fc"]),
    ("llama", "llama.spec", LLAMA, ["q_proj", "v_proj"], ["*.attn.q", "*.attn.v"]),
    ("llama", "llama.spec", LLAMA, ["q_proj", "v_proj"], ["Attention.q", "Attention.v"]),
    ("llama", "llama.spec", LLAMA, ALL_LINEAR,
     ["*.attn.q", "*.attn.k", "*.attn.v", "*.attn.out", "*.mlp.gate", "*.mlp.up", "*.mlp.down"]),
    ("llama", "llama.spec", LLAMA, ["k_proj", "down_proj"], ["layers.*.attn.k", "layers.*.mlp.down"]),
]
IDS = [f"{c[0]}-{'+'.join(c[3])}" for c in CASES]


def reference(family: str, sizes: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = (gpt2 if family == "gpt2" else llama)(sizes).eval()
    if family == "gpt2":
        model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0
    perturb(model)
    return model


def with_peft(model, family: str, rank: int, alpha: float, modules: list[str]):
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=0.0,
                             fan_in_fan_out=family == "gpt2")  # GPT-2's Conv1D stores weights [in, out]
    return peft.get_peft_model(model, config)


def compiled_with(spec: str, sizes: dict, rank: int, alpha: float, targets: list[str]):
    sets = dict(sizes, **({"dropout": 0.0} if spec == "gpt2.spec" else {}))
    return specdsl.load(SPECS / spec, overrides=sets, lora={"rank": rank, "alpha": alpha, "targets": targets})


def printed(capsys, spec: str, sizes: dict, lora: dict) -> tuple[str, dict]:
    """What `specc compile` prints: the report, and the --json object."""
    sets = dict(sizes, **({"dropout": 0.0} if spec == "gpt2.spec" else {}))
    compile_command(str(SPECS / spec), None, sets, False, None, lora)
    text = capsys.readouterr().out
    compile_command(str(SPECS / spec), None, sets, True, None, lora)
    return text, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("family, spec, sizes, modules, targets", CASES, ids=IDS)
def test_the_trainable_count_specc_compile_prints_equals_peft(capsys, family, spec, sizes, modules, targets):
    trainable, total = with_peft(reference(family, sizes), family, 4, 8, modules).get_nb_trainable_parameters()
    text, report = printed(capsys, spec, sizes, {"rank": 4, "alpha": 8, "targets": ",".join(targets)})
    assert f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}" \
        in " ".join(text.split())
    params = report["params"]
    assert (params["trainable"], params["total"]) == (trainable, total)
    assert params["frozen"] == total - trainable == params["total"] - params["lora"]["params"]
    assert params["lora"]["matrices"] == len(params["lora"]["adapters"]) and params["lora"]["scale"] == 2.0
    assert all(m["trainable"] == 0 for m in report["modules"])  # the base model is frozen


def test_llama2_7b_q_v_rank_8_is_peft_s_published_count(capsys):
    """peft's README: LLaMA-2-7B, r=8 on q_proj and v_proj: trainable params: 4,194,304 || all params:
    6,742,609,920 || trainable%: 0.0622."""
    text, report = printed(capsys, "llama.spec", {}, {"rank": 8, "targets": "*.attn.q,*.attn.v"})
    assert "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622" in " ".join(text.split())
    memory = report["memory"]["training_adamw"]["fp32"]
    assert memory == 4 * 6_742_609_920 + 12 * 4_194_304  # AdamW state only for what trains


def adapter_name(family: str, peft_name: str) -> str:
    """peft's name of an adapter -> specc's: the matrix is a whole module there, a row slice of qkv here."""
    part = "A" if ".lora_A." in peft_name else "B"
    if family == "gpt2":
        i, module = re.search(r"h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.", peft_name).groups()
        owner, key = {"attn.c_attn": ("attn.qkv", "qkv"), "attn.c_proj": ("attn.out", "out"),
                      "mlp.c_fc": ("mlp.fc", "fc"), "mlp.c_proj": ("mlp.proj", "proj")}[module]
        return f"h.{i}.{owner}.lora_{part}.{key}"
    i, module = re.search(r"layers\.(\d+)\.(self_attn\.\w_proj|mlp\.\w+_proj)\.", peft_name).groups()
    owner, key = {"self_attn.q_proj": ("attn.qkv", "q"), "self_attn.k_proj": ("attn.qkv", "k"),
                  "self_attn.v_proj": ("attn.qkv", "v"), "self_attn.o_proj": ("attn.out", "out"),
                  "mlp.gate_proj": ("mlp.gate", "gate"), "mlp.up_proj": ("mlp.up", "up"),
                  "mlp.down_proj": ("mlp.down", "down")}[module]
    return f"layers.{i}.{owner}.lora_{part}.{key}"


@pytest.mark.parametrize("family, spec, sizes, modules, targets", [CASES[1], CASES[4], CASES[6]],
                         ids=[IDS[1], IDS[4], IDS[6]])
def test_logits_equal_peft_with_the_same_adapters(family, spec, sizes, modules, targets):
    theirs = with_peft(reference(family, sizes), family, 4, 12, modules).eval()
    perturb(theirs, seed=3)  # B off zero, A and every base weight off their initial values
    compiled = compiled_with(spec, sizes, 4, 12, targets)
    ours = specdsl.to_torch(compiled).eval()
    specdsl.load_weights(ours, {k.replace(".base_layer", ""): v for k, v in theirs.get_base_model().state_dict().items()
                                if "lora_" not in k}, naming="hf")
    add_adapters(ours, compiled.model.lora)
    mine = dict(ours.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if ".lora_" in name:
                mine[adapter_name(family, name)].copy_(p)
                copied += 1
    assert copied == 2 * len(compiled.model.lora.adapters)
    tokens = torch.randint(0, sizes["vocab"], (3, 11))
    with torch.no_grad():
        expected = theirs(tokens).logits
        assert (ours(tokens) - expected).abs().max() <= 1e-5
        with theirs.disable_adapter():
            assert (expected - theirs(tokens).logits).abs().max() > 1e-3  # the adapters matter
        assert merge_checked(ours) <= 1e-5  # merged for export, the same model
        assert (ours(tokens) - theirs.merge_and_unload()(tokens).logits).abs().max() <= 1e-5
    assert not any("lora_" in n for n, _ in ours.named_parameters())


def test_every_declared_matrix_is_an_nn_linear_weight_of_its_shape():
    """Each kind's Adaptable names a 2-D parameter it declares, rows within it, in and out its shape; the torch
    module owning it is an nn.Linear (the adapters' forward hook reads its input and adds to its output)."""
    from kind_contract import compile_example
    checked = 0
    for name, kind in KINDS.items():
        for example in kind.examples:
            compiled = compile_example(name, example)
            layer = compiled.model.root.children[0]
            shapes = dict(kind.params(Args(layer.args)))
            module = specdsl.to_torch(compiled)
            for m in kind.adaptable(Args(layer.args)):
                out_rows, in_features = shapes[m.param]
                start, stop = m.rows or (0, out_rows)
                assert 0 <= start < stop <= out_rows and (m.in_features, m.out_features) == (in_features, stop - start)
                owner = module.get_submodule(f"layer.{m.param}".rpartition(".")[0])
                assert type(owner) is torch.nn.Linear and owner.weight.shape == (out_rows, in_features)
                checked += 1
    assert checked >= 40


def test_a_shared_repeat_has_one_adapter_applied_every_time():
    text = """
param d = 16
lora { rank = 2, targets = ["Linear"] }
model m {
    input x: float[batch, d]
    return x -> h: repeat 3 shared { fc: Linear(d, d) -> Tanh } -> out: Linear(d, 4)
}"""
    compiled = specdsl.loads(text)
    assert [a.target for a in compiled.model.lora.adapters] == ["h.fc", "out"]
    assert compiled.analysis.trainable == 2 * (16 + 16) + 2 * (16 + 4)
    module = add_adapters(specdsl.to_torch(compiled), compiled.model.lora)
    assert sorted(n for n, p in module.named_parameters() if p.requires_grad) == \
        ["h.fc.lora_A.weight", "h.fc.lora_B.weight", "out.lora_A.weight", "out.lora_B.weight"]
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    assert merge_checked(module) <= 1e-5


# ---- errors: located at the target or setting, in the spec or on the command line ----

SPEC = """use "std/transformer.spec"
param d = 32
param r = 4
{lora}
model gpt {{
    input tokens: int[batch, seq <= 16]
    x = tokens -> wte: Embedding(50, d) -> wpe: PositionalEmbedding(16, d)
    x = x -> h: repeat 2 {{ gpt_block(d, 4) }}
    return x -> ln_f: LayerNorm(d) -> lm_head: Linear(d, 50, bias = false, tie = wte)
}}
"""


@pytest.mark.parametrize("section, col, message, hint", [
    ('lora { rank = r, targets = ["*.attn.query"] }', 29, "Attention layer h.0.attn has no matrix 'query'",
     "q, k, v, qkv, out"),
    ('lora { rank = r, targets = ["*.attn.qq"] }', 29, "has no matrix 'qq'", "did you mean 'q'?"),
    ('lora { rank = r, targets = ["*.atn.q"] }', 29, "names no matrix of the model", "did you mean 'h.*.attn.q'?"),
    ('lora { rank = r, targets = ["Atention.q"] }', 29, "unknown layer kind 'Atention'", "did you mean 'Attention'?"),
    ('lora { rank = r, targets = ["Attention"] }', 29, "'Attention' has several matrices", "Attention.qkv"),
    ('lora { rank = r, targets = ["*.attn"] }', 29, "'*.attn' is a layer (Attention)", "h.0.attn.q"),
    ('lora { rank = r, targets = ["ln_f"] }', 29, "'ln_f' is a LayerNorm layer", "Attention, MLP"),
    ('lora { rank = r, targets = ["lm_head"] }', 29, "whose weight is tied", "untie"),
    ('lora { rank = r, targets = ["*.attn.q", "*.attn.qkv"] }', 41, "both adapt h.0.attn.qkv.weight", "not both"),
    ('lora { rank = r - 4, targets = ["*.attn.q"] }', 15, "LoRA rank must be at least 1, got 0", None),
    ('lora { rank = 2.5, targets = ["*.attn.q"] }', 15, "LoRA rank must be an int", None),
    ('lora { alpha = -1, targets = ["*.attn.q"] }', 16, "LoRA alpha must be positive", None),
    ('lora { dropout = 1.0, targets = ["*.attn.q"] }', 18, "LoRA dropout must be in [0, 1)", None),
    ('lora { rnak = 4, targets = ["*.attn.q"] }', 8, "unknown LoRA setting 'rnak'", "did you mean 'rank'?"),
    ('lora { rank = 4 }', 1, "LoRA needs targets", "--lora-targets"),
    ('lora { targets = [] }', 18, "LoRA targets are a list of names", None),
    ('lora { targets = "*.attn.q" }', 18, "LoRA targets are a list of names", None),
    ('lora { rank = [4], targets = ["*.attn.q"] }', 15, "LoRA rank is a number, not a list", None),
    ('lora { targets = [r] }', 18, "a LoRA target is a name, got 4", None),
    ('lora { targets = ["*.attn.q"] } lora { targets = ["*.attn.v"] }', 33, "a second `lora` section", None),
])
def test_mistakes_are_located_in_the_spec(section, col, message, hint):
    with pytest.raises(specdsl.SpecError) as e:
        specdsl.loads(SPEC.format(lora=section), name=str(SPECS / "x.spec"))
    d = e.value.errors[0]
    assert (d.span.line, d.span.col) == (4, col) and message in d.message, str(e.value)
    assert hint is None or hint in d.hint


def test_flags_override_the_section_and_their_mistakes_are_located_on_the_command_line(capsys):
    text = SPEC.format(lora='lora { rank = r, alpha = 16, targets = ["*.attn.q"] }')
    lora = specdsl.loads(text, name=str(SPECS / "x.spec"), lora={"rank": 2, "targets": "*.attn.v, *.mlp.fc"}).model.lora
    assert (lora.rank, lora.alpha, lora.targets) == (2, 16.0, ("*.attn.v", "*.mlp.fc"))
    for flags, where, message in (({"targets": "*.attn.x"}, "--lora-targets", "no matrix 'x'"),
                                  ({"rank": 0}, "--lora", "at least 1"),
                                  ({"alpha": float("nan")}, "--lora-alpha", "finite")):
        with pytest.raises(specdsl.SpecError) as e:
            specdsl.loads(text, name=str(SPECS / "x.spec"), lora=flags)
        assert e.value.span.file == where and message in e.value.message
    from typer.testing import CliRunner

    from specdsl import cli
    done = CliRunner().invoke(cli.app, ["compile", str(SPECS / "gpt2.spec"), "--lora", "4", "--lora-targets",
                                        "*.attn.q,*.atn.v"])
    assert done.exit_code == 2 and isinstance(done.exception, SystemExit)
    assert "--lora-targets: error: LoRA target '*.atn.v' names no matrix" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_lora_is_a_keyword_only_where_a_section_can_start():
    text = """param d = 8
model m {
    input x: float[batch, d]
    lora = x -> lora: Linear(d, d)
    return lora
}"""
    assert specdsl.loads(text).model.lora is None
    with pytest.raises(specdsl.SpecError, match="'lora' is a keyword"):
        specdsl.loads("param lora = 1\n" + text)


# ---- a LoRA run: from a Hugging Face folder, adapters only, exact resumes, export and sample ----

TARGETS = {"rank": 4, "alpha": 8, "targets": "*.attn.qkv,*.mlp.fc", "dropout": 0.1}


def lora_run(folder, corpus, out, steps: int, resume: bool = False, lora: dict | None = TARGETS, **flags):
    from specdsl.train.loop import train
    train(str(SPECS / "gpt2.spec"), overrides=dict(SIZES["gpt2"], dropout=0.0), progress=False, console=quiet(),
          resume=resume, lora=lora, flags={"init_from": str(folder), "data": str(corpus), "steps": steps,
                                              "batch": 4, "eval_every": 2, "eval_batches": 1, "seed": 7,
                                              "out": str(out), "decay_steps": 6, **flags})


@pytest.mark.slow
def test_a_lora_run_trains_only_its_adapters_and_stores_only_them(tmp_path):
    from safetensors.torch import load_file

    from specdsl.train.loop import Trainer
    from specdsl.train.session import prepare, start
    folder, reference_model, corpus = hf_folder(tmp_path, "gpt2")
    flags = {"init_from": str(folder), "data": str(corpus), "steps": 3, "batch": 4, "seed": 7,
             "out": str(tmp_path / "steps")}
    session = prepare(str(SPECS / "gpt2.spec"), None, dict(SIZES["gpt2"], dropout=0.0), flags, False, 1, TARGETS)
    run = start(session)
    try:
        trainer = Trainer.build(session, run, quiet(), 0, 1)
        module = session.module
        base = {n: p.detach().clone() for n, p in module.named_parameters() if "lora_" not in n}
        trained = [p for group in trainer.optimizer.param_groups for p in group["params"]]
        assert len(trained) == 8 and all(p.requires_grad for p in trained)  # 4 matrices, A and B each
        assert {g["weight_decay"] for g in trainer.optimizer.param_groups if g["params"]} == {0.0}  # as HF's Trainer
        records = [trainer.step(step) for step in range(3)]
    finally:
        run.unlock()
    x, y = first_batch(tmp_path / "steps", 4, 7)
    with torch.no_grad():  # B starts at zero: the first step's loss is the checkpoint model's own
        expected = torch.nn.functional.cross_entropy(reference_model(x).logits.flatten(0, 1), y.flatten()).item()
    assert abs(records[0]["train_loss"] - expected) < 1e-4
    assert all(torch.equal(p, base[n]) for n, p in module.named_parameters() if n in base)
    assert all(not p.requires_grad for n, p in module.named_parameters() if n in base)
    assert all(p.abs().max() > 0 for n, p in module.named_parameters() if ".lora_B." in n)  # they trained

    decayed = prepare(str(SPECS / "gpt2.spec"), None, dict(SIZES["gpt2"], dropout=0.0),
                      {**flags, "weight_decay": 0.05, "out": str(tmp_path / "decayed")}, False, 1, TARGETS)
    assert decayed.config.weight_decay == 0.05  # a setting that asks for decay has it

    out = tmp_path / "run"
    lora_run(folder, corpus, out, 4)
    record = json.loads((out / "run.json").read_text())
    assert record["lora"]["base"]["path"] == str(folder) and record["lora"]["params"] == 4 * 2 * (48 + 144) + \
        4 * 2 * (48 + 192)
    stored = load_file(str(out / "last" / "model.safetensors"))
    assert sorted(stored) == sorted(f"h.{i}.{m}.lora_{p}.{k}" for i in (0, 1) for m, k in (("attn.qkv", "qkv"),
                                                                                            ("mlp.fc", "fc"))
                                    for p in "AB")
    assert len(load_file(str(out / "last" / "optimizer.safetensors"))) == 3 * len(stored)  # step, two moments


@pytest.mark.slow
def test_a_lora_run_resumes_bit_for_bit(tmp_path):
    """Adapter dropout on, so the resumed run must also restore torch's generator."""
    from safetensors.torch import load_file
    folder, _, corpus = hf_folder(tmp_path, "gpt2")
    lora_run(folder, corpus, tmp_path / "whole", 6)
    lora_run(folder, corpus, tmp_path / "split", 2)
    lora_run(folder, corpus, tmp_path / "split", 6, resume=True, lora=None)  # the run keeps its LoRA settings
    losses = [[json.loads(line)["train_loss"] for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("whole", "split")]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    a, b = (load_file(str(tmp_path / r / "last" / "model.safetensors")) for r in ("whole", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(specdsl.SpecError, match="cannot resume .*LoRA") as e:
        from specdsl.train.loop import train
        train(str(SPECS / "gpt2.spec"), overrides=dict(SIZES["gpt2"], dropout=0.0), progress=False, console=quiet(),
              resume=True, lora={**TARGETS, "rank": 8}, flags={"out": str(tmp_path / "split"), "steps": 8})
    assert e.value.span.file == "--lora"


def test_adapters_are_not_decayed_unless_a_setting_says_so():
    """peft's examples train with Hugging Face's TrainingArguments, whose weight_decay is 0; other runs keep 0.1."""
    from specdsl.settings import TrainConfig, with_lora_defaults
    assert TrainConfig().weight_decay == 0.1 and transformers.TrainingArguments("x").weight_decay == 0.0
    assert with_lora_defaults(TrainConfig(), {}, {}).weight_decay == 0.0
    assert with_lora_defaults(TrainConfig(weight_decay=0.01), {"weight_decay": 0.01}, {}).weight_decay == 0.01
    assert with_lora_defaults(TrainConfig(weight_decay=0.1), {}, {"weight_decay": 0.1}).weight_decay == 0.1
    assert with_lora_defaults(TrainConfig(), {"steps": 5}, {"weight_decay": None}).weight_decay == 0.0


def adapters_of(out) -> dict:
    from safetensors.torch import load_file
    return load_file(str(out / "last" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
def test_two_processes_train_the_adapters_as_one_does(tmp_path, specc_cmd):
    """--nproc 2 over a frozen base: DDP (which reduces the gradients of the adapters alone), and FSDP2 (fully_shard
    keeps frozen and trained parameters in one unit) stopped after 2 steps and resumed, each with the same global
    batch as one process. The same batches, but each rank's loss is the mean of half of it and the gradients are
    averaged across ranks, so float32 sums run in another order: 1e-5 on the losses (measured 5e-7), 1e-3 on the
    adapters (Adam divides each gradient by its own scale, so where one is near zero its rounding noise moves the
    weight by up to the learning rate: measured 2.5e-4 on 128 of 3,456 values at lr 0.05, under 1e-6 elsewhere)."""
    folder, _, corpus = hf_folder(tmp_path, "gpt2")
    lora = {**TARGETS, "dropout": 0.0}  # with adapter dropout each rank would draw other masks for its half
    lora_run(folder, corpus, tmp_path / "one", 4, lora=lora, lr=0.05, warmup=0, eval_batches=20)
    sets = [f"--set={k}={v}" for k, v in {**SIZES["gpt2"], "dropout": 0.0}.items()]
    args = ["train", str(SPECS / "gpt2.spec"), *sets, "--init-from", str(folder), "--data", str(corpus),
            "--lora", "4", "--lora-alpha", "8", "--lora-targets", lora["targets"], "--batch", "4", "--seed", "7",
            "--eval-every", "2", "--decay-steps", "6", "--lr", "0.05", "--warmup", "0", "--nproc", "2"]

    def two(out, steps, *flags):
        done = subprocess.run(specc_cmd + args + ["--out", str(out), "--steps", str(steps), *flags],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-2000:]

    two(tmp_path / "ddp", 4)
    two(tmp_path / "fsdp", 2, "--fsdp")
    two(tmp_path / "fsdp", 4, "--fsdp", "--resume")
    one = adapters_of(tmp_path / "one")
    assert min(one[k].abs().max() for k in one if ".lora_B." in k) > 0.05  # they trained (B starts at zero)
    assert json.loads((tmp_path / "one" / "run.json").read_text())["config"]["weight_decay"] == 0.0
    for run in ("ddp", "fsdp"):
        losses = [[json.loads(line)["train_loss"] for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
                  for r in ("one", run)]
        assert len(losses[1]) == 4 and max(abs(a - b) for a, b in zip(*losses)) <= 1e-5, losses
        stored = adapters_of(tmp_path / run)  # the adapters only, whole tensors whatever the sharding
        assert stored.keys() == one.keys() and all(torch.allclose(stored[k], one[k], atol=1e-3) for k in one)
        assert json.loads((tmp_path / run / "summary.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_the_merged_model_exports_and_samples_as_the_unmerged_one(tmp_path):
    pytest.importorskip("onnxruntime")
    from specdsl.backends.onnx_generate import OnnxGenerator, count_parameters
    from specdsl.commands.export import export_command
    from specdsl.train import rundir
    from specdsl.train.init import init_source, load_initial_weights, load_run_weights
    from specdsl.train.sample import generate, load_run
    folder, _, corpus = hf_folder(tmp_path, "gpt2")
    out = tmp_path / "run"
    lora_run(folder, corpus, out, 4, lr=0.05)
    compiled, record = rundir.compile_run(rundir.open_existing(out))
    unmerged = specdsl.to_torch(compiled).eval()
    load_run_weights(unmerged, record, out / "best")
    onnx_file = tmp_path / "m.onnx"
    report = export_command(str(SPECS / "gpt2.spec"), str(onnx_file), None, {}, str(out), None)
    assert count_parameters(onnx_file) == report["params"] == compiled.analysis.total - compiled.analysis.adapters
    from specdsl.backends.onnx_generate import read_metadata  # what inspect compares: the merged model's count
    assert read_metadata(onnx_file)["specc.params"] == str(report["params"])
    import onnxruntime
    tokens = torch.randint(0, 300, (2, 9))
    got = onnxruntime.InferenceSession(str(onnx_file)).run(None, {"tokens": tokens.numpy()})[0]
    with torch.no_grad():
        assert abs(got - unmerged(tokens).numpy()).max() <= 1e-4

    module, tokenizer, ctx = load_run(out)  # sample: the base weights, then the adapters
    prompt = tokenizer.encode("the king sees")
    sampled = list(generate(module, prompt, 8, ctx, temperature=0))
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(unmerged(torch.tensor([ids]))[0, -1, :tokenizer.data_size].argmax()))
    assert sampled == ids[len(prompt):]
    assert list(OnnxGenerator(str(onnx_file)).generate(prompt, 8, temperature=0)) == sampled

    plain = specdsl.to_torch(compiled).eval()  # --init-from a LoRA run: its adapters merged into its base
    load_initial_weights(plain, init_source(str(out)))
    with torch.no_grad():
        assert (plain(tokens) - unmerged(tokens)).abs().max() <= 1e-5

    perturb(reference := transformers.GPT2LMHeadModel.from_pretrained(folder), seed=9)
    reference.save_pretrained(folder, max_shard_size="40KB")  # the base weights changed under the run: refused
    with pytest.raises(specdsl.SpecError, match="not those this LoRA run adapts"):
        load_run(out)


@pytest.mark.slow
def test_lora_needs_weights_to_start_from_and_refuses_before_writing(tmp_path):
    from specdsl.train.loop import train
    with pytest.raises(specdsl.SpecError, match="starts from none") as e:
        train(str(SPECS / "gpt2.spec"), overrides=dict(SIZES["gpt2"], dropout=0.0), progress=False, console=quiet(),
              lora={"rank": 2, "targets": "*.attn.q"}, flags={"out": str(tmp_path / "r"), "steps": 1})
    assert e.value.span.file == "--lora" and not (tmp_path / "r").exists()


def test_merge_folds_every_adapter_into_its_rows():
    compiled = compiled_with("llama.spec", LLAMA, 3, 6, ["*.attn.k", "*.mlp.down"])
    module = specdsl.to_torch(compiled)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    add_adapters(module, compiled.model.lora)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if ".lora_B." in n:
                p.normal_()
    qkv = module.get_submodule("layers.0.attn.qkv")
    B, A = qkv.lora_B.k.detach().clone(), qkv.lora_A.k.detach().clone()
    merge(module)
    after = dict(module.named_parameters())
    assert after.keys() == before.keys()
    q, kv = 64, 32
    W = before["layers.0.attn.qkv.weight"]
    assert torch.equal(after["layers.0.attn.qkv.weight"][:q], W[:q])  # q and v rows untouched
    assert torch.equal(after["layers.0.attn.qkv.weight"][q + kv:], W[q + kv:])
    assert torch.allclose(after["layers.0.attn.qkv.weight"][q:q + kv], W[q:q + kv] + 2.0 * B @ A, atol=1e-6)


def test_the_docs_name_every_matrix_each_kind_declares():
    """docs/language.md's table of LoRA's matrices, against the declarations."""
    from kind_contract import compile_example
    docs = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    start = docs.index("| Kind | Matrices |")
    table = docs[start:docs.index("\n\n", start)]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.*?) \|", table, re.M)}
    for name, kind in KINDS.items():
        layer = compile_example(name, kind.examples[0]).model.root.children[0]
        matrices = [m.name for m in kind.adaptable(Args(layer.args))]
        if matrices:
            assert name in rows, f"{name} declares LoRA matrices the docs do not list"
            assert all(f"`{m}`" in rows[name] for m in matrices if m), (name, matrices, rows[name])
        else:
            assert name not in rows
