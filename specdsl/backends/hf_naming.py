"""Hugging Face transformers state dicts -> specc parameter names, as declared data per family.

Each family maps a specc parameter path (with `{i}` for a layer index) to its source in a transformers state dict:
a key, or a small recipe over keys (transpose, concatenate, take a chunk, stack per-expert tensors). Sources are
tried under each of the family's prefixes (GPT2LMHeadModel's "transformer." or GPT2Model's none); a source that
starts with "^" is absolute (an LM head). Where a family has several layouts (Mixtral's fused experts in memory,
per-expert w1/w2/w3 as `save_pretrained` writes them), `First` takes the first whose keys exist.

A family also names the Hugging Face `model_type`s (config.json) whose checkpoints it reads: Gemma's and Qwen2's
names are LLaMA's (their quirks, GemmaRMSNorm's 1 + w and Qwen2's q/k/v biases, live in the spec, not in the names),
so one table serves them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


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


@dataclass(frozen=True)
class Family:
    name: str
    prefixes: tuple[str, ...]
    rules: dict
    model_types: tuple[str, ...] = ()  # the config.json `model_type`s whose checkpoints these names read


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

FAMILIES = (GPT2, GPT1, LLAMA, MIXTRAL, BERT, ALBERT, PHI, GPT_NEOX, OPT, GPTJ, BLOOM)


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
