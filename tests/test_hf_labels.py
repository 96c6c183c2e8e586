"""A spec's labels are free (issue 11, item 4): load_weights matches a spec's parameters to its family's reference
spec by structure (kinds in order, repeats, local names; specdsl/backends/hf_structure.py), not by label.

Each family below has a spec written here with every label renamed (the model's and its blocks': `tok:`,
`blocks: repeat`, `self_attention:`, `head:`); a save_pretrained folder (sharded, with its index) of a tiny Hugging
Face model built from a config object, every parameter perturbed, loads into it and gives outputs within 1e-5 of
Hugging Face's. Optional parts: a head the *Model classes lack, BERT's pooler, tied heads, q/k/v biases (Qwen2)
the LLaMA table has and a LLaMA spec lacks. A spec of another structure (layers reordered, one missing or extra, a
repeat shared or not) is refused naming the spec's parameter at the spot and what the family expects there, before
anything is copied; Gemma's weights in a renamed LLaMA spec are still refused."""

import json

import pytest
from test_hf_folders import save, shards
from test_hf_logits_parity import bert, llama, neox, opt, perturb, phi, qwen2

import specdsl
from conftest import SPECS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
torch.set_num_threads(1)

from specdsl.backends import hf_naming as H  # noqa: E402
from specdsl.backends import hf_structure  # noqa: E402
from specdsl.backends.weights import ArchitectureError, StructureError  # noqa: E402

TOL = 1e-5

# GPT-2 (gpt2.spec and std's gpt_block, relabelled). `headless` leaves out the head: GPT2Model.
GPT2 = '''
param vocab = 97
param ctx = 16
param d = 48
param layers = 2
param heads = 4
param headless = false

block decoder_layer(width: int, n_heads: int) {
    input h
    h = h + (h -> pre_attention: LayerNorm(width)
              -> self_attention: Attention(width, n_heads, causal = true, bias = true))
    h = h + (h -> pre_mlp: LayerNorm(width) -> feed_forward: MLP(width, 4 * width, act = "gelu_tanh", bias = true))
    return h
}

model my_gpt {
    input ids: int[batch, seq <= ctx]
    h = ids -> tok: Embedding(vocab, d) -> positions: PositionalEmbedding(ctx, d)
    h = h -> blocks: repeat layers { decoder_layer(d, heads) } -> final_norm: LayerNorm(d)
    if headless {
        return h
    } else {
        return h -> head: Linear(d, vocab, bias = false, tie = tok)
    }
}
'''

# LLaMA and Qwen2 (llama.spec, qwen2.spec and std's llama_block, relabelled): Qwen2 has q/k/v biases and a tied
# head. `swap` writes the MLP before the attention, `no_ffn_norm` leaves out the second norm, `no_final_norm` the
# last one: other structures.
LLAMA = '''
param vocab = 90
param ctx = 16
param d = 64
param layers = 2
param heads = 4
param kv_heads = 2
param ffn = 100
param eps = 1e-5
param rope_theta = 10000.0
param qkv_bias = false
param tied = false
param swap = false
param no_ffn_norm = false
param no_final_norm = false

block decoder(d: int, heads: int, kv: int, hidden: int, theta: float, eps: float, qkv_bias: bool, swap: bool,
              no_ffn_norm: bool) {
    input x
    if swap {
        x = x + (x -> ffn_norm: RMSNorm(d, eps = eps) -> feed_forward: GatedMLP(d, hidden))
        x = x + (x -> attn_norm: RMSNorm(d, eps = eps)
                  -> self_attn: Attention(d, heads, kv_heads = kv, bias = qkv_bias, out_bias = false, rope = true,
                                          rope_theta = theta))
    } else {
        x = x + (x -> attn_norm: RMSNorm(d, eps = eps)
                  -> self_attn: Attention(d, heads, kv_heads = kv, bias = qkv_bias, out_bias = false, rope = true,
                                          rope_theta = theta))
        if no_ffn_norm {
            x = x + (x -> feed_forward: GatedMLP(d, hidden))
        } else {
            x = x + (x -> ffn_norm: RMSNorm(d, eps = eps) -> feed_forward: GatedMLP(d, hidden))
        }
    }
    return x
}

model my_llama {
    input ids: int[batch, seq <= ctx]
    x = ids -> tok: Embedding(vocab, d)
    x = x -> blocks: repeat layers { decoder(d, heads, kv_heads, ffn, rope_theta, eps, qkv_bias, swap, no_ffn_norm) }
    if no_final_norm {
        y = x
    } else {
        y = x -> final_norm: RMSNorm(d, eps = eps)
    }
    if tied {
        return y -> head: Linear(d, vocab, bias = false, tie = tok)
    } else {
        return y -> head: Linear(d, vocab, bias = false)
    }
}
'''

