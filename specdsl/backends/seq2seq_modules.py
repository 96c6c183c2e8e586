"""Torch forms of the kinds that read a second tensor (encoder-decoder models): plain PyTorch with no import of
specdsl, so `--emit-torch` carries them into a standalone file (TorchForm "specdsl.backends.seq2seq_modules:X")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head attention of x [B, T, d] (queries) over memory [B, S, memory_dim] (keys and values), without a
    mask; GQA/MQA through kv_heads (SDPA's enable_gqa)."""

    def __init__(self, d: int, heads: int, kv_heads: int, head_dim: int, memory_dim: int, bias: bool = False,
                 out_bias: bool = False, dropout: float = 0.0, scale: float | None = None):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.dropout = heads, kv_heads, head_dim, dropout
        self.scale = scale  # the factor on q·k; None: 1/sqrt(head_dim) (T5: 1.0)
        self.q = nn.Linear(d, heads * head_dim, bias=bias)
        self.kv = nn.Linear(memory_dim, 2 * kv_heads * head_dim, bias=bias)
        self.out = nn.Linear(heads * head_dim, d, bias=out_bias)
        # While decoding incrementally: a state whose `memory_kv(compute)` gives this application's keys and values
        # of the memory, computed by `compute` at the first step and cached after (the memory is then not read).
        self.decode = None

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, kv_heads, S, head_dim] of the memory."""
        B, S, _ = memory.shape
        kv, hd = self.kv_heads, self.head_dim
        k, v = self.kv(memory).split((kv * hd, kv * hd), dim=-1)
        return k.view(B, S, kv, hd).transpose(1, 2), v.view(B, S, kv, hd).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        h, kv, hd = self.heads, self.kv_heads, self.head_dim
        q = self.q(x).view(B, T, h, hd).transpose(1, 2)
        if self.decode is not None:
            k, v = self.decode.memory_kv(lambda: self.memory_kv(memory))
        else:
            k, v = self.memory_kv(memory)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale, enable_gqa=kv != h)
        return self.out(y.transpose(1, 2).reshape(B, T, h * hd))


class SinusoidalPositions(nn.Module):
    """x + PE[:T] with PE(pos, 2i) = sin(pos / base^(2i/dim)), PE(pos, 2i+1) = cos(...) (Vaswani et al. 2017), or
    all sines then all cosines with `halves`. Computed in float32 each call: no parameters, no buffers."""

    def __init__(self, dim: int, base: float = 10000.0, halves: bool = False):
        super().__init__()
        self.dim, self.base, self.halves = dim, base, halves
        self.decode = None  # a DecodeState while decoding: positions continue after the cached ones

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[-2]
        offset = self.decode.offset if self.decode is not None else 0
        pos = torch.arange(offset, offset + T, device=x.device, dtype=torch.float32)[:, None]
        inv = self.base ** (-torch.arange(0, self.dim, 2, device=x.device, dtype=torch.float32) / self.dim)
        angles = pos * inv[None, :]
        if self.halves:
            pe = torch.cat((angles.sin(), angles.cos()), dim=-1)
        else:
            pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
        return x + pe.to(x.dtype)
