"""A hand-written GPT in the style of Karpathy's nanoGPT model.py: the baseline that bench/train_step.py times the
compiled spec module against.

Same architecture as specs/nanogpt-shakespeare.spec: token + learned position embeddings, pre-LayerNorm blocks
(x + attn(ln_1(x)), then x + mlp(ln_2(x))), causal self-attention with a fused c_attn projection and
F.scaled_dot_product_attention(is_causal=True), an MLP c_fc -> GELU -> c_proj, a final LayerNorm and an lm_head
tied to wte. Weights are N(0, 0.02), biases zero, norms one, as the compiled module's init_gpt2_ does (nanoGPT's
extra 1/sqrt(2 n_layer) on the c_proj weights is left out in both: see init_gpt2_).

Unlike nanoGPT, forward returns the logits of every position and no loss, like the compiled module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    vocab: int = 65
    ctx: int = 64
    d: int = 128
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0
    bias: bool = True
    approximate: str = "none"  # F.gelu's: "none" (exact, nanoGPT) or "tanh" (GPT-2's gelu_new)


class LayerNorm(nn.Module):
    """nanoGPT's LayerNorm: torch's, with an optional bias."""

    def __init__(self, d: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.d % cfg.heads == 0
        self.c_attn = nn.Linear(cfg.d, 3 * cfg.d, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d, cfg.d, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.heads, self.d, self.dropout = cfg.heads, cfg.d, cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.d, dim=2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # [B, nh, T, hd]
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d, 4 * cfg.d, bias=cfg.bias)
        self.gelu = nn.GELU(approximate=cfg.approximate)
        self.c_proj = nn.Linear(4 * cfg.d, cfg.d, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.d, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.d, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """`model(idx)`: int64 [B, T] -> logits float [B, T, vocab]."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab, cfg.d),
            wpe=nn.Embedding(cfg.ctx, cfg.d),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.layers)]),
            ln_f=LayerNorm(cfg.d, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.d, cfg.vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _, t = idx.shape
        assert t <= self.cfg.ctx, f"sequence of {t} is longer than the context {self.cfg.ctx}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def spec_names(cfg: GPTConfig) -> dict[str, str]:
    """This module's parameter names -> the compiled spec module's (for copying weights between the two)."""
    names = {"transformer.wte.weight": "wte.weight", "transformer.wpe.weight": "wpe.weight"}
    for i in range(cfg.layers):
        for mine, theirs in (("ln_1", "ln_1"), ("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.out"),
                             ("ln_2", "ln_2"), ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.proj")):
            for p in ("weight", "bias") if cfg.bias else ("weight",):
                names[f"transformer.h.{i}.{mine}.{p}"] = f"h.{i}.{theirs}.{p}"
    for p in ("weight", "bias") if cfg.bias else ("weight",):
        names[f"transformer.ln_f.{p}"] = f"ln_f.{p}"
    return names
