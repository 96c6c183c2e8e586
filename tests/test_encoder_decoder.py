"""Encoder-decoder models: layers and blocks that read a second tensor (cross-attention's `memory`), models with
two token inputs, and everything that follows for them: the IR's dataflow (a module's captured inputs), counts
against Hugging Face (BART built from a config object), logits of CrossAttention against BART's cross-attention
with perturbed weights, the torch module against the ejected one, the contract, and the clear refusals of what
is not yet supported (ONNX export). Training, sampling and incremental decoding: tests/test_seq2seq.py."""

from __future__ import annotations

import json

import pytest

import specdsl
from conftest import SPECS
from specdsl.contract import Contract, contract
from specdsl.errors import SpecError

torch = pytest.importorskip("torch")

SEQ2SEQ = """
use "std/transformer.spec"
use "std/seq2seq.spec"
param vocab = 50
param ctx = 12
param d = 16
param layers = 2
param dec_layers = 3
param heads = 2
param ffn = 32
model s2s {
    input src: int[batch, src_len <= ctx]
    input tgt: int[batch, tgt_len <= ctx]
    enc = src -> embed: Embedding(vocab, d) -> enc_pos: PositionalEmbedding(ctx, d)
              -> encoder: repeat layers { post_ln_block(d, heads, ffn, causal = false) }
    y = tgt -> tgt_embed: Embedding(vocab, d, tie = embed) -> dec_pos: PositionalEmbedding(ctx, d)
    y = y -> decoder: repeat dec_layers { post_ln_decoder_block(d, heads, memory = enc, ffn = ffn, act = "gelu") }
    return y -> lm_head: Linear(d, vocab, bias = false, tie = embed)
}
"""


def load(text, **kw):
    return specdsl.loads(text, name=str(SPECS / "test.spec"), **kw)


def inputs(batch=2, src=7, tgt=5, vocab=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, src), generator=gen), torch.randint(0, vocab, (batch, tgt), generator=gen)


# ---------------------------------------------------------------- the language


def test_cross_attention_reads_a_memory_of_its_own_length():
    c = load(SEQ2SEQ)
    cross = c.model.root.children[-2].children[0]  # the decoder repeat's body is inlined: attn, ln_1, cross, ...
    layer = next(ch for ch in c.model.root.children[-2].children if ch.name == "cross")
    assert cross.name == "attn" and layer.kind == "CrossAttention"
    memory = layer.arguments["memory"]
    assert str(memory) == "float[batch, src_len<=12, 16]" and str(layer.input) == "float[batch, tgt_len<=12, 16]"
    # The repeat reads the encoder's output beside its piped input: a further input of the module and of its call.
    decoder = c.model.root.children[-2]
    call = next(op for op in c.model.root.ops if op.target == "decoder")
    assert len(decoder.inputs) == 2 and call.args[1] == decoder.inputs[1]
    enc_call = next(op for op in c.model.root.ops if op.target == "encoder")
    assert call.args[1] == enc_call.out


def test_counts_flops_and_caches_follow_the_memory():
    c = load(SEQ2SEQ)
    a = c.analysis
    d, heads, ffn, vocab, ctx = 16, 2, 32, 50, 12
    attn = 4 * d * d + 4 * d
    mlp = 2 * d * ffn + ffn + d
    enc_layer, dec_layer = attn + mlp + 4 * d, 2 * attn + mlp + 6 * d
    assert a.total == vocab * d + 2 * ctx * d + 2 * enc_layer + 3 * dec_layer
    cross = next(s for s in a.tree.children if s.name == "decoder").children
    cross = next(s for s in cross if s.name == "cross")
    # per target token: q and out projections, scores and sum over the 12 source positions; k and v once per
    # source position (every symbolic dim taken as 1)
    assert cross.flops == 2 * d * d + 2 * d * d + 4 * ctx * d + 4 * d * d
    mem = a.memory()
    assert mem["kv_cache_per_token"]["bf16"] == 2 * 2 * d * (2 + 3)  # self-attention layers, encoder's included
    assert mem["kv_cache_per_memory_token"]["bf16"] == 2 * 2 * d * 3  # cross-attention, per source position
    facts = contract(c.model)
    assert facts.inputs == ("src", "tgt") and facts.encoder_decoder and not facts.language_model
    assert facts.memory_cache == ((2, 8),) * 3
    data = json.loads(json.dumps(facts.to_json()))  # as an exported file holds it
    assert Contract.from_json(data) == facts
    old = {k: v for k, v in data.items() if k not in ("encoder_decoder", "memory_cache")}
    assert Contract.from_json(old).memory_cache == ()  # the contract of files exported before


