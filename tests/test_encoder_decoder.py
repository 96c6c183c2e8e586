"""Encoder-decoder models: layers and blocks that read a second tensor (cross-attention's `memory`), models with
two token inputs, and everything that follows for them: the IR's dataflow (a module's captured inputs), counts
against Hugging Face (BART built from a config object), logits of CrossAttention against BART's cross-attention
with perturbed weights, the torch module against the ejected one, and the contract. Training, sampling and
incremental decoding: tests/test_seq2seq.py; ONNX export and generation: tests/test_seq2seq_onnx.py."""

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
    d, ffn, vocab, ctx = 16, 32, 50, 12
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


@pytest.mark.parametrize("call", ["repeat 2 { dec(d, memory = mem) }", "repeat 2 shared { dec(d, memory = mem) }",
                                  "blk: dec(d, memory = mem)"])
def test_a_block_pipes_its_tensor_parameter_into_layers(call):
    """`m = memory -> LayerNorm(d)` inside a block reads a tensor of the caller as a pipe's source, not as a layer's
    argument: it is a captured input of the block's module (and of the repeat's) like `memory = enc` (before, the
    module read the caller's ref it was never given: KeyError '%1' in the forward)."""
    text = f"""
param d = 8
block dec(d: int, memory: tensor) {{
    input x
    m = memory -> norm: LayerNorm(d)
    return (x -> fc: Linear(d, d)) + m
}}
model m {{
    input x: float[batch, 6, d]
    input mem: float[batch, 6, d]
    return x -> {call}
}}
"""
    c = load(text)
    module = specdsl.to_torch(c).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    x, mem = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    weights = dict(module.named_parameters())
    blocks = sorted({name.rsplit(".", 2)[0] for name in weights if ".norm." in name})
    expected = x
    F = torch.nn.functional
    for prefix in (blocks * 2 if "shared" in call else blocks):
        w = {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}
        expected = F.linear(expected, w["fc.weight"], w["fc.bias"]) + F.layer_norm(mem, (8,), w["norm.weight"],
                                                                                   w["norm.bias"])
    with torch.no_grad():
        torch.testing.assert_close(module(x, mem), expected)
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


# ---------------------------------------------------------------- decoding (ONNX: tests/test_seq2seq_onnx.py)


def test_decoder_points_an_encoder_decoder_to_seq2seq_decoder():
    c = load(SEQ2SEQ)
    from specdsl.backends.torch_backend import Decoder
    with pytest.raises(SpecError, match="Decoder decodes decoder-only models") as e:
        Decoder(specdsl.to_torch(c))
    assert e.value.errors[0].span.line > 0 and "Seq2SeqDecoder" in e.value.errors[0].hint


# ---------------------------------------------------------------- T5 (specs/t5.spec) against Hugging Face


def _t5_config(**kw):
    return transformers.T5Config(dropout_rate=0.0, **kw)


@pytest.mark.parametrize("preset,config,total", [
    ("small", {}, 60_506_624),
    ("base", dict(d_model=768, num_layers=12, num_heads=12, d_ff=3072), 222_903_552)])
def test_t5_counts_equal_hugging_face(preset, config, total):
    """T5ForConditionalGeneration from T5Config on the meta device (T5Config's defaults are t5-small's)."""
    with torch.device("meta"):
        hf = transformers.T5ForConditionalGeneration(_t5_config(**config))
    assert sum(p.numel() for p in hf.parameters()) == total
    assert specdsl.load(SPECS / "t5.spec", preset=preset).analysis.total == total


def test_t5_v1_1_count():
    """T5 v1.1 small: Hugging Face transformers 5 ties lm_head to the shared embedding for every T5 config (the
    T5Config comment: "we tie weights always"); the v1.1 checkpoints carry an lm_head of their own, which the spec
    (tied = false) counts: HF's figure plus vocab x d."""
    config = _t5_config(d_model=512, num_layers=8, num_heads=6, d_ff=1024, feed_forward_proj="gated-gelu",
                        tie_word_embeddings=False)
    with torch.device("meta"):
        hf = transformers.T5ForConditionalGeneration(config)
    assert specdsl.load(SPECS / "t5.spec", preset="v1_1-small").analysis.total == \
        sum(p.numel() for p in hf.parameters()) + 32128 * 512 == 76_961_152


@pytest.mark.parametrize("bidirectional,buckets,max_distance", [(True, 32, 128), (False, 32, 128), (True, 8, 20),
                                                                 (False, 6, 9)])
