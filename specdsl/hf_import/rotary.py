"""The families whose attention and MLP run side by side, with rotary positions on part of each head: Phi
(parallel_block), GPT-J (parallel_block, interleaved pairs) and GPT-NeoX/Pythia (neox_block), under the names of
specs/phi.spec, the GPT-J spec of tests/test_quirks.py and specs/gpt-neox.spec. Defaults: transformers 5's config
classes (PhiConfig's partial_rotary_factor 0.5 and GPTNeoXConfig's rotary_pct 0.25 in their __post_init__ and
convert_rope_params_to_dict)."""

from __future__ import annotations

from .config import Config, Value
from .draft import Draft, head, literal, repeat
from .readers import activation, dropouts, inner_width, partial_rotary, refuse_unless, rope, sizes, tied
from .recipe import Recipe

_PHI_SIZES = (("vocab", ("vocab_size",), 51200), ("ctx", ("max_position_embeddings",), 2048),
              ("d", ("hidden_size",), 2048), ("layers", ("num_hidden_layers",), 24),
              ("heads", ("num_attention_heads",), 32), ("ffn", ("intermediate_size",), 8192))
_NEOX_SIZES = (("vocab", ("vocab_size",), 50432), ("ctx", ("max_position_embeddings",), 2048),
               ("d", ("hidden_size",), 6144), ("layers", ("num_hidden_layers",), 44),
               ("heads", ("num_attention_heads",), 64), ("ffn", ("intermediate_size",), 24576))
_GPTJ_SIZES = (("vocab", ("vocab_size",), 50400), ("ctx", ("n_positions", "max_position_embeddings"), 2048),
               ("d", ("n_embd", "hidden_size"), 4096), ("layers", ("n_layer", "num_hidden_layers"), 28),
               ("heads", ("n_head", "num_attention_heads"), 16))


def head_width(c: Config, values: dict) -> int:
    """d // heads, refusing a width the heads do not divide (these families' blocks assert it), and a head_dim
    field that says otherwise (PhiAttention reads one; GPT-NeoX's rotary frequencies do)."""
    if values["d"] % values["heads"]:
        raise c.error(c.first(("num_attention_heads", "n_head"))[0],
                      f"the width {values['d']} is not divisible by {values['heads']} attention heads")
    width = values["d"] // values["heads"]
    stated = c.integer("head_dim", default=None, nullable=True).value
    if stated not in (None, width):
        raise c.error("head_dim", f"head_dim = {stated} cannot be imported: this family's block has heads of "
                      f"width d // heads = {width}")
    return width


def rotary_width(c: Config, draft: Draft, factor: Value, head_dim: int) -> None:
    """rotary_dims = int(head_dim * factor), as transformers computes it (modeling_phi.py, modeling_gpt_neox.py);
    specc rotates pairs, so the width must be even."""
    dims = int(head_dim * factor.value)
    if dims < 2 or dims % 2:
        raise c.error(c.first(("rope_parameters.partial_rotary_factor", "partial_rotary_factor", "rotary_pct"))[0],
                      f"{factor.value!r} of a head's {head_dim} dims is {dims} rotating dims: specc rotates "
                      "an even number, at least 2")
    draft.param("rotary_dims", dims, f"{factor.source}: {factor.value!r} of {head_dim} dims per head")


def phi(c: Config, arch: str) -> Draft:
    draft = Draft("phi", "phi.spec")
    values = sizes(c, draft, _PHI_SIZES)
    hd = head_width(c, values)
    kv = c.integer("num_key_value_heads", default=None, nullable=True).value
    if kv not in (None, values["heads"]):
        raise c.error("num_key_value_heads", f"num_key_value_heads = {kv} cannot be imported: parallel_block's "
                      "attention has as many key/value heads as query heads")
    theta, params, field = rope(c, 10000.0)
    rotary_width(c, draft, partial_rotary(c, params, field, ("partial_rotary_factor",), default=0.5), hd)
    draft.param("rope_theta", theta)
    draft.param("eps", c.number("layer_norm_eps", default=1e-5))
    drop = dropouts(c, draft, ("resid_pdrop",), 0.0, embd=("embd_pdrop", 0.0))
    refuse_unless(c, (("qk_layernorm", False, "specc's Attention has no LayerNorm on q and k"),))
    act = activation(c, "hidden_act", default="gelu_new").value
    args = ["d", "heads", "ffn", "rotary_dims = rotary_dims", "rope_theta = rope_theta"]
    args += [f"act = {literal(act)}", "eps = eps", f"dropout = {drop['dropout']}"]
    draft.body += ["input tokens: int[batch, seq <= ctx]",
                   f"x = tokens -> embed: Embedding(vocab, d) -> Dropout({drop['embd']})",
                   *repeat("layers", "parallel_block", args)]
    head(draft, arch, "norm: LayerNorm(d, eps = eps)", "embed", tied(c, False).value, bias=True)
    return draft