def test_a_labelled_block_takes_a_tensor_parameter():
    text = """
param d = 8
block dec(d: int, memory: tensor) {
    input x
    x = x + (x -> ln: LayerNorm(d) -> cross: CrossAttention(d, 2, memory = memory))
    return x -> fc: Linear(d, d) -> ReLU -> out: Linear(d, d)
}
model m {
    input x: float[batch, seq <= 6, d]
    input mem: float[batch, src <= 9, d]
    a = x -> first: dec(d, memory = mem)
    b = a -> second: dec(d, mem)
    return b -> dec(d, memory = a)
}
"""
    c = load(text)
    first = c.model.root.children[0]
    assert first.inputs[1] == "mem" and [p for p, *_ in c.model.parameters()][:3] == [
        "first.ln.weight", "first.ln.bias", "first.cross.q.weight"]
    module = specdsl.to_torch(c).eval()
    x, mem = torch.randn(2, 6, 8), torch.randn(2, 9, 8)
    assert module(x, mem).shape == (2, 6, 8)
    _same_when_ejected(c, module, (x, mem))


def _same_when_ejected(c, module, xs):
    from specdsl.backends.emit_torch import emit_torch
    namespace = {"__name__": "ejected"}
    exec(compile(emit_torch(c.model), "ejected.py", "exec"), namespace)
    ejected = namespace["Model"]().eval()
    ejected.load_state_dict(module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ejected(*xs), module(*xs), rtol=0, atol=0)


def test_torch_module_equals_the_ejected_one_and_the_decoder_is_causal():
    c = load(SEQ2SEQ)
    torch.manual_seed(0)
    module = specdsl.to_torch(c).eval()
    src, tgt = inputs()
    with torch.no_grad():
        y = module(src, tgt)
        assert y.shape == (2, 5, 50)
        later = tgt.clone()
        later[:, -1] = (later[:, -1] + 1) % 50
        torch.testing.assert_close(module(src, later)[:, :-1], y[:, :-1], rtol=0, atol=0)
        other = src.clone()
        other[:, -1] = (other[:, -1] + 1) % 50
        assert (module(other, tgt) - y).abs().max() > 0  # every target position reads the whole source
    _same_when_ejected(c, module, (src, tgt))


def test_the_transformer_spec_builds_and_ejects():
    c = specdsl.load(SPECS / "transformer.spec",
                     overrides=dict(vocab=40, ctx=10, d=16, heads=2, ffn=24, layers=2, dec_layers=1))
    module = specdsl.to_torch(c).eval()
    assert sum(p.numel() for p in module.parameters()) == c.analysis.total
    src, tgt = inputs(vocab=40, src=9, tgt=4)
    _same_when_ejected(c, module, (src, tgt))


@pytest.mark.parametrize("preset,total", [("base", 63_082_496), ("big", 214_245_376)])
def test_the_transformer_presets(preset, total):
    """Vaswani et al. 2017 report 65M (base) and 213M (big); specc's count with a 37,000-token shared vocabulary,
    biases on every projection and sinusoidal positions (no parameters) is these (docs/language.md)."""
    assert specdsl.load(SPECS / "transformer.spec", preset=preset).analysis.total == total


# ---------------------------------------------------------------- against Hugging Face

transformers = pytest.importorskip("transformers")