# GPT-NeoX (gpt-neox.spec and std's neox_block, relabelled): a parallel residual with two norms.
NEOX = '''
param vocab = 95
param ctx = 16
param d = 64
param layers = 2
param heads = 4
param ffn = 100
param rotary_dims = 4
param rope_theta = 10000.0

block neox_layer(d: int, heads: int, ffn: int, rotary_dims: int, rope_theta: float) {
    input x
    return x + (x -> norm_a: LayerNorm(d) -> mixer: Attention(d, heads, bias = true, rope = true,
                                                             rotary_dims = rotary_dims, rope_theta = rope_theta))
             + (x -> norm_b: LayerNorm(d) -> ff: MLP(d, ffn, act = "gelu", bias = true))
}

model my_neox {
    input ids: int[batch, seq <= ctx]
    x = ids -> tok: Embedding(vocab, d) -> stack: repeat layers { neox_layer(d, heads, ffn, rotary_dims, rope_theta) }
    return x -> out_norm: LayerNorm(d) -> unembed: Linear(d, vocab, bias = false)
}
'''

# Phi (phi.spec and std's parallel_block, relabelled): one norm feeds both branches; the head has a bias.
PHI = '''
param vocab = 89
param ctx = 16
param d = 40
param layers = 2
param heads = 4
param ffn = 77
param rotary_dims = 4
param rope_theta = 10000.0

block phi_layer(d: int, heads: int, ffn: int, rotary_dims: int, rope_theta: float) {
    input x
    h = x -> shared_norm: LayerNorm(d)
    return x + (h -> attention: Attention(d, heads, bias = true, rope = true, rotary_dims = rotary_dims,
                                          rope_theta = rope_theta))
             + (h -> dense_mlp: MLP(d, ffn, act = "gelu_tanh", bias = true))
}

model my_phi {
    input ids: int[batch, seq <= ctx]
    x = ids -> tok: Embedding(vocab, d)
    x = x -> layer_stack: repeat layers { phi_layer(d, heads, ffn, rotary_dims, rope_theta) }
    return x -> last_norm: LayerNorm(d) -> logits_head: Linear(d, vocab, bias = true)
}
'''

# OPT (opt.spec and std's gpt_block, relabelled), each layer a labelled block call inside the repeat (its label
# only prefixes names: blocks.0.layer.attn_ln.weight).
OPT = '''
param vocab = 87
param ctx = 16
param d = 48
param layers = 2
param heads = 4
param ffn = 70

block opt_layer(d: int, heads: int, ffn: int) {
    input x
    x = x + (x -> attn_ln: LayerNorm(d) -> attn_core: Attention(d, heads, causal = true, bias = true))
    x = x + (x -> mlp_ln: LayerNorm(d) -> mlp_core: MLP(d, ffn, act = "relu", bias = true))
    return x
}

model my_opt {
    input ids: int[batch, seq <= ctx]
    x = ids -> tok: Embedding(vocab, d) -> learned_pos: PositionalEmbedding(ctx + 2, d, offset = 2)
    x = x -> blocks: repeat layers { layer: opt_layer(d, heads, ffn) }
    return x -> final_ln: LayerNorm(d) -> head: Linear(d, vocab, bias = false, tie = tok)
}
'''

