"""The GPT-style families with learned or ALiBi positions: GPT-2 and OPT (gpt_block), BLOOM (gpt_block with ALiBi),
GPT-1 (post_ln_block), under the names of specs/gpt2.spec, gpt1.spec and opt.spec and of the BLOOM spec of
tests/test_quirks.py, which the weight loader's families read. Defaults: transformers 5's config classes."""

from __future__ import annotations

from .config import Config
from .draft import Draft, head, literal, repeat
from .readers import activation, dropouts, inner_width, refuse_unless, sizes, tied
from .recipe import Recipe

# (hyperparameter, config names (the class's own, then its attribute_map aliases), transformers' default)
_GPT2_SIZES = (("vocab", ("vocab_size",), 50257), ("ctx", ("n_positions", "max_position_embeddings"), 1024),
               ("d", ("n_embd", "hidden_size"), 768), ("layers", ("n_layer", "num_hidden_layers"), 12),
               ("heads", ("n_head", "num_attention_heads"), 12))
_GPT1_SIZES = (("vocab", ("vocab_size",), 40478), ("ctx", ("n_positions", "max_position_embeddings"), 512),
               *_GPT2_SIZES[2:])
_OPT_SIZES = (("vocab", ("vocab_size",), 50272), ("ctx", ("max_position_embeddings",), 2048),
              ("d", ("hidden_size",), 768), ("layers", ("num_hidden_layers",), 12),
              ("heads", ("num_attention_heads",), 12), ("ffn", ("ffn_dim",), 3072))


def gpt2(c: Config, arch: str) -> Draft:
    draft = Draft("gpt2", "gpt2.spec")
    sizes(c, draft, _GPT2_SIZES)
    inner_width(c, draft)
    draft.param("eps", c.number("layer_norm_epsilon", default=1e-5))
    drop = dropouts(c, draft, ("resid_pdrop",), 0.1, attn=("attn_pdrop", 0.1), embd=("embd_pdrop", 0.1))
    refuse_unless(c, (("scale_attn_weights", True, "specc's Attention always scales q·k by 1/sqrt(head_dim)"),
                      ("scale_attn_by_inverse_layer_idx", False, "specc has no per-layer attention scale"),
                      ("add_cross_attention", False, "gpt2.spec has no encoder to attend to")))
    act = activation(c, "activation_function", default="gelu_new").value
    args = ["d", "heads", "ffn", drop["dropout"]] + [f"act = {literal(act)}"] * (act != "gelu_tanh")
    args += ["eps = eps"] + [f"attn_dropout = {drop['attn']}"] * (drop["attn"] != drop["dropout"])
    draft.body += ["input tokens: int[batch, seq <= ctx]",
                   "x = tokens -> wte: Embedding(vocab, d) -> wpe: PositionalEmbedding(ctx, d)",
                   f"           -> Dropout({drop['embd']})",
                   *repeat("h", "gpt_block", args)]
    head(draft, arch, "ln_f: LayerNorm(d, eps = eps)", "wte", tied(c, True).value)
    return draft


def openai_gpt(c: Config, arch: str) -> Draft:
    draft = Draft("gpt1", "gpt1.spec")
    sizes(c, draft, _GPT1_SIZES)
    draft.derived("ffn", "4 * d", "OpenAIGPT's MLP: 4 * n_embd")
    draft.param("eps", c.number("layer_norm_epsilon", default=1e-5))
    drop = dropouts(c, draft, ("resid_pdrop",), 0.1, embd=("embd_pdrop", 0.1))
    attn = c.probability("attn_pdrop", default=0.1).value
    if attn != c.probability("resid_pdrop", default=0.1).value:
        draft.notes.append(f"attn_pdrop = {attn!r} is not carried: post_ln_block has one dropout, "
                           "`dropout` (resid_pdrop), for the attention weights too.")
    act = activation(c, "afn", default="gelu").value
    draft.body += ["input tokens: int[batch, seq <= ctx]",
                   "x = tokens -> tokens_embed: Embedding(vocab, d) -> positions_embed: PositionalEmbedding(ctx, d)",
                   f"           -> Dropout({drop['embd']})",
                   *repeat("h", "post_ln_block", ["d", "heads", "ffn", "causal = true", f"dropout = {drop['dropout']}",
                                                  f"act = {literal(act)}", "eps = eps"])]
    head(draft, arch, "", "tokens_embed", tied(c, True).value)
    return draft