def bart_spec():
    """BART (Lewis et al. 2020): post-LN, GELU, learned positions with an offset of 2 rows, a LayerNorm on the
    embeddings of each stack, one embedding shared by encoder, decoder and the tied head."""
    return """
use "std/transformer.spec"
use "std/seq2seq.spec"
param vocab = 50
param ctx = 12
param d = 16
param layers = 2
param dec_layers = 3
param heads = 2
param ffn = 32
model bart {
    input src: int[batch, src_len <= ctx]
    input tgt: int[batch, tgt_len <= ctx]
    enc = src -> embed: Embedding(vocab, d) -> enc_pos: PositionalEmbedding(ctx + 2, d) -> enc_ln: LayerNorm(d)
              -> encoder: repeat layers { post_ln_block(d, heads, ffn, causal = false) }
    y = tgt -> tgt_embed: Embedding(vocab, d, tie = embed) -> dec_pos: PositionalEmbedding(ctx + 2, d)
            -> dec_ln: LayerNorm(d)
    y = y -> decoder: repeat dec_layers { post_ln_decoder_block(d, heads, memory = enc, ffn = ffn, act = "gelu") }
    return y -> lm_head: Linear(d, vocab, bias = false, tie = embed)
}
"""


@pytest.mark.parametrize("vocab,ctx,d,layers,dec_layers,heads,ffn", [
    (50, 12, 16, 2, 3, 2, 32), (1000, 64, 48, 1, 2, 4, 100), (50265, 1024, 768, 6, 6, 12, 3072)])
def test_counts_equal_bart(vocab, ctx, d, layers, dec_layers, heads, ffn):
    config = transformers.BartConfig(vocab_size=vocab, max_position_embeddings=ctx, d_model=d,
                                     encoder_layers=layers, decoder_layers=dec_layers, encoder_attention_heads=heads,
                                     decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn)
    with torch.device("meta"):
        hf = transformers.BartForConditionalGeneration(config)
    expected = sum(p.numel() for p in hf.parameters())
    got = load(bart_spec(), overrides=dict(vocab=vocab, ctx=ctx, d=d, layers=layers, dec_layers=dec_layers,
                                           heads=heads, ffn=ffn)).analysis.total
    assert got == expected


@pytest.mark.parametrize("d,heads,src", [(16, 2, 7), (24, 4, 3)])
def test_cross_attention_logits_equal_barts(d, heads, src):
    """CrossAttention against BART's decoder cross-attention (`encoder_attn`), every weight and bias perturbed."""
    from transformers.models.bart.modeling_bart import BartAttention
    config = transformers.BartConfig(d_model=d, decoder_attention_heads=heads)
    config._attn_implementation = "eager"
    hf = BartAttention(d, heads, is_decoder=True, bias=True, config=config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    c = load(f"""
model m {{
    input x: float[batch, seq <= 8, {d}]
    input mem: float[batch, src <= 8, {d}]
    return x -> cross: CrossAttention({d}, {heads}, memory = mem, bias = true)
}}
""")
    module = specdsl.to_torch(c).eval()
    with torch.no_grad():
        module.cross.q.weight.copy_(hf.q_proj.weight)
        module.cross.q.bias.copy_(hf.q_proj.bias)
        module.cross.kv.weight.copy_(torch.cat((hf.k_proj.weight, hf.v_proj.weight)))
        module.cross.kv.bias.copy_(torch.cat((hf.k_proj.bias, hf.v_proj.bias)))
        module.cross.out.weight.copy_(hf.out_proj.weight)
        module.cross.out.bias.copy_(hf.out_proj.bias)
        x, mem = torch.randn(2, 5, d, generator=gen), torch.randn(2, src, d, generator=gen)
        expected = hf(x, key_value_states=mem)[0]
        torch.testing.assert_close(module(x, mem), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- what is not yet supported


def test_onnx_export_refuses_an_encoder_decoder_and_decoder_points_to_seq2seq_decoder(tmp_path):
    c = load(SEQ2SEQ)
    from specdsl.backends.torch_backend import Decoder
    with pytest.raises(SpecError, match="Decoder decodes decoder-only models") as e:
        Decoder(specdsl.to_torch(c))
    assert e.value.errors[0].span.line > 0 and "Seq2SeqDecoder" in e.value.errors[0].hint
    pytest.importorskip("onnx")
    from specdsl.backends.onnx_export import export
    with pytest.raises(SpecError, match="ONNX export is not yet supported for encoder-decoder models"):
        export(c, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())