# BERT (bert.spec and std's post_ln_block, relabelled): post-LN encoder layers, the pooler unless `no_pooler`
# (BertModel(add_pooling_layer=False)).
BERT = '''
param vocab = 100
param ctx = 16
param types = 2
param d = 48
param layers = 2
param heads = 4
param ffn = 70
param eps = 1e-12
param no_pooler = false

block encoder_layer(d: int, heads: int, ffn: int, eps: float) {
    input x
    x = (x + (x -> mhsa: Attention(d, heads, causal = false, bias = true))) -> mhsa_norm: LayerNorm(d, eps = eps)
    x = (x + (x -> ffn_block: MLP(d, ffn, act = "gelu", bias = true))) -> ffn_norm: LayerNorm(d, eps = eps)
    return x
}

model my_bert {
    input ids: int[batch, seq <= ctx]
    input segments: int[batch, seq <= ctx] = 0
    x = (ids -> words: Embedding(vocab, d)) + (segments -> segment: Embedding(types, d))
    x = x -> positions: PositionalEmbedding(ctx, d) -> emb_norm: LayerNorm(d, eps = eps)
    x = x -> encoder: repeat layers { encoder_layer(d, heads, ffn, eps) }
    if no_pooler {
        return x
    } else {
        pooled = x -> Select(dim = 1, index = 0) -> cls_dense: Linear(d, d) -> Tanh
        return x, pooled
    }
}
'''

# ALBERT (albert.spec, relabelled): one layer shared by every iteration. `unshared` makes the repeat plain.
ALBERT = '''
param vocab = 80
param ctx = 16
param types = 2
param emb = 16
param d = 48
param layers = 3
param heads = 4
param ffn = 64
param eps = 1e-12
param unshared = false

block encoder_layer(d: int, heads: int, ffn: int, eps: float) {
    input x
    x = (x + (x -> mhsa: Attention(d, heads, causal = false, bias = true))) -> mhsa_norm: LayerNorm(d, eps = eps)
    x = (x + (x -> ffn_block: MLP(d, ffn, act = "gelu_tanh", bias = true))) -> ffn_norm: LayerNorm(d, eps = eps)
    return x
}

model my_albert {
    input ids: int[batch, seq <= ctx]
    input segments: int[batch, seq <= ctx] = 0
    x = (ids -> words: Embedding(vocab, emb)) + (segments -> segment: Embedding(types, emb))
    x = x -> positions: PositionalEmbedding(ctx, emb) -> emb_norm: LayerNorm(emb, eps = eps) -> up: Linear(emb, d)
    if unshared {
        x = x -> encoder: repeat layers { encoder_layer(d, heads, ffn, eps) }
    } else {
        x = x -> encoder: repeat layers shared { encoder_layer(d, heads, ffn, eps) }
    }
    pooled = x -> Select(dim = 1, index = 0) -> cls_dense: Linear(d, d) -> Tanh
    return x, pooled
}
'''


def gpt2_lm(o):
    return transformers.GPT2LMHeadModel(_gpt2_config(o))


def gpt2_model(o):
    return transformers.GPT2Model(_gpt2_config(o))


def _gpt2_config(o):
    return transformers.GPT2Config(vocab_size=o["vocab"], n_positions=o["ctx"], n_embd=o["d"], n_layer=o["layers"],
                                   n_head=o["heads"])


def bert_without_pooler(o):
    return transformers.BertModel(bert(o).config, add_pooling_layer=False)


def albert(o):
    return transformers.AlbertModel(transformers.AlbertConfig(
        vocab_size=o["vocab"], max_position_embeddings=o["ctx"], embedding_size=o["emb"], hidden_size=o["d"],
        num_hidden_layers=o["layers"], num_attention_heads=o["heads"], intermediate_size=o["ffn"],
        type_vocab_size=o["types"]))


LLAMA_SIZES = dict(vocab=90, ctx=16, d=64, layers=2, heads=4, kv_heads=2, ffn=100, eps=1e-5, rope_theta=10000.0)
QWEN2_SIZES = dict(vocab=93, ctx=16, d=56, layers=2, heads=7, kv_heads=1, ffn=90, eps=1e-6, rope_theta=1e6)
BERT_SIZES = dict(vocab=100, ctx=16, d=48, layers=2, heads=4, ffn=70, types=2)

