"""The encoders: BERT (BertModel with its pooler, or BertForMaskedLM) and ALBERT (AlbertModel: factorised
embeddings, one layer shared by all), under the names of specs/bert.spec and specs/albert.spec, which the weight
loader's families read. Defaults: transformers 5's BertConfig and AlbertConfig."""

from __future__ import annotations

from .config import Config
from .draft import Draft, literal, repeat
from .readers import activation, dropouts, refuse_unless, sizes, tied
from .recipe import Recipe

_BERT_SIZES = (("vocab", ("vocab_size",), 30522), ("ctx", ("max_position_embeddings",), 512),
               ("types", ("type_vocab_size",), 2), ("d", ("hidden_size",), 768),
               ("layers", ("num_hidden_layers",), 12), ("heads", ("num_attention_heads",), 12),
               ("ffn", ("intermediate_size",), 3072))
_ALBERT_SIZES = (("vocab", ("vocab_size",), 30000), ("ctx", ("max_position_embeddings",), 512),
                 ("types", ("type_vocab_size",), 2), ("emb", ("embedding_size",), 128), ("d", ("hidden_size",), 4096),
                 ("layers", ("num_hidden_layers",), 12), ("heads", ("num_attention_heads",), 64),
                 ("ffn", ("intermediate_size",), 16384))

# specc's `act` -> the stand-alone layer that computes it (BERT's MLM transform applies config.hidden_act).
_ACTIVATION_LAYERS = {"gelu": "GELU", "gelu_tanh": 'GELU(approximate = "tanh")', "relu": "ReLU", "silu": "SiLU",
                      "tanh": "Tanh"}


def _encoder_facts(c: Config, draft: Draft, act_default: str, dropout_default: float) -> tuple[str, str]:
    """eps, dropout and the refusals both encoders share; (the activation, the dropout's hyperparameter)."""
    draft.param("eps", c.number("layer_norm_eps", default=1e-12))
    drop = dropouts(c, draft, ("hidden_dropout_prob",), dropout_default)
    attn = c.probability("attention_probs_dropout_prob", default=dropout_default)
    if attn.value != c.probability("hidden_dropout_prob", default=dropout_default).value:
        draft.notes.append(f"attention_probs_dropout_prob = {attn.value!r} is not carried: post_ln_block has one "
                           "dropout, `dropout` (hidden_dropout_prob), for the attention weights too.")
    position = c.string("position_embedding_type", default="absolute")
    c.require("position_embedding_type", position, "absolute", "specc's encoders learn absolute positions")
    refuse_unless(c, (("is_decoder", False, "the spec is a bidirectional encoder"),
                      ("add_cross_attention", False, "the spec has no cross-attention")))
    return activation(c, "hidden_act", default=act_default).value, drop["dropout"]


def _embeddings(draft: Draft, width: str, dropout: str) -> None:
    draft.body += ["input tokens: int[batch, seq <= ctx]",
                   "input token_types: int[batch, seq <= ctx] = 0",
                   f"x = (tokens -> word_embeddings: Embedding(vocab, {width}))",
                   f"    + (token_types -> token_type_embeddings: Embedding(types, {width}))",
                   f"x = x -> position_embeddings: PositionalEmbedding(ctx, {width}) -> ln: LayerNorm({width}, "
                   f"eps = eps) -> Dropout({dropout})"]


def _pooler(draft: Draft) -> None:
    draft.body += ["pooled = x -> Select(dim = 1, index = 0) -> pooler: Linear(d, d) -> Tanh", "return x, pooled"]


def bert(c: Config, arch: str) -> Draft:
    draft = Draft("bert", "bert.spec")
    sizes(c, draft, _BERT_SIZES)
    act, dropout = _encoder_facts(c, draft, "gelu", 0.1)
    _embeddings(draft, "d", dropout)
    draft.body += repeat("layer", "post_ln_block", ["d", "heads", "ffn", "causal = false", f"dropout = {dropout}",
                                                    f"act = {literal(act)}", "eps = eps"])
    if arch == "BertModel":
        _pooler(draft)
        return draft
    tie = tied(c, True)
    c.require("tie_word_embeddings", tie, True, "the weight loader reads BertForMaskedLM's decoder as the word "
              "embeddings (bert.spec's tie)")
    # BertOnlyMLMHead: dense, hidden_act, LayerNorm, then the decoder tied to the word embeddings (bias its own).
    draft.body += [f"logits = x -> transform: Linear(d, d) -> {_ACTIVATION_LAYERS[act]}",
                   "          -> transform_ln: LayerNorm(d, eps = eps)",
                   "          -> decoder: Linear(d, vocab, tie = word_embeddings)",
                   "return logits"]
    return draft


def albert(c: Config, arch: str) -> Draft:
    draft = Draft("albert", "albert.spec")
    sizes(c, draft, _ALBERT_SIZES)
    for name in ("num_hidden_groups", "inner_group_num"):
        c.require(name, c.integer(name, default=1), 1, "the weight loader reads one layer, shared by all "
                  "(albert.spec's `repeat layers shared`)")
    act, dropout = _encoder_facts(c, draft, "gelu_new", 0.0)
    _embeddings(draft, "emb", dropout)
    draft.body += ["x = x -> embedding_hidden_mapping_in: Linear(emb, d)",
                   *repeat("layer", "post_ln_block", ["d", "heads", "ffn", "causal = false", f"dropout = {dropout}",
                                                      f"act = {literal(act)}", "eps = eps"], shared=True)]
    _pooler(draft)
    return draft


RECIPES = (
    Recipe("bert", "BERT", ("BertModel", "BertForMaskedLM"), bert),
    Recipe("albert", "ALBERT", ("AlbertModel",), albert),
)
