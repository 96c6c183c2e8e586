"""Numerical parity with Hugging Face transformers: tiny random models built from config objects, every parameter
perturbed away from its initial value (norm weights off one, or off zero for Gemma's 1 + w; biases off zero: a bug
in either hides behind an initial value), their weights loaded into the compiled spec (naming="hf"), the same
random tokens: max |difference| <= 1e-5 in float32."""

import pytest

import specdsl
from conftest import SPECS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

TOL = 1e-5


def gpt2(o):
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=o["vocab"], n_positions=o["ctx"], n_embd=o["d"], n_layer=o["layers"], n_head=o["heads"]))


def gpt1(o):
    return transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(
        vocab_size=o["vocab"], n_positions=o["ctx"], n_embd=o["d"], n_layer=o["layers"], n_head=o["heads"]))


def llama(o):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=o["vocab"], hidden_size=o["d"], num_hidden_layers=o["layers"], num_attention_heads=o["heads"],
        num_key_value_heads=o["kv_heads"], intermediate_size=o["ffn"], rms_norm_eps=o["eps"],
        rope_theta=o["rope_theta"], tie_word_embeddings=o.get("tied", False), max_position_embeddings=o["ctx"]))


def mistral(o):
    return transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=o["vocab"], hidden_size=o["d"], num_hidden_layers=o["layers"], num_attention_heads=o["heads"],
        num_key_value_heads=o["kv_heads"], intermediate_size=o["ffn"], rms_norm_eps=o["eps"],
        sliding_window=o["window"], max_position_embeddings=o["ctx"]))


def mixtral(o):
    return transformers.MixtralForCausalLM(transformers.MixtralConfig(
        vocab_size=o["vocab"], hidden_size=o["d"], num_hidden_layers=o["layers"], num_attention_heads=o["heads"],
        num_key_value_heads=o["kv_heads"], intermediate_size=o["ffn"], rms_norm_eps=o["eps"],
        num_local_experts=o["experts"], num_experts_per_tok=o["top_k"], max_position_embeddings=o["ctx"],
        rope_theta=o["rope_theta"], experts_implementation="eager"))


def bert(o, mlm=False):
    config = transformers.BertConfig(vocab_size=o["vocab"], max_position_embeddings=o["ctx"], hidden_size=o["d"],
                                     num_hidden_layers=o["layers"], num_attention_heads=o["heads"],
                                     intermediate_size=o["ffn"], type_vocab_size=o["types"])
    return (transformers.BertForMaskedLM if mlm else transformers.BertModel)(config)


def albert(o):
    return transformers.AlbertModel(transformers.AlbertConfig(
        vocab_size=o["vocab"], max_position_embeddings=o["ctx"], embedding_size=o["emb"], hidden_size=o["d"],
        num_hidden_layers=o["layers"], num_attention_heads=o["heads"], intermediate_size=o["ffn"],
        type_vocab_size=o["types"]))


def gemma(o):
    return transformers.GemmaForCausalLM(transformers.GemmaConfig(
        vocab_size=o["vocab"], hidden_size=o["d"], num_hidden_layers=o["layers"], num_attention_heads=o["heads"],
        num_key_value_heads=o["kv_heads"], head_dim=o["head_dim"], intermediate_size=o["ffn"],
        rms_norm_eps=o["eps"], max_position_embeddings=o["ctx"], rope_theta=o["rope_theta"]))


def qwen2(o):
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=o["vocab"], hidden_size=o["d"], num_hidden_layers=o["layers"], num_attention_heads=o["heads"],
        num_key_value_heads=o["kv_heads"], intermediate_size=o["ffn"], rms_norm_eps=o["eps"],
        rope_theta=o["rope_theta"], tie_word_embeddings=o.get("tied", True), max_position_embeddings=o["ctx"]))


def olmo2(o):
    return transformers.Olmo2ForCausalLM(transformers.Olmo2Config(
        vocab_size=o["vocab"], hidden_size=o["d"], num_hidden_layers=o["layers"], num_attention_heads=o["heads"],
        num_key_value_heads=o["kv_heads"], intermediate_size=o["ffn"], rms_norm_eps=o["eps"],
        rope_theta=o["rope_theta"], attention_bias=o.get("bias", False), max_position_embeddings=o["ctx"]))


