"""The LLaMA-like families: LLaMA, Mistral, Qwen2, Qwen3, Gemma (llama_block), Mixtral (moe_block) and OLMo 2
(olmo2_block), under the
names of specs/llama.spec (embed, layers, norm, lm_head), which the weight loader's LLaMA and Mixtral families read.

Each model_type's defaults are its transformers 5 config class's (configuration_<model>.py): what a config.json
that leaves a field out means. What each family's layers hard-code (Qwen2's q/k/v biases, Gemma's 1 + w norms and
sqrt(d) embedding scale, Qwen3's q/k norms) is in its recipe, as in the zoo spec of that family.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config, Value
from .draft import Draft, call, head, literal
from .readers import activation, partial_rotary, rope, tied
from .recipe import Recipe


@dataclass(frozen=True)
class Defaults:
    """A config class's defaults for the fields the recipe reads (None: transformers derives it)."""
    vocab: int
    d: int
    ffn: int
    heads: int
    kv_heads: int | None
    head_dim: int | None
    ctx: int
    eps: float
    tied: bool
    act: str = "silu"
    theta: float = 10000.0
    layers: int = 32


LLAMA = Defaults(vocab=32000, d=4096, ffn=11008, heads=32, kv_heads=None, head_dim=None, ctx=2048, eps=1e-6,
                 tied=False)
MISTRAL = Defaults(vocab=32000, d=4096, ffn=14336, heads=32, kv_heads=8, head_dim=None, ctx=131072, eps=1e-6,
                   tied=False)
QWEN2 = Defaults(vocab=151936, d=4096, ffn=22016, heads=32, kv_heads=32, head_dim=None, ctx=32768, eps=1e-6,
                 tied=False)
QWEN3 = Defaults(vocab=151936, d=4096, ffn=22016, heads=32, kv_heads=32, head_dim=128, ctx=32768, eps=1e-6,
                 tied=False)
GEMMA = Defaults(vocab=256000, d=3072, ffn=24576, heads=16, kv_heads=16, head_dim=256, ctx=8192, eps=1e-6,
                 tied=True, act="gelu_pytorch_tanh", layers=28)
MIXTRAL = Defaults(vocab=32000, d=4096, ffn=14336, heads=32, kv_heads=8, head_dim=None, ctx=131072, eps=1e-5,
                   tied=False, theta=1e6)
OLMO2 = Defaults(vocab=50304, d=4096, ffn=11008, heads=32, kv_heads=None, head_dim=None, ctx=2048, eps=1e-5,
                 tied=False)


def _sizes(c: Config, draft: Draft, dflt: Defaults) -> dict:
    """vocab, ctx, d, layers, heads, kv_heads, head_dim (declared only when not d // heads) and ffn."""
    draft.param("vocab", c.integer("vocab_size", default=dflt.vocab))
    draft.param("ctx", c.integer("max_position_embeddings", default=dflt.ctx))
    d = c.integer("hidden_size", default=dflt.d)
    draft.param("d", d)
    layers = c.integer("num_hidden_layers", default=dflt.layers)
    draft.param("layers", layers)
    heads = c.integer("num_attention_heads", default=dflt.heads)
    draft.param("heads", heads)
    kv = c.integer("num_key_value_heads", default=dflt.kv_heads, nullable=True)
    if kv.value is None:  # transformers: None means one key/value head per query head
        kv = Value(heads.value, f"{kv.source}: num_attention_heads")
    if heads.value % kv.value:
        raise c.error("num_key_value_heads", f"num_key_value_heads = {kv.value} does not divide "
                      f"num_attention_heads = {heads.value}")
    draft.param("kv_heads", kv)
    head_dim = c.integer("head_dim", default=dflt.head_dim, nullable=True)
    if head_dim.value is None and d.value % heads.value:
        raise c.error("num_attention_heads", f"hidden_size = {d.value} is not divisible by num_attention_heads = "
                      f"{heads.value}, and head_dim does not say the width of a head")
    if head_dim.value is not None and head_dim.value != d.value // heads.value:
        draft.param("head_dim", head_dim)
    draft.param("ffn", c.integer("intermediate_size", default=dflt.ffn))
    return {"layers": layers.value, "head_dim": head_dim.value}


def _rotary(c: Config, draft: Draft, dflt: Defaults) -> None:
    theta, params, field = rope(c, dflt.theta)
    factor = partial_rotary(c, params, field, ("partial_rotary_factor",), default=1.0)
    if factor.value != 1.0:
        raise c.error(c.first((f"{field}.partial_rotary_factor", "partial_rotary_factor"))[0],
                      f"partial_rotary_factor = {factor.value!r} cannot be imported for this model_type: "
                      "its layers rotate every dim of a head")
    draft.param("rope_theta", theta)
    draft.param("eps", c.number("rms_norm_eps", default=dflt.eps))


def _no_extra_biases(c: Config, fields: tuple[str, ...]) -> None:
    """LLaMA's attention_bias biases q, k, v and o; mlp_bias the gated MLP: the weight loader names neither
    o_proj.bias nor the MLP's biases (specdsl/backends/hf_naming.py), so a spec with them could not be loaded."""
    for name in fields:
        c.require(name, c.flag(name, default=False), False,
                  "specc's weight loader has no names for these biases of this family (o_proj.bias, the MLP's)")