def test_relative_position_buckets_equal_t5s(bidirectional, buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    from specdsl.backends.torch_modules import relative_position_bucket
    relative = torch.arange(-300, 301)[None, :] - torch.arange(0, 5)[:, None]
    expected = T5Attention._relative_position_bucket(relative, bidirectional, buckets, max_distance)
    assert torch.equal(relative_position_bucket(relative, bidirectional, buckets, max_distance), expected)


def _t5_state_dict(hf, layers, dec_layers, gated, tied):
    """The spec's parameters from HF T5's, by an explicit map (q, k, v fused into qkv; k, v into kv)."""
    sd = hf.state_dict()
    mlp = (("mlp.gate", "wi_0"), ("mlp.up", "wi_1"), ("mlp.down", "wo")) if gated else \
        (("mlp.fc", "wi"), ("mlp.proj", "wo"))
    out = {"embed.weight": sd["shared.weight"], "tgt_embed.weight": sd["shared.weight"],
           "enc_rel.weight": sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
           "dec_rel.weight": sd["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
           "enc_norm.weight": sd["encoder.final_layer_norm.weight"],
           "dec_norm.weight": sd["decoder.final_layer_norm.weight"],
           "lm_head.weight": sd["shared.weight"] if tied else sd["lm_head.weight"]}
    for stack, n in (("encoder", layers), ("decoder", dec_layers)):
        ff = 1 if stack == "encoder" else 2
        for i in range(n):
            hf_, us = f"{stack}.block.{i}.layer", f"{stack}.{i}"
            att = f"{hf_}.0.SelfAttention"
            out[f"{us}.ln_1.weight"] = sd[f"{hf_}.0.layer_norm.weight"]
            out[f"{us}.attn.qkv.weight"] = torch.cat([sd[f"{att}.{w}.weight"] for w in "qkv"])
            out[f"{us}.attn.out.weight"] = sd[f"{att}.o.weight"]
            if stack == "decoder":
                cross = f"{hf_}.1.EncDecAttention"
                out[f"{us}.ln_2.weight"] = sd[f"{hf_}.1.layer_norm.weight"]
                out[f"{us}.cross.q.weight"] = sd[f"{cross}.q.weight"]
                out[f"{us}.cross.kv.weight"] = torch.cat([sd[f"{cross}.{w}.weight"] for w in "kv"])
                out[f"{us}.cross.out.weight"] = sd[f"{cross}.o.weight"]
            out[f"{us}.ln_{ff + 1}.weight"] = sd[f"{hf_}.{ff}.layer_norm.weight"]
            dense = "DenseReluDense"
            for ours, theirs in mlp:
                out[f"{us}.{ours}.weight"] = sd[f"{hf_}.{ff}.{dense}.{theirs}.weight"]
    return out


@pytest.mark.parametrize("gated", [False, True])
def test_t5_logits_equal_hugging_face(gated):
    """specs/t5.spec at a tiny size against T5ForConditionalGeneration, every parameter perturbed, fp32: the
    encoder's output, the decoder's and the logits (original T5: tied, d^-0.5; v1.1: gated-gelu, untied)."""
    d, heads, head_dim, ffn, layers, dec_layers, vocab = 16, 2, 6, 24, 2, 3, 40
    tied = not gated
    config = _t5_config(vocab_size=vocab, d_model=d, d_kv=head_dim, d_ff=ffn, num_layers=layers,
                        num_decoder_layers=dec_layers, num_heads=heads, relative_attention_num_buckets=8,
                        relative_attention_max_distance=12, tie_word_embeddings=tied,
                        feed_forward_proj="gated-gelu" if gated else "relu")
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
        if not tied:  # transformers 5 ties lm_head for every T5; an lm_head of its own, as v1.1 checkpoints
            hf.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, d, generator=gen) * 0.3)
    c = specdsl.load(SPECS / "t5.spec", overrides=dict(
        vocab=vocab, ctx=20, d=d, heads=heads, head_dim=head_dim, ffn=ffn, layers=layers, dec_layers=dec_layers,
        buckets=8, max_distance=12, dropout=0.0, gated=gated, act="gelu_tanh" if gated else "relu", tied=tied))
    module = specdsl.to_torch(c).eval()
    module.load_state_dict(_t5_state_dict(hf, layers, dec_layers, gated, tied))
    assert sum(p.numel() for p in module.parameters()) == c.analysis.total
    src, tgt = inputs(vocab=vocab, src=17, tgt=15)  # longer than max_distance: every bucket is read
    with torch.no_grad():
        expected = hf(input_ids=src, decoder_input_ids=tgt, output_hidden_states=True)
        captured = {}
        hooks = [getattr(module, name).register_forward_hook(lambda m, i, o, name=name: captured.setdefault(name, o))
                 for name in ("enc_norm", "dec_norm")]
        got = module(src, tgt)
        for h in hooks:
            h.remove()
    torch.testing.assert_close(captured["enc_norm"], expected.encoder_last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(captured["dec_norm"], expected.decoder_hidden_states[-1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, expected.logits, rtol=1e-5, atol=1e-5)
    _same_when_ejected(c, module, (src, tgt))
