"""Counts equal Hugging Face transformers models built from config objects (never from_pretrained), at several
small shapes per family: odd widths, GQA with kv_heads 1 and 2, tied and untied heads. Convention: HF's
`sum(p.numel() for p in model.parameters())`, which lists a tied tensor once, like specc."""

import pytest

import specdsl
from conftest import SPECS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_count(model_cls, config) -> int:
    with torch.device("meta"):
        model = model_cls(config)
    return sum(p.numel() for p in model.parameters())


def gpt2(vocab, ctx, d, layers, heads):
    return transformers.GPT2LMHeadModel, transformers.GPT2Config(vocab_size=vocab, n_positions=ctx, n_embd=d,
                                                                  n_layer=layers, n_head=heads)


def gpt1(vocab, ctx, d, layers, heads):
    return transformers.OpenAIGPTLMHeadModel, transformers.OpenAIGPTConfig(vocab_size=vocab, n_positions=ctx,
                                                                            n_embd=d, n_layer=layers, n_head=heads)


def llama(vocab, d, layers, heads, kv_heads, ffn, tied=False):
    return transformers.LlamaForCausalLM, transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=ffn, tie_word_embeddings=tied)


def mistral(vocab, d, layers, heads, kv_heads, ffn):
    return transformers.MistralForCausalLM, transformers.MistralConfig(
        vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=ffn)


def mixtral(vocab, d, layers, heads, kv_heads, ffn, experts, top_k):
    return transformers.MixtralForCausalLM, transformers.MixtralConfig(
        vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=ffn, num_local_experts=experts, num_experts_per_tok=top_k)


def bert(vocab, ctx, d, layers, heads, ffn, types, mlm=False):
    config = transformers.BertConfig(vocab_size=vocab, max_position_embeddings=ctx, hidden_size=d,
                                     num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                                     type_vocab_size=types)
    return (transformers.BertForMaskedLM if mlm else transformers.BertModel), config


def albert(vocab, ctx, emb, d, layers, heads, ffn, types):
    return transformers.AlbertModel, transformers.AlbertConfig(
        vocab_size=vocab, max_position_embeddings=ctx, embedding_size=emb, hidden_size=d, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=ffn, type_vocab_size=types)


def gemma(vocab, d, layers, heads, kv_heads, head_dim, ffn):
    return transformers.GemmaForCausalLM, transformers.GemmaConfig(
        vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=head_dim, intermediate_size=ffn)


def qwen2(vocab, d, layers, heads, kv_heads, ffn, tied=True):
    return transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=ffn, tie_word_embeddings=tied)


def olmo2(vocab, d, layers, heads, kv_heads, ffn, bias=False):
    return transformers.Olmo2ForCausalLM, transformers.Olmo2Config(
        vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=ffn, attention_bias=bias)