def phi(o):
    return transformers.PhiForCausalLM(transformers.PhiConfig(
        vocab_size=o["vocab"], hidden_size=o["d"], num_hidden_layers=o["layers"], num_attention_heads=o["heads"],
        intermediate_size=o["ffn"], partial_rotary_factor=o["rotary_dims"] / (o["d"] // o["heads"]),
        max_position_embeddings=o["ctx"], rope_theta=o["rope_theta"]))


def neox(o):
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=o["vocab"], hidden_size=o["d"], num_hidden_layers=o["layers"], num_attention_heads=o["heads"],
        intermediate_size=o["ffn"], rotary_pct=o["rotary_dims"] / (o["d"] // o["heads"]),
        max_position_embeddings=o["ctx"], rotary_emb_base=o["rope_theta"]))


def opt(o):
    return transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=o["vocab"], max_position_embeddings=o["ctx"], hidden_size=o["d"], num_hidden_layers=o["layers"],
        num_attention_heads=o["heads"], ffn_dim=o["ffn"]))


CASES = [
    ("gpt2.spec", None, dict(vocab=97, ctx=16, d=48, layers=2, heads=4), gpt2),
    ("gpt2.spec", None, dict(vocab=61, ctx=9, d=30, layers=1, heads=5), gpt2),
    ("gpt1.spec", None, dict(vocab=71, ctx=12, d=36, layers=2, heads=3), gpt1),
    ("llama.spec", None, dict(vocab=90, ctx=16, d=64, layers=2, heads=4, kv_heads=4, ffn=100, eps=1e-5,
                              rope_theta=10000.0), llama),
    ("llama.spec", None, dict(vocab=91, ctx=16, d=96, layers=2, heads=6, kv_heads=2, ffn=77, eps=1e-6,
                              rope_theta=500000.0), llama),
    ("llama.spec", None, dict(vocab=50, ctx=16, d=32, layers=1, heads=4, kv_heads=1, ffn=45, eps=1e-5,
                              rope_theta=10000.0), llama),
    ("llama.spec", None, dict(vocab=77, ctx=16, d=48, layers=2, heads=6, kv_heads=3, ffn=50, eps=1e-5,
                              rope_theta=10000.0, tied=True), llama),
    ("mistral.spec", None, dict(vocab=83, ctx=16, d=64, layers=2, heads=8, kv_heads=2, ffn=90, eps=1e-5,
                                window=5), mistral),
    ("mixtral.spec", None, dict(vocab=99, ctx=16, d=32, layers=2, heads=4, kv_heads=2, ffn=40, experts=4, top_k=2,
                                eps=1e-5, rope_theta=1e6), mixtral),
    ("mixtral.spec", None, dict(vocab=64, ctx=16, d=48, layers=1, heads=6, kv_heads=1, ffn=33, experts=3, top_k=1,
                                eps=1e-5, rope_theta=1e6), mixtral),
    ("bert.spec", None, dict(vocab=100, ctx=16, d=48, layers=2, heads=4, ffn=70, types=2), bert),
    ("bert.spec", "mlm", dict(vocab=101, ctx=16, d=36, layers=2, heads=6, ffn=51, types=3),
     lambda o: bert(o, mlm=True)),
    ("albert.spec", None, dict(vocab=80, ctx=16, emb=16, d=48, layers=3, heads=4, ffn=64, types=2), albert),
    ("gemma.spec", None, dict(vocab=97, ctx=16, d=48, layers=2, heads=4, kv_heads=1, head_dim=16, ffn=70, eps=1e-6,
                              rope_theta=10000.0), gemma),
    ("gemma.spec", None, dict(vocab=61, ctx=16, d=30, layers=2, heads=3, kv_heads=3, head_dim=14, ffn=41, eps=1e-5,
                              rope_theta=500.0), gemma),
    ("qwen2.spec", None, dict(vocab=93, ctx=16, d=56, layers=2, heads=7, kv_heads=1, ffn=90, eps=1e-6,
                              rope_theta=1e6), qwen2),
    ("qwen2.spec", None, dict(vocab=71, ctx=16, d=48, layers=2, heads=6, kv_heads=3, ffn=37, eps=1e-5,
                              rope_theta=10000.0, tied=False), qwen2),
    ("olmo2.spec", None, dict(vocab=90, ctx=16, d=64, layers=2, heads=4, kv_heads=4, ffn=100, eps=1e-6,
                              rope_theta=500000.0), olmo2),
    # GQA (k_norm over kv_heads * head_dim, q_norm over heads * head_dim) and attention_bias (q, k, v and o_proj)
    ("olmo2.spec", None, dict(vocab=71, ctx=16, d=48, layers=2, heads=6, kv_heads=2, ffn=37, eps=1e-5,
                              rope_theta=10000.0, bias=True), olmo2),
    ("phi.spec", None, dict(vocab=89, ctx=16, d=40, layers=2, heads=4, ffn=77, rotary_dims=4, rope_theta=10000.0),
     phi),
    ("phi.spec", None, dict(vocab=67, ctx=16, d=36, layers=2, heads=3, ffn=50, rotary_dims=12, rope_theta=100.0),
     phi),
    ("gpt-neox.spec", None, dict(vocab=95, ctx=16, d=64, layers=2, heads=4, ffn=100, rotary_dims=4,
                                 rope_theta=10000.0), neox),
    ("gpt-neox.spec", None, dict(vocab=59, ctx=16, d=60, layers=2, heads=5, ffn=61, rotary_dims=6,
                                 rope_theta=1000.0), neox),
    ("opt.spec", None, dict(vocab=87, ctx=16, d=48, layers=2, heads=4, ffn=70), opt),
    ("opt.spec", None, dict(vocab=53, ctx=12, d=30, layers=2, heads=5, ffn=41), opt),
]