def _qwen_window(c: Config, layers: int) -> int:
    """Qwen2's and Qwen3's sliding window (configuration_qwen2.py): only with use_sliding_window, only on the
    layers `layer_types` marks "sliding_attention" (by default those from max_window_layers on). specc has one
    window for every layer, and the weight loader checks the window as `sliding_window if use_sliding_window`."""
    use = c.flag("use_sliding_window", default=False).value
    size = c.integer("sliding_window", default=4096, nullable=True).value
    if not use or size is None:
        return 0
    types = c.get("layer_types")
    if isinstance(types, list):
        sliding = [t == "sliding_attention" for t in types]
        where = "layer_types"
    else:
        first = c.integer("max_window_layers", default=28, minimum=0).value
        sliding = [i >= first for i in range(layers)]
        where = "max_window_layers"
    if not all(sliding):
        raise c.error(where, f"with use_sliding_window, {where} gives the sliding window to "
                      f"{sum(sliding)} of {len(sliding)} layers: specc's spec gives one window to every layer",
                      hint="a spec with the window on every layer, or on none, would compute another model")
    return size


def _window(c: Config, draft: Draft, model_type: str, layers: int) -> None:
    if model_type in ("qwen2", "qwen3"):
        window = Value(_qwen_window(c, layers), "sliding_window, use_sliding_window")
    elif model_type in ("mistral", "mixtral"):
        read = c.integer("sliding_window", default=4096 if model_type == "mistral" else None, nullable=True)
        window = Value(read.value or 0, read.source)
    else:
        return
    if window.value:
        draft.param("window", window)


def _experts(c: Config, draft: Draft) -> None:
    experts = c.integer("num_local_experts", "num_experts", default=8)
    top_k = c.integer("num_experts_per_tok", default=2)
    if top_k.value > experts.value:
        raise c.error("num_experts_per_tok", f"num_experts_per_tok = {top_k.value} is more than the "
                      f"{experts.value} experts")
    draft.param("experts", experts)
    draft.param("top_k", top_k)


def _act(c: Config, model_type: str, dflt: Defaults) -> str:
    if model_type == "gemma" and c.get("hidden_act") == "gelu":
        return "gelu_tanh"  # GemmaConfig.__post_init__ reads the legacy "gelu" as gelu_pytorch_tanh
    return activation(c, "hidden_act", default=dflt.act).value


def _block_args(draft: Draft, model_type: str, act: str) -> list[str]:
    declared = {p.name for p in draft.params}
    args = ["d", "heads", "kv_heads", "ffn"] + ["experts", "top_k"] * (model_type == "mixtral")
    args += ["rope_theta = rope_theta", "eps = eps"]
    args += [f"{name} = {name}" for name in ("window", "head_dim") if name in declared]
    args += ["bias = true"] * (model_type == "qwen2")  # Qwen2Attention: q, k, v biased, o_proj not
    args += [f"act = {literal(act)}"] * (act != "silu")
    return args + ["unit_offset = true"] * (model_type == "gemma") + ["qk_norm = true"] * (model_type == "qwen3")


def _build(c: Config, arch: str, model_type: str, zoo: str, dflt: Defaults) -> Draft:
    draft = Draft(model_type, zoo)
    sizes = _sizes(c, draft, dflt)
    _rotary(c, draft, dflt)
    if model_type in ("llama", "qwen3", "gemma"):
        _no_extra_biases(c, ("attention_bias", "mlp_bias") if model_type == "llama" else ("attention_bias",))
    if model_type == "olmo2" and "head_dim" in {p.name for p in draft.params}:
        raise c.error("head_dim", "olmo2_block's heads are d // heads wide (Olmo2Attention's q/k norms span the "
                      "whole projection)")
    if model_type == "mixtral":
        _experts(c, draft)
    _window(c, draft, model_type, sizes["layers"])
    gemma = model_type == "gemma"
    if model_type == "olmo2":  # norms after attention and the MLP, q/k norms over the whole projection
        if _act(c, model_type, dflt) != "silu":
            raise c.error("hidden_act", "olmo2_block's MLP is SwiGLU (silu)")
        bias = c.flag("attention_bias", default=False).value
        block = call("olmo2_block", ["d", "heads", "kv_heads", "ffn", "rope_theta = rope_theta", "eps = eps"]
                     + ["bias = true"] * bias, indent=8)
    else:
        block = call("moe_block" if model_type == "mixtral" else "llama_block",
                     _block_args(draft, model_type, _act(c, model_type, dflt)), indent=8)
    draft.body += ["input tokens: int[batch, seq <= ctx]",
                   "x = tokens -> embed: Embedding(vocab, d)" + " -> Scale(sqrt(d))" * gemma,
                   "x = x -> layers: repeat layers {", *("    " + line for line in block), "}"]
    head(draft, arch, "norm: RMSNorm(d, eps = eps" + ", unit_offset = true" * gemma + ")", "embed",
         tied(c, dflt.tied).value)
    return draft


def _recipe(model_type: str, title: str, prefix: str, zoo: str, dflt: Defaults) -> Recipe:
    def build(c: Config, arch: str) -> Draft:
        return _build(c, arch, model_type, zoo, dflt)
    return Recipe(model_type, title, (f"{prefix}ForCausalLM", f"{prefix}Model"), build)


RECIPES = (
    _recipe("llama", "LLaMA", "Llama", "llama.spec", LLAMA),
    _recipe("mistral", "Mistral", "Mistral", "mistral.spec", MISTRAL),
    _recipe("qwen2", "Qwen2", "Qwen2", "qwen2.spec", QWEN2),
    _recipe("qwen3", "Qwen3", "Qwen3", "llama.spec", QWEN3),  # the zoo has no Qwen3: LLaMA's names, qk_norm
    _recipe("gemma", "Gemma", "Gemma", "gemma.spec", GEMMA),
    _recipe("mixtral", "Mixtral", "Mixtral", "mixtral.spec", MIXTRAL),
    _recipe("olmo2", "OLMo 2", "Olmo2", "olmo2.spec", OLMO2),
)