def phi(vocab, d, layers, heads, ffn, rotary_dims):
    return transformers.PhiForCausalLM, transformers.PhiConfig(
        vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
        partial_rotary_factor=rotary_dims / (d // heads))


def neox(vocab, d, layers, heads, ffn, rotary_dims=None):
    return transformers.GPTNeoXForCausalLM, transformers.GPTNeoXConfig(
        vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
        rotary_pct=(rotary_dims or d // heads // 4) / (d // heads))


def opt(vocab, ctx, d, layers, heads, ffn):
    return transformers.OPTForCausalLM, transformers.OPTConfig(
        vocab_size=vocab, max_position_embeddings=ctx, hidden_size=d, num_hidden_layers=layers,
        num_attention_heads=heads, ffn_dim=ffn)


CASES = [
    ("gpt2.spec", None, dict(vocab=97, ctx=33, d=48, layers=3, heads=4), gpt2),
    ("gpt2.spec", None, dict(vocab=1001, ctx=7, d=30, layers=1, heads=5), gpt2),
    ("gpt1.spec", None, dict(vocab=211, ctx=19, d=36, layers=2, heads=3), gpt1),
    ("llama.spec", None, dict(vocab=300, d=64, layers=2, heads=4, kv_heads=4, ffn=100), llama),
    ("llama.spec", None, dict(vocab=301, d=96, layers=3, heads=6, kv_heads=2, ffn=77), llama),
    ("llama.spec", None, dict(vocab=50, d=32, layers=1, heads=4, kv_heads=1, ffn=45), llama),
    ("llama.spec", None, dict(vocab=77, d=48, layers=2, heads=6, kv_heads=3, ffn=50, tied=True), llama),
    ("mistral.spec", None, dict(vocab=123, d=64, layers=2, heads=8, kv_heads=2, ffn=90), mistral),
    ("mixtral.spec", None, dict(vocab=99, d=32, layers=2, heads=4, kv_heads=2, ffn=40, experts=4, top_k=2), mixtral),
    ("mixtral.spec", None, dict(vocab=64, d=48, layers=1, heads=6, kv_heads=1, ffn=33, experts=3, top_k=1), mixtral),
    ("bert.spec", None, dict(vocab=500, ctx=40, d=48, layers=2, heads=4, ffn=70, types=2), bert),
    ("bert.spec", "mlm", dict(vocab=501, ctx=41, d=36, layers=3, heads=6, ffn=51, types=3), bert),
    ("albert.spec", None, dict(vocab=400, ctx=30, emb=16, d=48, layers=4, heads=4, ffn=64, types=2), albert),
    ("gemma.spec", None, dict(vocab=301, d=48, layers=2, heads=3, kv_heads=1, head_dim=20, ffn=70), gemma),
    ("gemma.spec", None, dict(vocab=97, d=30, layers=1, heads=4, kv_heads=2, head_dim=6, ffn=41), gemma),
    ("qwen2.spec", None, dict(vocab=303, d=56, layers=2, heads=7, kv_heads=1, ffn=90), qwen2),
    ("qwen2.spec", None, dict(vocab=99, d=48, layers=3, heads=6, kv_heads=3, ffn=37, tied=False), qwen2),
    ("olmo2.spec", None, dict(vocab=301, d=64, layers=2, heads=4, kv_heads=4, ffn=100), olmo2),
    ("olmo2.spec", None, dict(vocab=99, d=48, layers=3, heads=6, kv_heads=2, ffn=37, bias=True), olmo2),
    ("olmo2.spec", None, dict(vocab=50, d=30, layers=1, heads=5, kv_heads=1, ffn=41), olmo2),
    ("phi.spec", None, dict(vocab=211, d=40, layers=2, heads=4, ffn=77, rotary_dims=4), phi),
    ("phi.spec", None, dict(vocab=97, d=36, layers=1, heads=3, ffn=50, rotary_dims=12), phi),
    ("gpt-neox.spec", None, dict(vocab=307, d=64, layers=2, heads=4, ffn=100), neox),
    ("gpt-neox.spec", None, dict(vocab=99, d=60, layers=3, heads=5, ffn=61, rotary_dims=6), neox),
    ("opt.spec", None, dict(vocab=311, ctx=33, d=48, layers=2, heads=4, ffn=70), opt),
    ("opt.spec", None, dict(vocab=97, ctx=7, d=30, layers=1, heads=5, ffn=41), opt),
]


@pytest.mark.parametrize("spec,preset,sizes,family", CASES,
                         ids=[f"{c[0]}-{c[1] or 'default'}-{i}" for i, c in enumerate(CASES)])
def test_count_equals_hf(spec, preset, sizes, family):
    model_cls, config = family(**sizes, **({"mlm": True} if preset == "mlm" else {}))
    a = specdsl.load(SPECS / spec, preset=preset, overrides=sizes).analysis
    assert a.total == hf_count(model_cls, config)


def test_mixtral_active_equals_hf_minus_unrouted_experts():
    sizes = dict(vocab=99, d=32, layers=2, heads=4, kv_heads=2, ffn=40, experts=4, top_k=2)
    model_cls, config = mixtral(**sizes)
    with torch.device("meta"):
        model = model_cls(config)
    per_expert = 3 * sizes["d"] * sizes["ffn"]
    total = sum(p.numel() for p in model.parameters())
    a = specdsl.load(SPECS / "mixtral.spec", overrides=sizes).analysis
    assert a.active == total - sizes["layers"] * (sizes["experts"] - sizes["top_k"]) * per_expert


# Full size, on the meta device: each family's published configuration (Hugging Face config.json of the checkpoint
# named) against the zoo spec at its default or preset, and the published figure issue 11 lists (HF's count of
# that configuration).
FULL = [
    # google/gemma-2b: 2,506,172,416 (vocabulary 256,000)
    ("gemma.spec", None, 2_506_172_416, lambda: gemma(256000, 2048, 18, 8, 1, 256, 16384)),
    # google/gemma-7b: HF's count of its config, 8,537,680,896 (16 heads of 256: attention 4,096 wide, d 3,072)
    ("gemma.spec", "7b", 8_537_680_896, lambda: gemma(256000, 3072, 28, 16, 16, 256, 24576)),
    # Qwen/Qwen2-0.5B: 494,032,768 (Qwen2 technical report, 0.49B with tied embeddings)
    ("qwen2.spec", None, 494_032_768, lambda: qwen2(151936, 896, 24, 14, 2, 4864)),
    # allenai/OLMo-2-1124-7B: HF's count of its config, 7,298,617,344 (untied head; the model card's 7B)
    ("olmo2.spec", None, 7_298_617_344, lambda: olmo2(100352, 4096, 32, 32, 32, 11008)),
    # allenai/OLMo-2-0425-1B: 1,484,916,736
    ("olmo2.spec", "1b", 1_484_916_736, lambda: olmo2(100352, 2048, 16, 16, 16, 8192)),
    # microsoft/phi-2: 2,779,683,840 (partial_rotary_factor 0.4: 32 of 80 dims)
    ("phi.spec", None, 2_779_683_840, lambda: phi(51200, 2560, 32, 32, 10240, 32)),
    # EleutherAI/gpt-neox-20b: 20,554,567,680
    ("gpt-neox.spec", None, 20_554_567_680, lambda: neox(50432, 6144, 44, 64, 24576)),
    # EleutherAI/pythia-160m: 162,322,944
    ("gpt-neox.spec", "pythia-160m", 162_322_944, lambda: neox(50304, 768, 12, 12, 3072)),
    # facebook/opt-125m: 125,239,296
    ("opt.spec", None, 125_239_296, lambda: opt(50272, 2048, 768, 12, 12, 3072)),
]


@pytest.mark.parametrize("spec,preset,published,family", FULL, ids=[f"{c[0]}-{c[1] or 'default'}" for c in FULL])
def test_full_size_count_equals_hf_and_the_published_figure(spec, preset, published, family):
    model_cls, config = family()
    assert specdsl.load(SPECS / spec, preset=preset).analysis.total == hf_count(model_cls, config) == published
