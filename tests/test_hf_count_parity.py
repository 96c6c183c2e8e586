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
