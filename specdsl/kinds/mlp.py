"""Feed-forward blocks: the transformer MLP (fc -> act -> proj) and the gated MLP (Shazeer 2020, "GLU Variants
Improve Transformer"): down(act(gate(x)) * up(x)), SwiGLU with silu (LLaMA), GeGLU with gelu.

MoE (Shazeer et al. 2017; Mixtral, Jiang et al. 2024): a linear router picks top_k of `experts` gated MLPs per token
and mixes their outputs with the renormalised router probabilities.
"""

from __future__ import annotations

from ..shapes import ShapeError, concrete_count
from .base import Adaptable, Arg, Example, Kind, TorchForm, expect_float, expect_last_dim, positive
from .elementwise import ACTIVATIONS


class MLP(Kind):
    name = "MLP"
    summary = "fc [ffn, d] -> act -> proj [d, ffn]"
    args = (Arg("d", int, check=positive), Arg("ffn", int, check=positive),
            Arg("act", str, "gelu", choices=ACTIVATIONS), Arg("bias", bool, True))
    examples = (Example("12, 20", "float[2, 3, 12]"), Example('12, 20, act = "relu", bias = false', "float[4, 12]"))
    params_doc = "`fc.weight [ffn, d]`, `fc.bias [ffn]`, `proj.weight [d, ffn]`, `proj.bias [d]`"
    shape_doc = "`[..., d]` → same"
    flops_doc = "`4·d·ffn·N`"

    def params(self, a):
        p = {"fc.weight": (a.ffn, a.d)}
        if a.bias:
            p["fc.bias"] = (a.ffn,)
        p["proj.weight"] = (a.d, a.ffn)
        if a.bias:
            p["proj.bias"] = (a.d,)
        return p

    def output_type(self, a, x):
        expect_float(x, self.name)
        expect_last_dim(x, a.d, f"MLP(d={a.d})")
        return x

    def flops(self, a, x):
        return 2 * 2 * a.d * a.ffn * concrete_count(x.shape[:-1])

    def describe(self, a):
        return f"MLP({a.d}, {a.ffn}, {a.act})"

    def torch_form(self, a):
        return TorchForm("MLP", (), dict(a))

    def adaptable(self, a):  # LoRA's targets (docs/language.md, "LoRA"): Hugging Face's c_fc / fc1, c_proj / fc2
        return (Adaptable("fc", "fc.weight", None, a.d, a.ffn), Adaptable("proj", "proj.weight", None, a.ffn, a.d))


class GatedMLP(Kind):
    name = "GatedMLP"
    summary = "down(act(gate(x)) * up(x)): SwiGLU with act=silu, GeGLU with act=gelu"
    args = (Arg("d", int, check=positive), Arg("ffn", int, check=positive),
            Arg("act", str, "silu", choices=ACTIVATIONS), Arg("bias", bool, False))
    examples = (Example("12, 20", "float[2, 3, 12]"), Example('12, 20, act = "gelu", bias = true', "float[4, 12]"))
    params_doc = ("`gate.weight [ffn, d]`, `up.weight [ffn, d]`, `down.weight [d, ffn]`; with bias `gate.bias [ffn]`, "
                  "`up.bias [ffn]`, `down.bias [d]`")
    shape_doc = "`[..., d]` → same"
    flops_doc = "`6·d·ffn·N`"

    def params(self, a):
        p = {"gate.weight": (a.ffn, a.d), "up.weight": (a.ffn, a.d), "down.weight": (a.d, a.ffn)}
        if a.bias:
            p.update({"gate.bias": (a.ffn,), "up.bias": (a.ffn,), "down.bias": (a.d,)})
        return p

    output_type = MLP.output_type

    def flops(self, a, x):
        return 3 * 2 * a.d * a.ffn * concrete_count(x.shape[:-1])

    def describe(self, a):
        return f"GatedMLP({a.d}, {a.ffn}, {a.act})"

    def torch_form(self, a):
        return TorchForm("GatedMLP", (), dict(a))

    def adaptable(self, a):  # LoRA's targets: LLaMA's gate_proj, up_proj, down_proj
        return (Adaptable("gate", "gate.weight", None, a.d, a.ffn), Adaptable("up", "up.weight", None, a.d, a.ffn),
                Adaptable("down", "down.weight", None, a.ffn, a.d))


class MoE(Kind):
    name = "MoE"
    summary = "mixture of experts: router [experts, d] picks top_k gated (or plain) MLP experts per token"
    args = (Arg("d", int, check=positive), Arg("ffn", int, check=positive),
            Arg("experts", int, check=positive), Arg("top_k", int, check=positive),
            Arg("act", str, "silu", choices=ACTIVATIONS),
            Arg("gated", bool, True, doc="gated experts (SwiGLU) or plain MLP experts"),
            Arg("bias", bool, False, doc="biases in the experts"))
    aux_loss = True
    examples = (Example("12, 20, 4, 2", "float[2, 5, 12]"),
                Example("12, 20, 3, 1, gated = false, bias = true", "float[6, 12]"))
    params_doc = ("`router.weight [experts, d]`; gated: `experts.gate [experts, ffn, d]`, "
                  "`experts.up [experts, ffn, d]`, `experts.down [experts, d, ffn]`, "
                  "with bias `experts.gate_bias [experts, ffn]`, "
                  "`experts.up_bias [experts, ffn]`, `experts.down_bias [experts, d]`; not gated: "
                  "`experts.fc [experts, ffn, d]`, `experts.proj [experts, d, ffn]`, with bias "
                  "`experts.fc_bias [experts, ffn]`, `experts.proj_bias [experts, d]`")
    shape_doc = "`[..., d]` → same; `top_k ≤ experts`"
    flops_doc = "`(2·d·experts + top_k·(6 if gated else 4)·d·ffn)·N`"

    def _expert_params(self, a) -> dict[str, tuple[int, ...]]:
        """One expert's parameters, without the leading experts dim."""
        if a.gated:
            p = {"gate": (a.ffn, a.d), "up": (a.ffn, a.d), "down": (a.d, a.ffn)}
            if a.bias:
                p.update({"gate_bias": (a.ffn,), "up_bias": (a.ffn,), "down_bias": (a.d,)})
        else:
            p = {"fc": (a.ffn, a.d), "proj": (a.d, a.ffn)}
            if a.bias:
                p.update({"fc_bias": (a.ffn,), "proj_bias": (a.d,)})
        return p

    def params(self, a):
        p = {"router.weight": (a.experts, a.d)}
        for name, shape in self._expert_params(a).items():
            p[f"experts.{name}"] = (a.experts,) + shape
        return p

    def active_params(self, a):
        per_expert = sum(_numel(s) for s in self._expert_params(a).values())
        return self.param_count(a) - (a.experts - a.top_k) * per_expert

    def output_type(self, a, x):
        if a.top_k > a.experts:
            raise ShapeError(f"top_k={a.top_k} is more than experts={a.experts}")
        return MLP.output_type(self, a, x)

    def flops(self, a, x):
        per_expert = (3 if a.gated else 2) * 2 * a.d * a.ffn
        return (2 * a.d * a.experts + a.top_k * per_expert) * concrete_count(x.shape[:-1])

    def describe(self, a):
        return f"MoE({a.d}, {a.ffn}, {a.experts} experts, top {a.top_k})"

    def torch_form(self, a):
        return TorchForm("MoE", (), dict(a))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
