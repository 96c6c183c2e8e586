"""What several families read the same way: rotary positions, the activation, which transformers class the
checkpoint is (its head), tied embeddings, sizes and dropouts into hyperparameters, and the switches a spec cannot
turn. Each follows what transformers 5 does with config.json (cited), and refuses, naming the field, what specc's
layers cannot compute."""

from __future__ import annotations

import json

from .config import ABSENT, Config, Value
from .draft import Draft

# transformers' ACT2FN names (activations.py) -> specc's `act` values; gelu_new, gelu_pytorch_tanh and gelu_fast
# are the tanh approximation of GELU, swish is SiLU. specdsl/backends/hf_naming.py's HF_ACTIVATIONS says the same
# for the weight loader's checks (tests/test_import.py holds them equal, and to specc's activations).
HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu", "tanh": "tanh"}


def activation(c: Config, *names: str, default: str) -> Value:
    """The MLP's activation as specc's `act`."""
    read = c.string(*names, default=default)
    if read.value not in HF_ACTIVATIONS:
        name = c.first(names)[0] or names[0]
        raise c.error(name, f"{name} = {_shown(read.value)} is an activation specc does not have",
                      hint=f"specc imports {', '.join(sorted(HF_ACTIVATIONS))}")
    return Value(HF_ACTIVATIONS[read.value], read.source)


def _shown(text: str) -> str:
    return json.dumps(text[:80])


def rope(c: Config, default_theta: float, theta_names: tuple[str, ...] = ("rope_theta",)) -> tuple[Value, dict, str]:
    """(rotary base, the rotary parameters object, its field name) as transformers 5 reads them
    (modeling_rope_utils.convert_rope_params_to_dict): `rope_scaling`, when set, replaces `rope_parameters`; its
    `rope_theta` comes first, then the top-level `theta_names`, then the class's default. Any rope_type but
    "default" (linear, dynamic, yarn, llama3, longrope...) rescales the frequencies: refused, naming the field."""
    field, params = "rope_scaling", c.get("rope_scaling")
    if params is ABSENT or not params:  # null or {}: rope_parameters stand
        field, params = "rope_parameters", c.get("rope_parameters")
        params = {} if params is ABSENT or params is None else params
    if not isinstance(params, dict):
        raise c.error(field, f"{field} must be an object or null")
    if any(isinstance(v, dict) for v in params.values()):
        raise c.error(field, f"{field} gives rotary parameters per layer type, which specc does not import",
                      hint="specc's rotary positions are one setting for every layer")
    kind_field = "rope_type" if "rope_type" in params else "type"
    kind = params.get(kind_field, "default")
    if kind != "default":
        raise c.error(f"{field}.{kind_field}", f"{field}.{kind_field} = {_shown(str(kind))} cannot be imported: "
                      "specc has plain rotary positions only (rope_type \"default\"), no rescaled frequencies",
                      hint="a spec with plain rotary positions would count the same parameters but compute "
                           "another model; remove the scaling only if that is what you mean")
    if "rope_theta" in params:
        theta = c.number(f"{field}.rope_theta", default=default_theta)
    else:
        theta = c.number(*theta_names, default=default_theta)
    return theta, params, field


def partial_rotary(c: Config, params: dict, field: str, legacy: tuple[str, ...], default: float | None) -> Value:
    """The fraction of each head's dims that rotate: the rotary parameters' `partial_rotary_factor`, else the
    top-level `legacy` names (Phi's partial_rotary_factor, GPT-NeoX's rotary_pct), else `default`."""
    if "partial_rotary_factor" in params:
        read = c.number(f"{field}.partial_rotary_factor", default=default)
    else:
        read = c.number(*legacy, default=default)
    if read.value > 1:
        raise c.error(c.first(legacy)[0] or field, f"a rotary fraction of {read.value!r} is above 1")
    return read


def architecture(c: Config, known: tuple[str, ...]) -> str:
    """The transformers class the checkpoint holds: the first of config.json's `architectures`, which must be one
    of `known` (whose weights the loader names); `known[0]` when the config does not say."""
    value = c.get("architectures")
    if value is ABSENT or value is None or value == []:
        return known[0]
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise c.error("architectures", "architectures must be a list of class names")
    if value[0] not in known:
        raise c.error("architectures", f"architectures names {_shown(value[0])}, a class whose weights specc's "
                      "loader does not name for this model_type",
                      hint=f"specc imports {', '.join(known)}")
    return value[0]


def tied(c: Config, default: bool) -> Value:
    return c.flag("tie_word_embeddings", default=default)


def sizes(c: Config, draft: Draft, table) -> dict[str, int]:
    """Declare the sizes of `table`; their values by hyperparameter."""
    values = {}
    for name, fields, default in table:
        read = c.integer(*fields, default=default)
        draft.param(name, read)
        values[name] = read.value
    return values


def dropouts(c: Config, draft: Draft, resid: tuple, default: float, **apart) -> dict:
    """`dropout` (the residual branches') and, for each of `apart` (key=(field, default)), a hyperparameter of
    its own when the config sets it apart from `dropout`: {"dropout": name, key: name, ...}."""
    main = c.probability(*resid, default=default)
    names = {"dropout": draft.param("dropout", main)}
    for key, (field, field_default) in apart.items():
        read = c.probability(field, default=field_default)
        names[key] = draft.param(f"{key}_dropout", read) if read.value != main.value else names["dropout"]
    return names


def refuse_unless(c: Config, table) -> None:
    """(field, the value the spec computes, which is transformers' default, why another cannot be imported)."""
    for name, wanted, why in table:
        c.require(name, c.flag(name, default=wanted), wanted, why)


def inner_width(c: Config, draft: Draft) -> None:
    """GPT-2's and GPT-J's n_inner: the MLP's width, 4 * n_embd when null."""
    ffn = c.integer("n_inner", default=None, nullable=True)
    if ffn.value is None:
        draft.derived("ffn", "4 * d", f"{ffn.source}: 4 * n_embd")
    else:
        draft.param("ffn", ffn)