# (spec text, its overrides, the Hugging Face model, what it returns to compare, family, model_type)
CASES = [
    ("gpt2", GPT2, {}, dict(vocab=97, ctx=16, d=48, layers=2, heads=4), gpt2_lm, "logits", "gpt2"),
    ("gpt2-model", GPT2, {"headless": True}, dict(vocab=97, ctx=16, d=48, layers=2, heads=4), gpt2_model,
     "last_hidden_state", "gpt2"),
    ("llama", LLAMA, {}, LLAMA_SIZES, llama, "logits", "llama"),
    ("qwen2", LLAMA, {**QWEN2_SIZES, "qkv_bias": True, "tied": True}, QWEN2_SIZES, qwen2, "logits", "llama"),
    ("gpt-neox", NEOX, {}, dict(vocab=95, ctx=16, d=64, layers=2, heads=4, ffn=100, rotary_dims=4,
                                rope_theta=10000.0), neox, "logits", "gpt-neox"),
    ("phi", PHI, {}, dict(vocab=89, ctx=16, d=40, layers=2, heads=4, ffn=77, rotary_dims=4, rope_theta=10000.0),
     phi, "logits", "phi"),
    ("opt", OPT, {}, dict(vocab=87, ctx=16, d=48, layers=2, heads=4, ffn=70), opt, "logits", "opt"),
    ("bert", BERT, {}, BERT_SIZES, bert, ("last_hidden_state", "pooler_output"), "bert"),
    ("bert-no-pooler", BERT, {"no_pooler": True}, BERT_SIZES, bert_without_pooler, "last_hidden_state", "bert"),
    ("albert", ALBERT, {}, dict(vocab=80, ctx=16, emb=16, d=48, layers=3, heads=4, ffn=64, types=2), albert,
     ("last_hidden_state", "pooler_output"), "albert"),
]


def compiled(text, overrides=None):
    return specdsl.loads(text, name="renamed.spec", overrides=overrides or {})


def module_of(text, overrides=None):
    return specdsl.to_torch(compiled(text, overrides)).eval()


def perturbed_folder(build, sizes, folder):
    torch.manual_seed(0)
    reference = build(sizes).eval()
    perturb(reference)
    save(reference, folder)
    assert (folder / "model.safetensors.index.json").exists() and len(shards(folder)) >= 2
    return reference


