"""The quirks of issue 11 that no zoo family's logits test reaches on its own, against Hugging Face transformers
(tiny models built from config objects, every parameter perturbed; float32, max |difference| <= 1e-5):
ALiBi and the per-head fused query_key_value (BLOOM), q/k RMSNorm (Qwen3), interleaved partial rotary (GPT-J).
And incremental decoding (torch_backend.Decoder, a KV cache) equals the full forward pass for every quirk that
reads positions: partial rotary, interleaved rotary, ALiBi, q/k norms (per head and over all heads), a positional
embedding with an offset."""

import pytest
from test_hf_logits_parity import perturb

import specdsl
from conftest import SPECS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

TOL = 1e-5

# BLOOM (BigScience 2022, "BLOOM: A 176B-Parameter Open-Access Multilingual Language Model"): a LayerNorm after the
# embedding, pre-LN blocks with ALiBi instead of positions, biases, tanh GELU, a tied head (HF BloomForCausalLM).
BLOOM = '''use "std/transformer.spec"
param vocab = 50
param d = 32
param layers = 2
param heads = 4
param eps = 1e-5
model bloom {
    input tokens: int[batch, seq <= 64]
    x = tokens -> wte: Embedding(vocab, d) -> ln_emb: LayerNorm(d, eps = eps)
    x = x -> h: repeat layers { gpt_block(d, heads, 4 * d, eps = eps, alibi = true) }
    return x -> ln_f: LayerNorm(d, eps = eps) -> lm_head: Linear(d, vocab, bias = false, tie = wte)
}
'''

# Qwen3 (Qwen Team 2025, "Qwen3 Technical Report"; HF Qwen3ForCausalLM): the LLaMA block with head_dim given,
# q/k RMSNorms over each head and no q/k/v biases; tied head.
QWEN3 = '''use "std/transformer.spec"
param vocab = 50
param d = 32
param layers = 2
param heads = 4
param kv_heads = 2
param head_dim = 12
param ffn = 40
param eps = 1e-6
param rope_theta = 1000000.0
model qwen3 {
    input tokens: int[batch, seq <= 64]
    x = tokens -> embed: Embedding(vocab, d)
    x = x -> layers: repeat layers {
        llama_block(d, heads, kv_heads, ffn, rope_theta = rope_theta, eps = eps, head_dim = head_dim, qk_norm = true)
    }
    return x -> norm: RMSNorm(d, eps = eps) -> lm_head: Linear(d, vocab, bias = false, tie = embed)
}
'''

# GPT-J (Wang & Komatsuzaki 2021; HF GPTJForCausalLM): parallel blocks, rotary on the first rotary_dim dims of each
# head with interleaved pairs, no q/k/v or output biases, an untied head with a bias.
GPTJ = '''use "std/transformer.spec"
param vocab = 50
param d = 48
param layers = 2
param heads = 4
param rotary_dims = 4
model gptj {
    input tokens: int[batch, seq <= 64]
    x = tokens -> wte: Embedding(vocab, d)
    x = x -> h: repeat layers {
        parallel_block(d, heads, 4 * d, rotary_dims = rotary_dims, rope_layout = "interleaved", bias = false)
    }
    return x -> ln_f: LayerNorm(d) -> lm_head: Linear(d, vocab, bias = true)
}
'''


def bloom(o):
    return transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=o["vocab"], hidden_size=o["d"], n_layer=o["layers"], n_head=o["heads"]))


def qwen3(o):
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=o["vocab"], hidden_size=o["d"], num_hidden_layers=o["layers"], num_attention_heads=o["heads"],
        num_key_value_heads=o["kv_heads"], head_dim=o["head_dim"], intermediate_size=o["ffn"],
        rms_norm_eps=o["eps"], rope_theta=o["rope_theta"], tie_word_embeddings=True, max_position_embeddings=64))


def gptj(o):
    return transformers.GPTJForCausalLM(transformers.GPTJConfig(
        vocab_size=o["vocab"], n_embd=o["d"], n_layer=o["layers"], n_head=o["heads"], rotary_dim=o["rotary_dims"],
        n_positions=64))


CASES = [
    (BLOOM, dict(vocab=50, d=32, layers=2, heads=4), bloom, "bloom"),
    (BLOOM, dict(vocab=61, d=36, layers=2, heads=6), bloom, "bloom"),  # 6 heads: slopes of 4, then of 8
    (QWEN3, dict(vocab=50, d=32, layers=2, heads=4, kv_heads=2, head_dim=12, ffn=40, eps=1e-6, rope_theta=1e6),
     qwen3, "llama"),
    (QWEN3, dict(vocab=43, d=30, layers=2, heads=3, kv_heads=1, head_dim=8, ffn=33, eps=1e-5, rope_theta=1e4),
     qwen3, "llama"),
    (GPTJ, dict(vocab=50, d=48, layers=2, heads=4, rotary_dims=4), gptj, "gptj"),
    (GPTJ, dict(vocab=57, d=40, layers=2, heads=2, rotary_dims=20), gptj, "gptj"),  # all 20 of 20 dims rotate
]


