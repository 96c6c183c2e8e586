"""Hugging Face transformers state dicts -> specc parameter names, as declared data per family.

Each family maps a specc parameter path (with `{i}` for a layer index) to its source in a transformers state dict:
a key, or a small recipe over keys (transpose, concatenate, take a chunk, stack per-expert tensors). Sources are
tried under each of the family's prefixes (GPT2LMHeadModel's "transformer." or GPT2Model's none); a source that
starts with "^" is absolute (an LM head). Where a family has several layouts (Mixtral's fused experts in memory,
per-expert w1/w2/w3 as `save_pretrained` writes them), `First` takes the first whose keys exist.

The paths are the labels of the family's reference spec (REFERENCES: its zoo spec, or a spec text); a spec with
other labels is matched to it by structure (hf_structure.py), so each table is written once, in one spec's names.

A family also names the Hugging Face `model_type`s (config.json) whose checkpoints it reads: Gemma's and Qwen2's
names are LLaMA's (their quirks, GemmaRMSNorm's 1 + w and Qwen2's q/k/v biases, live in the spec, not in the names),
so one table serves them.

Names alone cannot tell those model_types apart, so each family also declares, per model_type, the architecture facts
a checkpoint's config.json states that the compiled spec must declare the same (`Check`): Gemma's RMSNorm scales by
(1 + w) and its embeddings by sqrt(d), LLaMA's do neither; heads, rotary width and base, ALiBi, activation, norm
epsilon... load_weights refuses a checkpoint whose config disagrees with the spec, naming each difference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class T:
    """Transpose a 2-D source: GPT-1/GPT-2 store Conv1D weights as [in, out]."""
    key: str


@dataclass(frozen=True)
class Cat:
    """Concatenate sources along dim 0 (q, k, v -> qkv)."""
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Chunk:
    """Part `index` of `parts` equal chunks along `dim` (Mixtral's gate_up_proj [E, 2I, d] -> gate, up)."""
    key: str
    index: int
    parts: int
    dim: int


@dataclass(frozen=True)
class Stack:
    """Stack per-expert sources ({e} = 0, 1, ...) along a new dim 0."""
    key: str


@dataclass(frozen=True)
class PerHead:
    """A fused projection stored head by head, rows [groups, parts, head_dim] (GPT-NeoX's and BLOOM's
    query_key_value: q, k, v of head 0, then of head 1, ...), regrouped as specc's [parts, groups, head_dim] (every
    q row, then every k, then every v). head_dim is the one the parameter's layer caches per head (its kind's
    cache_shape), so the recipe needs no hyperparameter."""
    key: str
    parts: int = 3


@dataclass(frozen=True)
class First:
    """The first alternative whose source keys all exist."""
    options: tuple


SKIP = object()  # what an expectation returns when the config does not state the fact: nothing to check


def cfg(*names: str, default=SKIP, convert: Callable | None = None) -> Callable[[dict], object]:
    """The first of config.json's `names` (a dotted name reads a nested dict: "rope_parameters.rope_theta") that is
    present and not null, converted; `default` when none is."""
    def expect(config: dict):
        for name in names:
            value = config
            for part in name.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                return convert(value) if convert else value
        return default
    expect.fields = names
    return expect


def const(value) -> Callable[[dict], object]:
    """A fact the model_type implies whatever its config says (GemmaRMSNorm's 1 + w)."""
    def expect(config: dict):
        return value
    expect.fields = ()
    return expect


# Hugging Face activation names (ACT2FN) -> specc's `act` values; one specc lacks maps to a value no spec declares.
HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu", "tanh": "tanh"}


def _act(name: str) -> str:
    return HF_ACTIVATIONS.get(name, f"{name} (not a specc activation)")


@dataclass(frozen=True)
class Check:
    """One architecture fact: what the checkpoint's config states (`expect(config)`, SKIP when it states nothing)
    must equal `arg` of every layer of the spec whose kind is in `kinds` (floats within a relative `tol`). `arg`
    None compares whether the spec has such a layer at all (True/False). A spec with no such layer is not checked
    against an `arg` (a fact of a layer it lacks is no difference; the names report a missing layer). `fix` says
    what to change ({value}: the checkpoint's value)."""
    what: str
    kinds: tuple[str, ...]
    arg: str | None
    expect: Callable[[dict], object]
    fix: str
    tol: float = 0.0


@dataclass(frozen=True)
class Family:
    name: str
    prefixes: tuple[str, ...]
    rules: dict
    model_types: tuple[str, ...] = ()  # the config.json `model_type`s whose checkpoints these names read
    checks: dict = field(default_factory=dict)  # model_type -> its Checks (CHECKS below)


@dataclass(frozen=True)
class Reference:
    """The spec a family's rule names are the labels of (REFERENCES below): `spec`, a zoo file (one variant per
    preset of `presets`), or `text`, a spec of its own. load_weights matches any spec's parameters to it by
    structure (hf_structure.py), so a spec's labels are free. `optional`: its layers a checkpoint's model may lack
    (GPT2Model has no head, BertModel(add_pooling_layer=False) no pooler)."""
    spec: str = ""
    text: str = ""
    presets: tuple = (None,)
    optional: tuple[str, ...] = ()


def _attn_qkv(p: str, w: str) -> Cat:
    return Cat(tuple(f"{p}.{n}.{w}" for n in ("q_proj", "k_proj", "v_proj")))


GPT2 = Family("gpt2", ("transformer.", ""), model_types=("gpt2",), rules={
    "wte.weight": "wte.weight",
    "wpe.weight": "wpe.weight",
    "h.{i}.ln_1.weight": "h.{i}.ln_1.weight",
    "h.{i}.ln_1.bias": "h.{i}.ln_1.bias",
    "h.{i}.attn.qkv.weight": T("h.{i}.attn.c_attn.weight"),
    "h.{i}.attn.qkv.bias": "h.{i}.attn.c_attn.bias",
    "h.{i}.attn.out.weight": T("h.{i}.attn.c_proj.weight"),
    "h.{i}.attn.out.bias": "h.{i}.attn.c_proj.bias",
    "h.{i}.ln_2.weight": "h.{i}.ln_2.weight",
    "h.{i}.ln_2.bias": "h.{i}.ln_2.bias",
    "h.{i}.mlp.fc.weight": T("h.{i}.mlp.c_fc.weight"),
    "h.{i}.mlp.fc.bias": "h.{i}.mlp.c_fc.bias",
    "h.{i}.mlp.proj.weight": T("h.{i}.mlp.c_proj.weight"),
    "h.{i}.mlp.proj.bias": "h.{i}.mlp.c_proj.bias",
    "ln_f.weight": "ln_f.weight",
    "ln_f.bias": "ln_f.bias",
    "lm_head.weight": "^lm_head.weight",
})

GPT1 = Family("openai-gpt", ("transformer.", ""), model_types=("openai-gpt",), rules={
    "tokens_embed.weight": "tokens_embed.weight",
    "positions_embed.weight": "positions_embed.weight",
    **{k: v for k, v in GPT2.rules.items() if k.startswith("h.")},
    "lm_head.weight": "^lm_head.weight",
})

_LLAMA_LAYER = {
    "layers.{i}.ln_1.weight": "layers.{i}.input_layernorm.weight",
    "layers.{i}.attn.qkv.weight": _attn_qkv("layers.{i}.self_attn", "weight"),
    "layers.{i}.attn.qkv.bias": _attn_qkv("layers.{i}.self_attn", "bias"),
    "layers.{i}.attn.out.weight": "layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.ln_2.weight": "layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.attn.q_norm.weight": "layers.{i}.self_attn.q_norm.weight",  # Qwen3 (qk_norm)
    "layers.{i}.attn.k_norm.weight": "layers.{i}.self_attn.k_norm.weight",
}

# LLaMA, Mistral, Qwen2 (q/k/v biases: qkv.bias), Qwen3 (q_norm, k_norm) and Gemma (embedding scale and 1 + w
# norms: no names of their own).
LLAMA = Family("llama", ("model.", ""), model_types=("llama", "mistral", "qwen2", "qwen3", "gemma"), rules={
    "embed.weight": "embed_tokens.weight",
    **_LLAMA_LAYER,
    "layers.{i}.mlp.gate.weight": "layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.mlp.up.weight": "layers.{i}.mlp.up_proj.weight",
    "layers.{i}.mlp.down.weight": "layers.{i}.mlp.down_proj.weight",
    "norm.weight": "norm.weight",
    "lm_head.weight": "^lm_head.weight",
})

# OLMo 2 (Olmo2ForCausalLM): LLaMA's names for the embedding, attention (q_norm and k_norm over the whole
# projection) and MLP, the output projection's bias with attention_bias, and no input norms: olmo2_block's norms
# come after each branch (post_attention_layernorm, post_feedforward_layernorm), so a pre-norm spec's ln_1 has no
# rule here.
OLMO2 = Family("olmo2", ("model.", ""), model_types=("olmo2",), rules={
    "embed.weight": "embed_tokens.weight",
    **{k: v for k, v in _LLAMA_LAYER.items() if ".ln_" not in k},
    "layers.{i}.attn.out.bias": "layers.{i}.self_attn.o_proj.bias",
    "layers.{i}.post_attn_norm.weight": "layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.mlp.gate.weight": "layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.mlp.up.weight": "layers.{i}.mlp.up_proj.weight",
    "layers.{i}.mlp.down.weight": "layers.{i}.mlp.down_proj.weight",
    "layers.{i}.post_mlp_norm.weight": "layers.{i}.post_feedforward_layernorm.weight",
    "norm.weight": "norm.weight",
    "lm_head.weight": "^lm_head.weight",
})

MIXTRAL = Family("mixtral", ("model.", ""), model_types=("mixtral",), rules={
    "embed.weight": "embed_tokens.weight",
    **_LLAMA_LAYER,
    "layers.{i}.moe.router.weight": First(("layers.{i}.mlp.gate.weight", "layers.{i}.block_sparse_moe.gate.weight")),
    "layers.{i}.moe.experts.gate": First((Chunk("layers.{i}.mlp.experts.gate_up_proj", 0, 2, 1),
                                          Stack("layers.{i}.block_sparse_moe.experts.{e}.w1.weight"))),
    "layers.{i}.moe.experts.up": First((Chunk("layers.{i}.mlp.experts.gate_up_proj", 1, 2, 1),
                                        Stack("layers.{i}.block_sparse_moe.experts.{e}.w3.weight"))),
    "layers.{i}.moe.experts.down": First(("layers.{i}.mlp.experts.down_proj",
                                          Stack("layers.{i}.block_sparse_moe.experts.{e}.w2.weight"))),
    "norm.weight": "norm.weight",
    "lm_head.weight": "^lm_head.weight",
})


def _bert_layer(ours: str, theirs: str) -> dict:
    """BERT's and ALBERT's post-LN layer under our post_ln_block names."""
    q, k, v, o, ln1, fc, proj, ln2 = theirs
    rules = {}
    for w in ("weight", "bias"):
        rules[f"{ours}.attn.qkv.{w}"] = Cat((f"{q}.{w}", f"{k}.{w}", f"{v}.{w}"))
        rules[f"{ours}.attn.out.{w}"] = f"{o}.{w}"
        rules[f"{ours}.ln_1.{w}"] = f"{ln1}.{w}"
        rules[f"{ours}.mlp.fc.{w}"] = f"{fc}.{w}"
        rules[f"{ours}.mlp.proj.{w}"] = f"{proj}.{w}"
        rules[f"{ours}.ln_2.{w}"] = f"{ln2}.{w}"
    return rules


def _embeddings() -> dict:
    return {
        "word_embeddings.weight": "embeddings.word_embeddings.weight",
        "token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
        "position_embeddings.weight": "embeddings.position_embeddings.weight",
        "ln.weight": "embeddings.LayerNorm.weight",
        "ln.bias": "embeddings.LayerNorm.bias",
    }


_B = "encoder.layer.{i}"
BERT = Family("bert", ("", "bert."), model_types=("bert",), rules={
    **_embeddings(),
    **_bert_layer("layer.{i}", (f"{_B}.attention.self.query", f"{_B}.attention.self.key",
                                f"{_B}.attention.self.value", f"{_B}.attention.output.dense",
                                f"{_B}.attention.output.LayerNorm", f"{_B}.intermediate.dense",
                                f"{_B}.output.dense", f"{_B}.output.LayerNorm")),
    "pooler.weight": "pooler.dense.weight",
    "pooler.bias": "pooler.dense.bias",
    "transform.weight": "^cls.predictions.transform.dense.weight",
    "transform.bias": "^cls.predictions.transform.dense.bias",
    "transform_ln.weight": "^cls.predictions.transform.LayerNorm.weight",
    "transform_ln.bias": "^cls.predictions.transform.LayerNorm.bias",
    "decoder.bias": "^cls.predictions.decoder.bias",
})

_A = "encoder.albert_layer_groups.0.albert_layers.0"
ALBERT = Family("albert", ("", "albert."), model_types=("albert",), rules={
    **_embeddings(),
    "embedding_hidden_mapping_in.weight": "encoder.embedding_hidden_mapping_in.weight",
    "embedding_hidden_mapping_in.bias": "encoder.embedding_hidden_mapping_in.bias",
    **_bert_layer("layer", (f"{_A}.attention.query", f"{_A}.attention.key", f"{_A}.attention.value",
                            f"{_A}.attention.dense", f"{_A}.attention.LayerNorm", f"{_A}.ffn",
                            f"{_A}.ffn_output", f"{_A}.full_layer_layer_norm")),
    "pooler.weight": "pooler.weight",
    "pooler.bias": "pooler.bias",
})

# Phi-1/1.5/2 (Hugging Face PhiForCausalLM): specs/phi.spec's names, parallel_block's `ln`.
_P = "layers.{i}"
PHI = Family("phi", ("model.", ""), model_types=("phi",), rules={
    "embed.weight": "embed_tokens.weight",
    **{f"{_P}.{ours}.{w}": f"{_P}.{theirs}.{w}" for w in ("weight", "bias") for ours, theirs in (
        ("ln", "input_layernorm"), ("attn.out", "self_attn.dense"), ("mlp.fc", "mlp.fc1"), ("mlp.proj", "mlp.fc2"))},
    **{f"{_P}.attn.qkv.{w}": _attn_qkv(f"{_P}.self_attn", w) for w in ("weight", "bias")},
    "norm.weight": "final_layernorm.weight",
    "norm.bias": "final_layernorm.bias",
    "lm_head.weight": "^lm_head.weight",
    "lm_head.bias": "^lm_head.bias",
})

# GPT-NeoX and Pythia (GPTNeoXForCausalLM): fused query_key_value stored per head; the head is `lm_head` in
# transformers 5 and `embed_out` in the published checkpoints.
GPT_NEOX = Family("gpt-neox", ("gpt_neox.", ""), model_types=("gpt_neox",), rules={
    "embed.weight": "embed_in.weight",
    **{f"{_P}.{ours}.{w}": f"{_P}.{theirs}.{w}" for w in ("weight", "bias") for ours, theirs in (
        ("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm"), ("attn.out", "attention.dense"),
        ("mlp.fc", "mlp.dense_h_to_4h"), ("mlp.proj", "mlp.dense_4h_to_h"))},
    **{f"{_P}.attn.qkv.{w}": PerHead(f"{_P}.attention.query_key_value.{w}") for w in ("weight", "bias")},
    "norm.weight": "final_layer_norm.weight",
    "norm.bias": "final_layer_norm.bias",
    "lm_head.weight": First(("^lm_head.weight", "^embed_out.weight")),
})

# OPT (OPTForCausalLM; OPTModel without "model."): specs/opt.spec's names, gpt_block's labels.
OPT = Family("opt", ("model.decoder.", "decoder."), model_types=("opt",), rules={
    "embed.weight": "embed_tokens.weight",
    "pos.weight": "embed_positions.weight",
    **{f"{_P}.{ours}.{w}": f"{_P}.{theirs}.{w}" for w in ("weight", "bias") for ours, theirs in (
        ("ln_1", "self_attn_layer_norm"), ("attn.out", "self_attn.out_proj"), ("ln_2", "final_layer_norm"),
        ("mlp.fc", "fc1"), ("mlp.proj", "fc2"))},
    **{f"{_P}.attn.qkv.{w}": _attn_qkv(f"{_P}.self_attn", w) for w in ("weight", "bias")},
    "norm.weight": "final_layer_norm.weight",
    "norm.bias": "final_layer_norm.bias",
    "lm_head.weight": "^lm_head.weight",
})

# GPT-J (GPTJForCausalLM): parallel_block's names under GPT-2's (wte, h, ln_f); no q/k/v or output biases.
GPTJ = Family("gptj", ("transformer.", ""), model_types=("gptj",), rules={
    "wte.weight": "wte.weight",
    **{f"h.{{i}}.{ours}.{w}": f"h.{{i}}.{theirs}.{w}" for w in ("weight", "bias") for ours, theirs in (
        ("ln", "ln_1"), ("mlp.fc", "mlp.fc_in"), ("mlp.proj", "mlp.fc_out"))},
    "h.{i}.attn.qkv.weight": _attn_qkv("h.{i}.attn", "weight"),
    "h.{i}.attn.out.weight": "h.{i}.attn.out_proj.weight",
    "ln_f.weight": "ln_f.weight",
    "ln_f.bias": "ln_f.bias",
    "lm_head.weight": "^lm_head.weight",
    "lm_head.bias": "^lm_head.bias",
})

# BLOOM (BloomForCausalLM): gpt_block's names under GPT-2's, an embedding LayerNorm, query_key_value per head.
BLOOM = Family("bloom", ("transformer.", ""), model_types=("bloom",), rules={
    "wte.weight": "word_embeddings.weight",
    "ln_emb.weight": "word_embeddings_layernorm.weight",
    "ln_emb.bias": "word_embeddings_layernorm.bias",
    **{f"h.{{i}}.{ours}.{w}": f"h.{{i}}.{theirs}.{w}" for w in ("weight", "bias") for ours, theirs in (
        ("ln_1", "input_layernorm"), ("attn.out", "self_attention.dense"), ("ln_2", "post_attention_layernorm"),
        ("mlp.fc", "mlp.dense_h_to_4h"), ("mlp.proj", "mlp.dense_4h_to_h"))},
    **{f"h.{{i}}.attn.qkv.{w}": PerHead(f"h.{{i}}.self_attention.query_key_value.{w}") for w in ("weight", "bias")},
    "ln_f.weight": "ln_f.weight",
    "ln_f.bias": "ln_f.bias",
    "lm_head.weight": "^lm_head.weight",
})

# -- Architecture checks per model_type: the config.json fields that must agree with the spec's layers. ----------

def _heads(field_name: str) -> Check:
    return Check("attention heads", ("Attention",), "heads", cfg(field_name),
                 "--set heads={value} (the q/k/v shapes are the same for any number of heads)")


def _eps(kind: str, *names: str) -> Check:
    return Check(f"{kind} epsilon", (kind,), "eps", cfg(*names), "--set eps={value}", tol=1e-6)


def _act_check(*names: str, default=SKIP) -> Check:
    return Check("MLP activation", ("MLP", "GatedMLP", "MoE"), "act", cfg(*names, default=default, convert=_act),
                 'act = {value} on the MLP (a block\'s `act` argument)')


_THETA = cfg("rope_parameters.rope_theta", "rope_theta", "rotary_emb_base", default=10000.0)
_NO_ALIBI = Check("ALiBi", ("Attention",), "alibi", const(False), "alibi = false on Attention")
_NO_SCALE = Check("a constant scale (Gemma's embeddings times sqrt(d))", ("Scale",), None, const(False),
                  "remove the Scale layer (the checkpoint's model does not scale)")
_ROPE_TYPE = Check("rotary scaling (rope_type)", ("Attention",), None,
                   cfg("rope_parameters.rope_type", "rope_scaling.rope_type", "rope_scaling.type", default=True,
                       convert=lambda t: True if t == "default" else f"rope_type {t!r} (specc has plain rotary only)"),
                   "no specc spec reproduces this rotary scaling: the checkpoint cannot be loaded faithfully")


def _llama_like(unit_offset: bool, qk_norm: bool = False, bias=None, scale: bool = False, window=None,
                qk_norm_scope: str = "head", act: Check | None = None, theta=_THETA) -> tuple:
    return (
        Check("RMSNorm weight offset (Gemma's RMSNorm scales by 1 + weight)", ("RMSNorm",), "unit_offset",
              const(unit_offset), "unit_offset = {value} on every RMSNorm (llama_block(..., unit_offset = {value}))"
              + (": specs/gemma.spec" if unit_offset else ": specs/llama.spec")),
        _eps("RMSNorm", "rms_norm_eps"),
        _heads("num_attention_heads"),
        Check("key/value heads", ("Attention",), "kv_heads", cfg("num_key_value_heads", "num_attention_heads"),
              "--set kv_heads={value}"),
        Check("head width", ("Attention",), "head_dim", cfg("head_dim"), "--set head_dim={value}"),
        Check("rotary positions", ("Attention",), "rope", const(True), "rope = true on Attention"),
        Check("rotary base", ("Attention",), "rope_theta", theta, "--set rope_theta={value}", tol=1e-6),
        _ROPE_TYPE,
        Check("q/k/v bias", ("Attention",), "bias", bias or cfg("attention_bias", default=False),
              "bias = {value} on Attention"),
        Check("q/k RMSNorm (Qwen3, OLMo 2)", ("Attention",), "qk_norm", const(qk_norm),
              "qk_norm = {value} on Attention"),
        Check("q/k RMSNorm scope (over each head: Qwen3; over the whole projection: OLMo 2)", ("Attention",),
              "qk_norm_scope", const(qk_norm_scope), "qk_norm_scope = {value} on Attention"
              + (" (olmo2_block: specs/olmo2.spec)" if qk_norm_scope == "full" else " (llama_block)")),
        Check("sliding window", ("Attention",), "window", window or const(0), "--set window={value}"),
        _NO_ALIBI,
        act or _act_check("hidden_activation", "hidden_act", default="silu"),
        *((Check("embeddings scaled by sqrt(d)", ("Scale",), None, const(True),
                 "`-> Scale(sqrt(d))` after the token embedding (specs/gemma.spec)"),
           Check("the embedding scale sqrt(hidden_size)", ("Scale",), "factor",
                 cfg("hidden_size", convert=math.sqrt), "Scale(sqrt(d)) with d = hidden_size", tol=1e-6))
          if scale else (_NO_SCALE,)),
    )


_MISTRAL_WINDOW = cfg("sliding_window", default=0)
_QWEN_WINDOW = lambda c: (c.get("sliding_window") or 0) if c.get("use_sliding_window") else 0  # noqa: E731

LLAMA = replace(LLAMA, checks={
    "llama": _llama_like(False),
    "mistral": _llama_like(False, window=_MISTRAL_WINDOW),
    "qwen2": _llama_like(False, bias=const(True), window=_QWEN_WINDOW),
    "qwen3": _llama_like(False, qk_norm=True, window=_QWEN_WINDOW),
    # GemmaConfig: hidden_activation, else gelu_pytorch_tanh whatever the legacy hidden_act says ("gelu" in the
    # published configs: transformers warns and uses the tanh approximation).
    "gemma": _llama_like(True, scale=True, act=_act_check("hidden_activation", default=_act("gelu_pytorch_tanh"))),
})
MIXTRAL = replace(MIXTRAL, checks={"mixtral": (  # MixtralConfig's default rotary base is 1e6
    *_llama_like(False, window=_MISTRAL_WINDOW, theta=cfg("rope_parameters.rope_theta", "rope_theta",
                                                            default=1e6)),
    Check("experts", ("MoE",), "experts", cfg("num_local_experts"), "--set experts={value}"),
    Check("experts per token", ("MoE",), "top_k", cfg("num_experts_per_tok"), "--set top_k={value}"),
)})

OLMO2 = replace(OLMO2, checks={"olmo2": (
    *_llama_like(False, qk_norm=True, qk_norm_scope="full"),
    Check("output projection bias", ("Attention",), "out_bias", cfg("attention_bias", default=False),
          "out_bias = {value} on Attention (olmo2_block's bias sets both)"),
    Check("q/k RMSNorm epsilon", ("Attention",), "qk_norm_eps", cfg("rms_norm_eps"), "qk_norm_eps = {value} on "
          "Attention (olmo2_block's eps sets it)", tol=1e-6),
)})

_LN_ABSOLUTE = (Check("rotary positions", ("Attention",), "rope", const(False), "rope = false on Attention"),
                _NO_ALIBI, _NO_SCALE)
GPT2 = replace(GPT2, checks={"gpt2": (
    _heads("n_head"), _eps("LayerNorm", "layer_norm_epsilon"), _act_check("activation_function"), *_LN_ABSOLUTE,
    Check("position offset", ("PositionalEmbedding",), "offset", const(0), "offset = 0 on PositionalEmbedding"))})
GPT1 = replace(GPT1, checks={"openai-gpt": (
    _heads("n_head"), _eps("LayerNorm", "layer_norm_epsilon"), _act_check("afn"), *_LN_ABSOLUTE)})
BERT = replace(BERT, checks={"bert": (
    _heads("num_attention_heads"), _eps("LayerNorm", "layer_norm_eps"), _act_check("hidden_act"), *_LN_ABSOLUTE)})
ALBERT = replace(ALBERT, checks={"albert": (
    _heads("num_attention_heads"), _eps("LayerNorm", "layer_norm_eps"), _act_check("hidden_act"), *_LN_ABSOLUTE)})


def _rotary_dims(*factor: str) -> Callable[[dict], object]:
    def expect(config: dict):
        f = cfg(*factor)(config)
        if f is SKIP or not config.get("hidden_size") or not config.get("num_attention_heads"):
            return SKIP
        return int(config["hidden_size"] // config["num_attention_heads"] * f)
    expect.fields = factor
    return expect


_ROTARY = ("rope_parameters.partial_rotary_factor", "partial_rotary_factor", "rotary_pct")
_PARTIAL = (Check("rotary positions", ("Attention",), "rope", const(True), "rope = true on Attention"),
            Check("rotary base", ("Attention",), "rope_theta", _THETA, "--set rope_theta={value}", tol=1e-6),
            Check("rotary width per head", ("Attention",), "rotary_dims", _rotary_dims(*_ROTARY),
                  "--set rotary_dims={value}"),
            _ROPE_TYPE, _NO_ALIBI, _NO_SCALE)
PHI = replace(PHI, checks={"phi": (
    _heads("num_attention_heads"), _eps("LayerNorm", "layer_norm_eps"), _act_check("hidden_act"), *_PARTIAL,
    Check("q/k LayerNorm", ("Attention",), "qk_norm", cfg("qk_layernorm", default=False),
          "specc has no q/k LayerNorm: a Phi checkpoint with qk_layernorm cannot be loaded"))})
GPT_NEOX = replace(GPT_NEOX, checks={"gpt_neox": (
    _heads("num_attention_heads"), _eps("LayerNorm", "layer_norm_eps"), _act_check("hidden_act"), *_PARTIAL)})
OPT = replace(OPT, checks={"opt": (
    _heads("num_attention_heads"), _act_check("activation_function"), *_LN_ABSOLUTE,
    Check("position offset (OPT's learned positions start at row 2)", ("PositionalEmbedding",), "offset",
          const(2), "offset = 2 on PositionalEmbedding (specs/opt.spec)"))})
GPTJ = replace(GPTJ, checks={"gptj": (
    _heads("n_head"), _eps("LayerNorm", "layer_norm_epsilon"), _act_check("activation_function"),
    Check("rotary width per head", ("Attention",), "rotary_dims", cfg("rotary_dim"), "--set rotary_dims={value}"),
    Check("rotary layout (GPT-J rotates interleaved pairs)", ("Attention",), "rope_layout", const("interleaved"),
          'rope_layout = "interleaved" on Attention'), _NO_ALIBI, _NO_SCALE)})
BLOOM = replace(BLOOM, checks={"bloom": (
    _heads("n_head"), _eps("LayerNorm", "layer_norm_epsilon"),
    Check("ALiBi", ("Attention",), "alibi", const(True), "alibi = true on Attention (gpt_block(..., alibi = true))"),
    Check("rotary positions", ("Attention",), "rope", const(False), "rope = false on Attention"), _NO_SCALE)})

FAMILIES = (GPT2, GPT1, LLAMA, MIXTRAL, OLMO2, BERT, ALBERT, PHI, GPT_NEOX, OPT, GPTJ, BLOOM)
MODEL_TYPES = {t: f for f in FAMILIES for t in f.model_types}


def family_for_config(config: dict) -> tuple[Family, str] | None:
    """The family and model_type of a config.json: its `model_type`, or when it has none, its `architectures`
    (LlamaForCausalLM -> llama: a model_type followed by For..., LMHead... or Model)."""
    model_type = config.get("model_type")
    if model_type:
        return (MODEL_TYPES[model_type], model_type) if model_type in MODEL_TYPES else None
    for arch in config.get("architectures") or ():
        low = arch.lower()
        for t, f in MODEL_TYPES.items():
            stem = t.replace("_", "").replace("-", "")
            if low.startswith(stem) and low[len(stem):].startswith(("for", "lmhead", "model")):
                return f, t
    return None


# -- The spec whose labels each family's rules use: a spec with other labels is matched to it by structure. --------

_HEADLESS = ("lm_head",)  # the *Model classes (GPT2Model, LlamaModel, ...): the same names without the head

# GPT-J and BLOOM have no zoo spec: their structure as a spec of its own (sizes do not matter; tests/test_quirks.py
# has the full specs).
_GPTJ_REFERENCE = """use "std/transformer.spec"
model gptj {
    input tokens: int[batch, seq <= 8]
    x = tokens -> wte: Embedding(16, 8) -> h: repeat 2 { parallel_block(8, 2, bias = false) }
    return x -> ln_f: LayerNorm(8) -> lm_head: Linear(8, 16, bias = true)
}
"""
_BLOOM_REFERENCE = """use "std/transformer.spec"
model bloom {
    input tokens: int[batch, seq <= 8]
    x = tokens -> wte: Embedding(16, 8) -> ln_emb: LayerNorm(8) -> h: repeat 2 { gpt_block(8, 2, alibi = true) }
    return x -> ln_f: LayerNorm(8) -> lm_head: Linear(8, 16, bias = false, tie = wte)
}
"""

REFERENCES = {
    "gpt2": Reference("gpt2.spec", optional=_HEADLESS),
    "openai-gpt": Reference("gpt1.spec", optional=_HEADLESS),
    "llama": Reference("llama.spec", optional=_HEADLESS),
    "mixtral": Reference("mixtral.spec", optional=_HEADLESS),
    "bert": Reference("bert.spec", presets=(None, "mlm"), optional=("pooler",)),  # BertModel; BertForMaskedLM
    "albert": Reference("albert.spec", optional=("pooler",)),
    "phi": Reference("phi.spec", optional=_HEADLESS),
    "gpt-neox": Reference("gpt-neox.spec", optional=_HEADLESS),
    "opt": Reference("opt.spec", optional=_HEADLESS),
    "gptj": Reference(text=_GPTJ_REFERENCE, optional=_HEADLESS),
    "bloom": Reference(text=_BLOOM_REFERENCE, optional=_HEADLESS),
    "olmo2": Reference("olmo2.spec", optional=_HEADLESS),
}


def _compile(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


_PATTERNS = {f.name: [(_compile(ours), src) for ours, src in f.rules.items()] for f in FAMILIES}


def rule_for(family: Family, name: str):
    """(source recipe, {"i": ...}) for one of our parameter names, or None when the family has no rule."""
    for pattern, source in _PATTERNS[family.name]:
        m = pattern.match(name)
        if m:
            return source, m.groupdict()
    return None