def _first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def perturb(model, seed: int = 1) -> None:
    """Move every parameter off its initial value: matrices by N(0, 0.02), vectors (norm weights, biases) by
    N(0, 0.2), so a norm weight that should read 1 + w, or a bias dropped, shows in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.2 if p.dim() == 1 else 0.02))


@pytest.mark.parametrize("spec,preset,sizes,family", CASES,
                         ids=[f"{c[0].split('.')[0]}-{c[1] or 'default'}-{i}" for i, c in enumerate(CASES)])
def test_logits_equal_hf(spec, preset, sizes, family):
    torch.manual_seed(0)
    reference = family(sizes).eval()
    perturb(reference)
    compiled = specdsl.load(SPECS / spec, preset=preset, overrides=sizes)
    module = specdsl.to_torch(compiled).eval()
    specdsl.load_weights(module, reference.state_dict(), naming="hf")
    tokens = torch.randint(0, sizes["vocab"], (3, 11 if sizes["ctx"] > 11 else sizes["ctx"]))
    with torch.no_grad():
        theirs = reference(tokens)
        ours = module(tokens)
    if spec == "bert.spec" and preset is None or spec == "albert.spec":
        assert (ours[0] - theirs.last_hidden_state).abs().max() <= TOL
        assert (ours[1] - theirs.pooler_output).abs().max() <= TOL
    else:
        assert (_first(ours) - theirs.logits).abs().max() <= TOL


def test_mixtral_safetensors_on_disk_layout(tmp_path):
    """save_pretrained writes per-expert w1/w2/w3; the fused in-memory layout is covered above."""
    torch.manual_seed(0)
    sizes = dict(vocab=99, ctx=16, d=32, layers=2, heads=4, kv_heads=2, ffn=40, experts=4, top_k=2, eps=1e-5,
                 rope_theta=1e6)
    reference = mixtral(sizes).eval()
    reference.save_pretrained(tmp_path)
    module = specdsl.to_torch(specdsl.load(SPECS / "mixtral.spec", overrides=sizes)).eval()
    report = specdsl.load_weights(module, tmp_path, naming="hf")
    assert report["family"] == "mixtral"
    tokens = torch.randint(0, 99, (2, 9))
    with torch.no_grad():
        assert (module(tokens) - reference(tokens).logits).abs().max() <= TOL


def test_missing_unexpected_and_mismatched_keys_are_named():
    torch.manual_seed(0)
    sizes = dict(vocab=97, ctx=16, d=48, layers=2, heads=4)
    state = gpt2(sizes).state_dict()
    module = specdsl.to_torch(specdsl.load(SPECS / "gpt2.spec", overrides=sizes))
    broken = dict(state)
    del broken["transformer.h.1.mlp.c_fc.bias"]
    broken["transformer.h.0.extra.weight"] = torch.zeros(3)
    broken["transformer.ln_f.weight"] = torch.zeros(7)
    from specdsl.backends.weights import WeightsError
    with pytest.raises(WeightsError) as e:
        specdsl.load_weights(module, broken, naming="hf")
    text = str(e.value)
    assert "h.1.mlp.fc.bias <- transformer.h.1.mlp.c_fc.bias" in text
    assert "transformer.h.0.extra.weight" in text
    assert "ln_f.weight: model (48,) vs weights (7,)" in text