def gpt_neox(c: Config, arch: str) -> Draft:
    draft = Draft("gpt_neox", "gpt-neox.spec")
    hd = head_width(c, sizes(c, draft, _NEOX_SIZES))
    theta, params, field = rope(c, 10000.0, theta_names=("rotary_emb_base",))
    rotary_width(c, draft, partial_rotary(c, params, field, ("rotary_pct",), default=0.25), hd)
    draft.param("rope_theta", theta)
    draft.param("eps", c.number("layer_norm_eps", default=1e-5))
    drop = dropouts(c, draft, ("hidden_dropout",), 0.0)
    refuse_unless(c, (("use_parallel_residual", True, "neox_block adds attention and MLP side by side"),
                      ("attention_bias", True, "neox_block's bias switch would drop the MLP's biases too, "
                                               "which GPTNeoXMLP keeps")))
    act = activation(c, "hidden_act", default="gelu").value
    args = ["d", "heads", "ffn", "rotary_dims = rotary_dims", "rope_theta = rope_theta", "eps = eps"]
    args += [f"act = {literal(act)}"] * (act != "gelu") + [f"dropout = {drop['dropout']}"]
    draft.body += ["input tokens: int[batch, seq <= ctx]",
                   f"x = tokens -> embed: Embedding(vocab, d) -> Dropout({drop['dropout']})",
                   *repeat("layers", "neox_block", args)]
    head(draft, arch, "norm: LayerNorm(d, eps = eps)", "embed", tied(c, False).value)
    return draft


def gptj(c: Config, arch: str) -> Draft:
    draft = Draft("gptj", None)
    hd = head_width(c, sizes(c, draft, _GPTJ_SIZES))
    inner_width(c, draft)
    rotary = c.integer("rotary_dim", default=64, nullable=True)
    if rotary.value is None or rotary.value > hd or rotary.value % 2:
        raise c.error("rotary_dim", f"rotary_dim = {rotary.value} cannot be imported: specc rotates an even "
                      f"number of a head's {hd} dims (GPT-J's null, the whole width, builds its sinusoids over "
                      "n_embd, not a head)")
    draft.param("rotary_dims", rotary)
    draft.param("eps", c.number("layer_norm_epsilon", default=1e-5))
    drop = dropouts(c, draft, ("resid_pdrop",), 0.0, embd=("embd_pdrop", 0.0))
    if c.probability("attn_pdrop", default=0.0).value:
        draft.notes.append("attn_pdrop is not carried: parallel_block has no dropout on attention weights.")
    act = activation(c, "activation_function", default="gelu_new").value
    # GPTJAttention: no q/k/v or output biases; rotary pairs interleaved (rotate_every_two), base 10000.
    args = ["d", "heads", "ffn", "rotary_dims = rotary_dims", 'rope_layout = "interleaved"', "bias = false"]
    args += [f"act = {literal(act)}"] * (act != "gelu_tanh") + ["eps = eps", f"dropout = {drop['dropout']}"]
    draft.body += ["input tokens: int[batch, seq <= ctx]",
                   f"x = tokens -> wte: Embedding(vocab, d) -> Dropout({drop['embd']})",
                   *repeat("h", "parallel_block", args)]
    head(draft, arch, "ln_f: LayerNorm(d, eps = eps)", "wte", tied(c, False).value, bias=True)
    return draft


RECIPES = (
    Recipe("phi", "Phi", ("PhiForCausalLM", "PhiModel"), phi),
    Recipe("gpt_neox", "GPT-NeoX", ("GPTNeoXForCausalLM", "GPTNeoXModel"), gpt_neox),
    Recipe("gptj", "GPT-J", ("GPTJForCausalLM", "GPTJModel"), gptj),
)
