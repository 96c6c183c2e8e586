"""Linear: y = x W^T + b, weight stored [out, in] as in torch.nn.Linear."""

from __future__ import annotations

from ..shapes import concrete_count
from .base import Adaptable, Arg, Example, Kind, TorchForm, expect_float, expect_last_dim, positive


class Linear(Kind):
    name = "Linear"
    summary = "affine map [..., in] -> [..., out]; `tie = layer` shares the weight of an Embedding"
    args = (Arg("in", int, check=positive), Arg("out", int, check=positive), Arg("bias", bool, True))
    tie_param = "weight"
    examples = (Example("12, 5", "float[2, 3, 12]"), Example("12, 5, bias = false", "float[4, 12]"))
    params_doc = "`weight [out, in]`, `bias [out]`"
    shape_doc = "`[..., in]` → `[..., out]`"
    flops_doc = "`2·in·out·N`"

    def params(self, a):
        p = {"weight": (a.out, a["in"])}
        if a.bias:
            p["bias"] = (a.out,)
        return p

    def output_type(self, a, x):
        expect_float(x, self.name)
        expect_last_dim(x, a["in"], f"Linear({a['in']}, {a.out})")
        return x.with_last(a.out)

    def flops(self, a, x):
        return 2 * a["in"] * a.out * concrete_count(x.shape[:-1])

    def torch_form(self, a):
        return TorchForm("nn.Linear", (a["in"], a.out), {"bias": a.bias})

    def adaptable(self, a):  # LoRA's target: the layer itself (`lm_head`, `Linear`)
        return (Adaptable("", "weight", None, a["in"], a.out),)
