"""Convolution and pooling over [batch, channels, height, width] (LeCun et al. 1998), and shape utilities."""

from __future__ import annotations

from math import prod

from ..shapes import ShapeError, Sym, TensorType, concrete_count, max_extent
from .base import Arg, Example, Kind, TorchForm, expect_float, int64, non_negative, positive


def _out_extent(n, kernel: int, stride: int, padding: int, what: str):
    if isinstance(n, Sym):
        return n
    out = (n + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ShapeError(f"{what}: input extent {n} is smaller than the kernel {kernel}")
    return out


def _expect_image(x: TensorType, what: str) -> None:
    expect_float(x, what)
    if x.rank != 4:
        raise ShapeError(f"{what} expects [batch, channels, height, width] but got {x}")


class Conv2d(Kind):
    name = "Conv2d"
    summary = "2-D convolution [b, in, h, w] -> [b, out, h', w']"
    args = (Arg("in", int, check=positive), Arg("out", int, check=positive), Arg("kernel", int, check=positive),
            Arg("stride", int, 1, check=positive), Arg("padding", int, 0, check=non_negative),
            Arg("bias", bool, True))
    examples = (Example("3, 4, 3", "float[2, 3, 8, 8]"), Example("3, 4, 3, stride = 2, padding = 1, bias = false",
                                                                   "float[1, 3, 9, 7]"))
    params_doc = "`weight [out, in, kernel, kernel]`, `bias [out]`"
    shape_doc = ("`float[b, in, h, w]` → `[b, out, h', w']`, `h' = (h + 2·padding − kernel) // stride + 1` "
                 "(symbolic `h` stays symbolic)")
    flops_doc = "`2·in·kernel²·out·h'·w'` (fixed dims of the output)"

    def params(self, a):
        p = {"weight": (a.out, a["in"], a.kernel, a.kernel)}
        if a.bias:
            p["bias"] = (a.out,)
        return p

    def output_type(self, a, x):
        _expect_image(x, self.name)
        if x.shape[1] != a["in"]:
            raise ShapeError(f"Conv2d({a['in']}, {a.out}) expects {a['in']} input channels but got {x}")
        what = f"Conv2d(kernel={a.kernel})"
        h = _out_extent(x.shape[2], a.kernel, a.stride, a.padding, what)
        w = _out_extent(x.shape[3], a.kernel, a.stride, a.padding, what)
        return TensorType("float", (x.shape[0], a.out, h, w))

    def flops(self, a, x):
        y = self.output_type(a, x)
        return 2 * a["in"] * a.kernel * a.kernel * concrete_count(y.shape)

    def torch_form(self, a):
        return TorchForm("nn.Conv2d", (a["in"], a.out, a.kernel),
                         {"stride": a.stride, "padding": a.padding, "bias": a.bias})


class _Pool2d(Kind):
    args = (Arg("kernel", int, check=positive),
            Arg("stride", int, lambda a: a.kernel, check=positive, default_doc="kernel"))
    examples = (Example("2", "float[2, 3, 8, 8]"), Example("3, stride = 2", "float[1, 2, 9, 7]"))
    shape_doc = "`float[b, c, h, w]` → `[b, c, h', w']`, `h' = (h − kernel) // stride + 1`"

    def output_type(self, a, x):
        _expect_image(x, self.name)
        h = _out_extent(x.shape[2], a.kernel, a.stride, 0, self.name)
        w = _out_extent(x.shape[3], a.kernel, a.stride, 0, self.name)
        return TensorType("float", x.shape[:2] + (h, w))


class MaxPool2d(_Pool2d):
    name = "MaxPool2d"
    summary = "maximum over kernel x kernel windows"

    def torch_form(self, a):
        return TorchForm("nn.MaxPool2d", (a.kernel, a.stride))


class AvgPool2d(_Pool2d):
    name = "AvgPool2d"
    summary = "mean over kernel x kernel windows"

    def torch_form(self, a):
        return TorchForm("nn.AvgPool2d", (a.kernel, a.stride))


class Flatten(Kind):
    name = "Flatten"
    summary = "merge dims from `start` on: [b, c, h, w] -> [b, c*h*w]"
    args = (Arg("start", int, 1, check=non_negative),)
    examples = (Example("", "float[2, 3, 4, 5]"), Example("start = 2", "float[2, 3, 4, 5]"))
    shape_doc = "merges dims from `start` on (all fixed): `[b, c, h, w]` → `[b, c·h·w]`"

    def output_type(self, a, x):
        if a.start >= x.rank:
            raise ShapeError(f"Flatten(start={a.start}) needs more than {a.start} dims but got {x}")
        rest = x.shape[a.start:]
        if any(isinstance(d, Sym) for d in rest):
            raise ShapeError(f"Flatten can only merge fixed dims but got {x}")
        return TensorType(x.dtype, x.shape[: a.start] + (prod(rest),))

    def describe(self, a):
        return "Flatten"

    def torch_form(self, a):
        return TorchForm("nn.Flatten", (), {"start_dim": a.start})


class Select(Kind):
    name = "Select"
    summary = "take one index of a dim, removing it: BERT's pooler reads token 0 with Select(dim = 1, index = 0)"
    args = (Arg("dim", int, 1), Arg("index", int, 0, check=int64, doc="negative counts from the end"))
    examples = (Example("", "float[2, 6, 12]"), Example("dim = -1, index = -2", "float[2, 6, 12]"))
    shape_doc = "removes `dim`, taking one index: `[b, seq, d]` → `[b, d]`"

    def output_type(self, a, x):
        dim = a.dim if a.dim >= 0 else x.rank + a.dim
        if not 0 <= dim < x.rank:
            raise ShapeError(f"Select(dim={a.dim}) is out of range for {x}")
        extent = max_extent(x.shape[dim])  # a fixed length, or the bound of `seq <= ctx`
        if extent is not None and not -extent <= a.index < extent:
            raise ShapeError(f"Select(index={a.index}) is out of range for dim {dim} of {x}")
        return TensorType(x.dtype, x.shape[:dim] + x.shape[dim + 1:])

    def torch_form(self, a):
        return TorchForm("Select", (a.dim, a.index))
