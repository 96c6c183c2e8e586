"""Normalisation layers: LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019, used by LLaMA).

RMSNorm's `unit_offset` is Gemma's form (Gemma Team 2024; Hugging Face GemmaRMSNorm): the weight is stored as an
offset from one, so it scales by (1 + weight), starts at zero, and the whole norm runs in float32 before the result
returns to the input's dtype."""

from __future__ import annotations

from .base import Arg, Example, Kind, TorchForm, expect_float, expect_last_dim, positive


class LayerNorm(Kind):
    name = "LayerNorm"
    summary = "normalise the last dim, then scale (and shift)"
    args = (Arg("dim", int, check=positive), Arg("eps", float, 1e-5, check=positive), Arg("bias", bool, True))
    examples = (Example("12", "float[2, 3, 12]"), Example("12, eps = 1e-6, bias = false", "float[3, 12]"))
    params_doc = "`weight [dim]`, `bias [dim]`"
    shape_doc = "`[..., dim]` → same"

    def params(self, a):
        return {"weight": (a.dim,), "bias": (a.dim,)} if a.bias else {"weight": (a.dim,)}

    def output_type(self, a, x):
        expect_float(x, self.name)
        expect_last_dim(x, a.dim, f"LayerNorm({a.dim})")
        return x

    def torch_form(self, a):
        return TorchForm("nn.LayerNorm", (a.dim,), {"eps": a.eps, "bias": a.bias})


class RMSNorm(Kind):
    name = "RMSNorm"
    summary = "x / rms(x) * weight over the last dim"
    args = (Arg("dim", int, check=positive), Arg("eps", float, 1e-6, check=positive),
            Arg("unit_offset", bool, False,
                doc="scale by (1 + weight), the weight starting at 0, computed in float32 (Gemma's GemmaRMSNorm)"))
    examples = (Example("12", "float[2, 3, 12]"), Example("12, eps = 1e-5, unit_offset = true", "float[2, 3, 12]"))
    params_doc = "`weight [dim]`"
    shape_doc = "`[..., dim]` → same"

    def params(self, a):
        return {"weight": (a.dim,)}

    def output_type(self, a, x):
        expect_float(x, self.name)
        expect_last_dim(x, a.dim, f"RMSNorm({a.dim})")
        return x

    def torch_form(self, a):
        if a.unit_offset:
            return TorchForm("OffsetRMSNorm", (a.dim,), {"eps": a.eps})
        return TorchForm("nn.RMSNorm", (a.dim,), {"eps": a.eps})

    def describe(self, a):
        return f"RMSNorm({a.dim}, 1 + weight)" if a.unit_offset else f"RMSNorm({a.dim})"