def opt(c: Config, arch: str) -> Draft:
    draft = Draft("opt", "opt.spec")
    sizes(c, draft, _OPT_SIZES)
    drop = dropouts(c, draft, ("dropout",), 0.1, attn=("attention_dropout", 0.0))
    d = c.integer("hidden_size", default=768).value
    proj = c.integer("word_embed_proj_dim", default=None, nullable=True).value
    if proj not in (None, d):
        raise c.error("word_embed_proj_dim", f"word_embed_proj_dim = {proj} is not hidden_size = {d}: the "
                      "projections between a narrower embedding and the layers (OPT-350m) are not in opt.spec")
    refuse_unless(c, (("do_layer_norm_before", True, "post-LayerNorm layers (OPT-350m) are not gpt_block's"),
                      ("_remove_final_layer_norm", False, "opt.spec ends with its final LayerNorm"),
                      ("enable_bias", True, "gpt_block's projections all have biases"),
                      ("layer_norm_elementwise_affine", True, "gpt_block's LayerNorms have weights and biases")))
    act = activation(c, "activation_function", default="relu").value
    # OPTLearnedPositionalEmbedding: position p reads row p + 2 of max_position_embeddings + 2 rows.
    draft.body += ["input tokens: int[batch, seq <= ctx]",
                   "x = tokens -> embed: Embedding(vocab, d) -> pos: PositionalEmbedding(ctx + 2, d, offset = 2)",
                   f"           -> Dropout({drop['dropout']})",
                   *repeat("layers", "gpt_block", ["d", "heads", "ffn", drop["dropout"], f"act = {literal(act)}",
                                                   f"attn_dropout = {drop['attn']}"])]
    head(draft, arch, "norm: LayerNorm(d)", "embed", tied(c, True).value)
    return draft


def bloom(c: Config, arch: str) -> Draft:
    draft = Draft("bloom", None)
    draft.param("vocab", c.integer("vocab_size", default=250880))
    # BloomConfig states no context (ALiBi needs no position table); 2048 tokens is BLOOM's training sequence
    # length (BigScience 2022, "BLOOM: A 176B-Parameter Open-Access Multilingual Language Model").
    draft.param("ctx", 2048, "config.json states none: BLOOM's training length")
    draft.param("d", c.integer("n_embed", "hidden_size", default=64))  # BloomConfig: n_embed, when given, wins
    draft.param("layers", c.integer("n_layer", "num_hidden_layers", default=2))
    draft.param("heads", c.integer("n_head", "num_attention_heads", default=8))
    draft.derived("ffn", "4 * d", "BloomMLP: 4 * hidden_size")
    draft.param("eps", c.number("layer_norm_epsilon", default=1e-5))
    drop = dropouts(c, draft, ("hidden_dropout",), 0.0, attn=("attention_dropout", 0.0))
    refuse_unless(c, (("apply_residual_connection_post_layernorm", False,
                       "gpt_block adds each branch to its input, not to the normalised input"),))
    args = ["d", "heads", "ffn", drop["dropout"], "eps = eps", "alibi = true"]
    args += [f"attn_dropout = {drop['attn']}"] * (drop["attn"] != drop["dropout"])
    draft.body += ["input tokens: int[batch, seq <= ctx]",
                   "x = tokens -> wte: Embedding(vocab, d) -> ln_emb: LayerNorm(d, eps = eps)",
                   *repeat("h", "gpt_block", args)]
    head(draft, arch, "ln_f: LayerNorm(d, eps = eps)", "wte", tied(c, True).value)
    return draft


RECIPES = (
    Recipe("gpt2", "GPT-2", ("GPT2LMHeadModel", "GPT2Model"), gpt2),
    Recipe("openai-gpt", "GPT-1", ("OpenAIGPTLMHeadModel", "OpenAIGPTModel"), openai_gpt),
    Recipe("opt", "OPT", ("OPTForCausalLM", "OPTModel"), opt),
    Recipe("bloom", "BLOOM", ("BloomForCausalLM", "BloomModel"), bloom),
)
