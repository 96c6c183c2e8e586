"""Every construct of the language, parsed and elaborated: what it means in the IR and in the counts."""

import pytest

import specdsl
from conftest import SPECS
from specdsl.ir import unrolled_names
from specdsl.shapes import Sym, TensorType

GPT = """
# a tiny GPT
use "std/transformer.spec"
param vocab = 100
param ctx: int = 16
param d = 32
param layers = 2
param heads = 4
preset wide { d = 64, heads = 8 }
assert d % heads == 0, "d must be divisible by heads"
model tiny {
    input tokens: int[batch, seq <= ctx]
    x = tokens -> wte: Embedding(vocab, d) -> wpe: PositionalEmbedding(ctx, d)
    x = x -> h: repeat layers { gpt_block(d, heads) }
    return x -> ln_f: LayerNorm(d) -> lm_head: Linear(d, vocab, bias = false, tie = wte)
}
"""


def load(text, **kw):
    return specdsl.loads(text, name=str(SPECS / "test.spec"), **kw)


def model_of(body, params="param d = 8"):
    return load(f"{params}\nmodel m {{\n{body}\n}}")


def test_hyperparameters_presets_and_overrides():
    c = load(GPT)
    assert c.model.hyperparameters["d"] == 32 and c.model.hyperparameters["ctx"] == 16
    assert load(GPT, preset="wide").model.hyperparameters["d"] == 64
    # --set wins over the preset; values keep their declared type.
    c = load(GPT, preset="wide", overrides={"d": 128})
    assert c.model.hyperparameters == {**c.model.hyperparameters, "d": 128, "heads": 8}


def test_derived_hyperparameters_follow_overrides():
    c = load("param d = 8\nparam ffn = 4 * d\nmodel m { input x: float[batch, d]\n return x -> Linear(d, ffn) }",
             overrides={"d": 10})
    assert c.model.hyperparameters["ffn"] == 40
    assert c.analysis.total == 10 * 40 + 40


def test_float_hyperparameter_accepts_an_int_override():
    c = load("param p = 0.1\nparam d = 4\nmodel m { input x: float[b, d]\n return x -> Dropout(p) }",
             overrides={"p": 0})
    assert c.model.hyperparameters["p"] == 0.0 and isinstance(c.model.hyperparameters["p"], float)


def test_arithmetic_and_functions():
    c = load("""param a = 7 // 2 + 2 ** 3 - 10 % 4
param b = max(3, min(9, 5)) * int(2.7) + ceil(1.2) + floor(1.8) + round(2.4) + abs(-1)
param c = a > 5 and not (b == 0) or false
param s = "x" + "y"
param f = 2.5e1 / 5
param big = 1_000_000
model m { input x: float[n, 4]
 return x -> Linear(4, 4) }""")
    h = c.model.hyperparameters
    assert (h["a"], h["b"], h["c"], h["s"], h["f"], h["big"]) == (9, 10 + 2 + 1 + 2 + 1, True, "xy", 5.0, 10**6)


def test_inputs_with_symbolic_dims_bounds_and_defaults():
    c = load(GPT)
    (tokens,) = c.model.inputs
    assert tokens.type == TensorType("int", (Sym("batch"), Sym("seq", 16)))
    bert = specdsl.load(SPECS / "bert.spec")
    assert [i.default for i in bert.model.inputs] == [None, 0]


def test_output_shapes_are_inferred():
    c = load(GPT)
    assert c.model.outputs == (("output", TensorType("float", (Sym("batch"), Sym("seq", 16), 100))),)
    lenet = specdsl.load(SPECS / "lenet5.spec")
    assert lenet.model.outputs[0][1].shape == (Sym("batch"), 10)


def test_parameter_paths_are_torch_names():
    c = load(GPT)
    names = unrolled_names(c.model)
    assert names[:2] == ["wte.weight", "wpe.weight"]
    assert "h.0.attn.qkv.weight" in names and "h.1.mlp.proj.bias" in names
    assert "lm_head.weight" not in names  # tied: one tensor, listed once where it is defined
    assert sum(1 for n in names if n.startswith("h.")) == 2 * 12


def test_unlabelled_layers_get_numbered_kind_names():
    c = model_of("input x: float[b, d]\n return x -> Linear(d, d) -> ReLU -> Linear(d, d)")
    assert [ch.name for ch in c.model.root.children] == ["linear_0", "relu_0", "linear_1"]


def test_labelled_block_call_is_a_module_and_unlabelled_is_inlined():
    text = """block pair(d: int) { input x
 x = x -> a: Linear(d, d)
 return x -> b: Linear(d, d) }
param d = 4
model m { input x: float[n, d]
 y = x -> first: pair(d) -> pair(d)
 return y }"""
    c = load(text)
    assert unrolled_names(c.model) == ["first.a.weight", "first.a.bias", "first.b.weight", "first.b.bias",
                                       "a.weight", "a.bias", "b.weight", "b.bias"]


def test_repeat_makes_fresh_weights_and_shared_repeat_one_set():
    body = "input x: float[n, d]\n return x -> r: repeat 5 {{ Linear(d, d) -> Tanh }}"
    fresh = model_of(body.format().replace("{{", "{").replace("}}", "}"))
    shared = model_of(body.replace("repeat 5", "repeat 5 shared").replace("{{", "{").replace("}}", "}"))
    per = 8 * 8 + 8
    assert fresh.analysis.total == 5 * per
    assert shared.analysis.total == per
    # the shared weights are applied 5 times: FLOPs do not shrink
    assert shared.analysis.forward_flops == fresh.analysis.forward_flops == 5 * 2 * 64
    assert unrolled_names(shared.model) == ["r.linear_0.weight", "r.linear_0.bias"]
    assert unrolled_names(fresh.model)[-1] == "r.4.linear_0.bias"