@pytest.mark.parametrize("text,overrides,sizes,build,outputs,family", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_renamed_spec_loads_a_sharded_folder_equal_to_hf(tmp_path, text, overrides, sizes, build, outputs, family):
    reference = perturbed_folder(build, sizes, tmp_path)
    module = module_of(text, overrides)
    names = [n for n, _ in module.named_parameters()]
    family_table = next(f for f in H.FAMILIES if f.name == family)
    assert not [n for n in names if H.rule_for(family_table, n)]  # every label renamed: labels alone find nothing
    report = specdsl.load_weights(module, tmp_path)  # config.json says which family
    assert report["family"] == family and report["loaded"] == len(names) and report["unexpected"] == []
    tokens = torch.randint(0, sizes["vocab"], (2, 11))
    with torch.no_grad():
        ours, theirs = module(tokens), reference(tokens)
    ours = ours if isinstance(ours, tuple) else (ours,)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    for mine, field in zip(ours, outputs, strict=True):
        assert (mine - getattr(theirs, field)).abs().max() <= TOL


def test_renamed_names_are_the_reference_names():
    """Layer by layer, repeat index by repeat index, local name by local name (a labelled block call inside the
    repeat only prefixes)."""
    names = hf_structure.reference_names(hf_structure.structure(compiled(OPT).model), H.REFERENCES["opt"])
    assert names["tok.weight"] == "embed.weight" and names["learned_pos.weight"] == "pos.weight"
    assert names["blocks.1.layer.attn_core.qkv.bias"] == "layers.1.attn.qkv.bias"
    assert names["blocks.0.layer.mlp_ln.weight"] == "layers.0.ln_2.weight"
    assert names["head.weight"] == "lm_head.weight"  # tied: the layer is there, its weight is tok's


def test_the_zoo_keeps_its_names():
    """Every reference maps to itself, and so does every zoo spec of a family: the zoo's labels work as before."""
    for family in H.FAMILIES:
        assert family.name in H.REFERENCES, f"family {family.name} has no reference spec in hf_naming.REFERENCES"
        for variant in hf_structure.variants(H.REFERENCES[family.name]):
            names = hf_structure.reference_names(variant.items, H.REFERENCES[family.name])
            assert names and all(ours == theirs for ours, theirs in names.items())
    for spec, family in [("gpt3.spec", "gpt2"), ("nanogpt-shakespeare.spec", "gpt2"), ("mistral.spec", "llama"),
                         ("gemma.spec", "llama"), ("qwen2.spec", "llama")]:
        ours = hf_structure.structure(specdsl.load(SPECS / spec).model)
        names = hf_structure.reference_names(ours, H.REFERENCES[family])
        assert all(a == b for a, b in names.items()), spec


def test_state_dict_guess_finds_the_family_of_a_renamed_spec():
    """family="hf" without a config: the family whose names explain every parameter, matched by structure; when
    no family's structure fits, the one that came closest says where."""
    torch.manual_seed(0)
    state = llama(LLAMA_SIZES).state_dict()
    assert specdsl.load_weights(module_of(LLAMA), state, family="hf")["family"] == "llama"
    with pytest.raises(StructureError, match=r"family llama .* after blocks\.\{i\}\.ffn_norm, the family expects "
                                             r"Attention"):
        specdsl.load_weights(module_of(LLAMA, {"swap": True}), state, family="hf")


def refused(tmp_path, text, overrides, build=llama, sizes=LLAMA_SIZES):
    perturbed_folder(build, sizes, tmp_path)
    module = module_of(text, overrides)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    with pytest.raises(StructureError) as e:
        specdsl.load_weights(module, tmp_path)
    assert all(torch.equal(before[n], p) for n, p in module.named_parameters())  # nothing copied
    return str(e.value)


def test_layers_reordered_are_refused_at_the_spot(tmp_path):
    text = refused(tmp_path, LLAMA, {"swap": True})
    assert "structure of family llama (specs/llama.spec)" in text
    assert ("blocks.{i}.feed_forward.gate.weight (GatedMLP blocks.{i}.feed_forward, renamed.spec:" in text
            and "has no counterpart: after blocks.{i}.ffn_norm, the family expects Attention (its layers.{i}.attn)"
            in text)
    assert "the family's layers.{i}: ln_1: RMSNorm, attn: Attention, ln_2: RMSNorm, mlp: GatedMLP" in text
    assert ("the spec's blocks.{i}: ffn_norm: RMSNorm, feed_forward: GatedMLP, attn_norm: RMSNorm, "
            "self_attn: Attention") in text


def test_a_missing_layer_is_refused_at_the_spot(tmp_path):
    text = refused(tmp_path, LLAMA, {"no_ffn_norm": True})
    assert ("blocks.{i}.feed_forward.gate.weight (GatedMLP blocks.{i}.feed_forward, renamed.spec:" in text
            and "after blocks.{i}.self_attn, the family expects RMSNorm (its layers.{i}.ln_2) first; the spec lacks "
            "that layer" in text)


def test_a_missing_final_norm_is_refused_at_the_top_level(tmp_path):
    text = refused(tmp_path, LLAMA, {"no_final_norm": True})
    assert "head.weight (Linear head, renamed.spec:" in text
    assert "after blocks, the family expects RMSNorm (its norm) first; the spec lacks that layer" in text
    assert "the family's top level: embed: Embedding, layers: repeat {...}, norm: RMSNorm, lm_head: Linear (optional)" \
        in text


def test_an_extra_layer_is_refused_at_the_spot(tmp_path):
    extra = GPT2.replace("-> pre_mlp: LayerNorm(width)", "-> pre_mlp: LayerNorm(width) -> extra: Linear(width, width)")
    text = refused(tmp_path, extra, {}, gpt2_lm, dict(vocab=97, ctx=16, d=48, layers=2, heads=4))
    assert ("blocks.{i}.extra.weight (Linear blocks.{i}.extra, renamed.spec:" in text
            and "has no counterpart: after blocks.{i}.pre_mlp, the family expects MLP (its h.{i}.mlp); the spec has "
            "an extra layer there" in text)


def test_a_block_ending_early_is_refused_at_its_end(tmp_path):
    short = GPT2.replace("h = h + (h -> pre_mlp:", "h = h # (h -> pre_mlp:")
    text = refused(tmp_path, short, {}, gpt2_lm, dict(vocab=97, ctx=16, d=48, layers=2, heads=4))
    assert ("after blocks.{i}.self_attention.out.bias (Attention blocks.{i}.self_attention, renamed.spec:" in text
            and "the last of blocks.{i}, the family expects LayerNorm (its h.{i}.ln_2): the spec lacks that layer"
            in text)


def test_a_repeat_not_shared_as_the_familys_is_refused(tmp_path):
    sizes = dict(vocab=80, ctx=16, emb=16, d=48, layers=3, heads=4, ffn=64, types=2)
    text = refused(tmp_path, ALBERT, {"unshared": True}, albert, sizes)
    assert "encoder.{i}.mhsa.qkv.weight" in text and "the family expects a shared repeat (its layer)" in text


def test_bert_variants_name_the_closest(tmp_path):
    """BERT has two references (the pooler, the MLM head): a spec that follows neither is told about the one it
    came closest to."""
    swapped = BERT.replace("-> Select(dim = 1, index = 0) -> cls_dense: Linear(d, d) -> Tanh",
                           "-> Select(dim = 1, index = 0) -> cls_dense: Linear(d, d) -> Tanh "
                           "-> again: LayerNorm(d, eps = eps)")
    text = refused(tmp_path, swapped, {}, bert, BERT_SIZES)
    assert "(specs/bert.spec --preset mlm, closer than specs/bert.spec)" in text  # cls_dense is its transform
    assert ("after again.bias (LayerNorm again, renamed.spec:" in text
            and "the last of the top level, the family expects Linear (its decoder): the spec lacks that layer" in text)


def test_gemma_weights_into_a_renamed_llama_spec_are_refused(tmp_path):
    sizes = dict(vocab=50, ctx=16, d=32, layers=2, heads=4, kv_heads=2, head_dim=8, ffn=40, eps=1e-6,
                 rope_theta=10000.0)
    from test_hf_logits_parity import gemma
    perturbed_folder(gemma, sizes, tmp_path)
    overrides = {k: v for k, v in sizes.items() if k != "head_dim"}
    with pytest.raises(ArchitectureError) as e:
        specdsl.load_weights(module_of(LLAMA, {**overrides, "tied": True}), tmp_path)
    text = str(e.value)
    assert "model_type 'gemma'" in text and "unit_offset = true" in text and "blocks.0.attn_norm" in text
    assert "embeddings scaled by sqrt(d)" in text


def test_a_family_without_a_reference_reads_labels(monkeypatch, tmp_path):
    """A family with no reference spec (a new one) keeps matching by label: the zoo's spec loads, a renamed one
    is told which names have no rule."""
    reference = perturbed_folder(llama, LLAMA_SIZES, tmp_path)
    monkeypatch.delitem(H.REFERENCES, "llama")
    zoo = specdsl.to_torch(specdsl.load(SPECS / "llama.spec", overrides=LLAMA_SIZES)).eval()
    assert specdsl.load_weights(zoo, tmp_path)["family"] == "llama"
    tokens = torch.randint(0, 90, (2, 7))
    with torch.no_grad():
        assert (zoo(tokens) - reference(tokens).logits).abs().max() <= TOL
    with pytest.raises(specdsl.backends.weights.WeightsError, match=r"tok\.weight \(no llama rule\)"):
        specdsl.load_weights(module_of(LLAMA), tmp_path)


def test_an_unknown_model_type_ranks_by_structure(tmp_path):
    perturbed_folder(llama, LLAMA_SIZES, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "llama_fancy"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(specdsl.backends.weights.WeightsError) as e:
        specdsl.load_weights(module_of(LLAMA), tmp_path)
    assert "by the weights' keys: llama (0 of 17 parameters unexplained)" in str(e.value)
    assert "(structure differs)" in str(e.value)