@pytest.mark.parametrize("text,sizes,family,naming", CASES, ids=[f"{c[3]}-{c[2].__name__}-{i}"
                                                                 for i, c in enumerate(CASES)])
def test_quirk_logits_equal_hf(text, sizes, family, naming):
    torch.manual_seed(0)
    reference = family(sizes).eval()
    perturb(reference)
    module = specdsl.to_torch(specdsl.loads(text, name=f"{family.__name__}.spec", overrides=sizes)).eval()
    report = specdsl.load_weights(module, reference.state_dict(), naming="hf")
    assert report["family"] == naming
    tokens = torch.randint(0, sizes["vocab"], (3, 11))
    with torch.no_grad():
        assert (module(tokens) - reference(tokens).logits).abs().max() <= TOL


DECODE = [
    ("phi.spec", dict(vocab=40, ctx=16, d=40, layers=2, heads=4, ffn=50, rotary_dims=4)),  # partial rotary
    ("gpt-neox.spec", dict(vocab=40, ctx=16, d=64, layers=2, heads=4, ffn=50)),
    ("opt.spec", dict(vocab=40, ctx=16, d=32, layers=2, heads=4, ffn=50)),  # positions from row 2
    ("gemma.spec", dict(vocab=40, ctx=16, d=32, layers=2, heads=4, kv_heads=2, head_dim=10, ffn=50)),
    (BLOOM, dict(vocab=40, d=36, layers=2, heads=6)),  # ALiBi
    (QWEN3, {}),  # q/k norms
    ("olmo2.spec", dict(vocab=40, ctx=16, d=32, layers=2, heads=4, kv_heads=2, ffn=50)),  # q/k norms of all heads
    (GPTJ, dict(rotary_dims=6)),  # interleaved, partial
]


def _decoding_case(spec, sizes):
    """(module with perturbed weights, its Decoder, a batch of 2 x 12 tokens) of one DECODE case."""
    from specdsl.backends.torch_backend import Decoder
    compiled = (specdsl.load(SPECS / spec, overrides=sizes) if spec.endswith(".spec")
                else specdsl.loads(spec, name="inline.spec", overrides=sizes))
    torch.manual_seed(0)
    module = specdsl.to_torch(compiled).eval()
    perturb(module)
    return module, Decoder(module), torch.randint(0, compiled.model.hyperparameters["vocab"], (2, 12))


@pytest.mark.parametrize("spec,sizes", DECODE, ids=[s if s.endswith(".spec") else s.split("model ")[1].split()[0]
                                                     for s, _ in DECODE])
def test_incremental_decoding_equals_the_full_pass(spec, sizes):
    """A prompt of 5, then one token at a time with the KV cache: each step's logits are the full pass's at that
    position (rotary and ALiBi positions continue after the cached ones)."""
    module, decoder, tokens = _decoding_case(spec, sizes)
    with torch.no_grad():
        full = module(tokens)
        logits, *cache = decoder(tokens[:, :5], *decoder.empty_cache(batch=2))
        steps = [logits]
        for t in range(5, 12):
            logits, *cache = decoder(tokens[:, t:t + 1], *cache)
            steps.append(logits)
    assert (torch.cat(steps, dim=1) - full).abs().max() <= TOL


@pytest.mark.parametrize("spec,sizes", DECODE, ids=[s if s.endswith(".spec") else s.split("model ")[1].split()[0]
                                                     for s, _ in DECODE])
def test_decoding_in_place_equals_the_full_pass(spec, sizes):
    """`specc sample`'s path: Decoder.step writing keys and values into a StaticCache in place (single queries
    without a mask), a prompt of 5 then one token at a time; each step's logits are the full pass's."""
    module, decoder, tokens = _decoding_case(spec, sizes)
    cache = decoder.static_cache(12, batch=2)
    with torch.inference_mode():
        full = module(tokens)
        steps = [decoder.step(tokens[:, :5], cache)] + [decoder.step(tokens[:, t:t + 1], cache) for t in range(5, 12)]
    assert cache.length == 12
    assert (torch.cat(steps, dim=1) - full).abs().max() <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("text,sizes", [(BLOOM, dict(heads=6, d=36)), (QWEN3, {}), (GPTJ, dict(rotary_dims=6))],
                         ids=["bloom-alibi", "qwen3-qk_norm", "gptj-interleaved"])
def test_quirks_export_to_onnx_with_a_kv_cache(tmp_path, text, sizes):
    """The full graph and the decoding graph on onnxruntime equal torch (export() checks both and reports)."""
    pytest.importorskip("onnxruntime")
    from specdsl.backends.onnx_export import export
    compiled = specdsl.loads(text, name="inline.spec", overrides=sizes)
    report = export(compiled, tmp_path / "m.onnx")
    assert report["max_abs_diff"] <= 1e-4
    assert report["decode"]["cache_vs_full_max_abs_diff"] <= 1e-5