def test_repeat_is_a_count_not_copies():
    c = model_of("input x: float[n, d]\n return x -> repeat 10**15 { Linear(d, d) }")
    assert c.analysis.total == 10**15 * (8 * 8 + 8)
    assert len(c.model.root.children) == 1 and len(c.model.root.children[0].children) == 1


def test_weight_tying_counts_once_and_checks_shape():
    c = load(GPT)
    head = next(m for m in c.analysis.tree.children if m.name == "lm_head")
    assert head.params == 0 and "tied to wte.weight" in head.description
    with pytest.raises(specdsl.SpecError, match="shapes differ"):
        load(GPT.replace("Linear(d, vocab, bias = false, tie = wte)", "Linear(d, d, bias = false, tie = wte)"))


def test_frozen_layers_are_not_trainable():
    c = model_of("input x: float[n, d]\n return x -> Linear(d, d, frozen = true) -> Linear(d, d)")
    assert c.analysis.total == 2 * 72 and c.analysis.trainable == 72


def test_if_else_chooses_structure_at_compile_time():
    text = """param d = 4
param deep = false
model m { input x: float[n, d]
 if deep { y = x -> Linear(d, d) -> Linear(d, d) } else { y = x -> Linear(d, d) }
 return y }"""
    assert load(text).analysis.total == 20
    assert load(text, overrides={"deep": True}).analysis.total == 40


def test_residuals_parallel_branches_and_elementwise_ops():
    text = """param d = 4
model m { input x: float[n, d]
 a = x -> Linear(d, d)
 b = x -> Linear(d, d) -> SiLU
 y = x + a * b - 0.5 * x / 2
 return y, a }"""
    c = load(text)
    assert [n for n, _ in c.model.outputs] == ["y", "a"]
    ops = [op.op for op in c.model.root.ops]
    assert ops.count("add") == 1 and ops.count("mul") == 2 and ops.count("sub") == 1 and ops.count("div") == 1


def test_blocks_take_typed_parameters_with_defaults():
    text = """block ff(d: int, mult: int = 4, bias: bool = true) { input x
 return x -> Linear(d, d * mult, bias = bias) -> GELU -> Linear(d * mult, d, bias = bias) }
param d = 4
model m { input x: float[n, d]
 return x -> ff(d) -> ff(d, mult = 2, bias = false) }"""
    c = load(text)
    assert c.analysis.total == (4 * 16 + 16 + 16 * 4 + 4) + (4 * 8 + 8 * 4)


def test_use_resolves_relative_then_library(tmp_path):
    (tmp_path / "lib.spec").write_text("block id2(d: int) { input x\n return x -> Linear(d, d) }\n")
    spec = tmp_path / "m.spec"
    spec.write_text('use "lib.spec"\nuse "std/transformer.spec"\nparam d = 8\n'
                    'model m { input x: float[b, s, d]\n return x -> id2(d) -> gpt_block(d, 2) }')
    c = specdsl.load(spec)
    assert c.analysis.total == 72 + 12 * 64 + 13 * 8


def test_moe_total_and_active():
    c = model_of("input x: float[b, s, d]\n return x -> MoE(d, 16, 8, 2)")
    per_expert = 3 * 8 * 16
    assert c.analysis.total == 8 * 8 + 8 * per_expert
    assert c.analysis.active == 8 * 8 + 2 * per_expert


def test_attention_variants():
    def count(args):
        return model_of(f"input x: float[b, s, d]\n return x -> Attention({args})", "param d = 64").analysis.total
    hd = 16
    assert count("d, 4") == 64 * 3 * 64 + 64 * 64  # MHA, no biases
    assert count("d, 4, kv_heads = 1") == 64 * (4 + 2) * hd + 64 * 64  # MQA
    assert count("d, 4, kv_heads = 2, bias = true") == 64 * 8 * hd + 8 * hd + 64 * 64 + 64  # GQA, biases
    assert count("d, 4, head_dim = 8") == 64 * 12 * 8 + 32 * 64


def test_kv_cache_and_memory():
    a = specdsl.load(SPECS / "llama.spec", preset="llama2-70b").analysis
    m = a.memory()
    assert m["kv_cache_per_token"]["bf16"] == 2 * 80 * 2 * 8 * 128  # K and V, 80 layers, 8 KV heads of 128
    assert m["weights"]["bf16"] == 2 * a.total
    assert m["training_adamw"]["fp32"] == 16 * a.total


def test_sliding_window_caps_the_attention_context():
    mistral = specdsl.load(SPECS / "mistral.spec").analysis
    assert mistral.context == 4096


def test_comments_and_layout_are_free():
    c = load("param d=4 # width\nmodel m{input x:float[n,d] return x->Linear(d,d)}")
    assert c.analysis.total == 20


def test_quoted_preset_names():
    assert specdsl.load(SPECS / "llama.spec", preset="llama2-70b").model.hyperparameters["layers"] == 80


def test_every_zoo_spec_cites_its_source():
    for path in SPECS.glob("*.spec"):
        head = path.read_text().splitlines()[0]
        assert head.startswith("#") and len(head) > 20, path
