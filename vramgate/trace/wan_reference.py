"""The forward pass of Wan's own DiT (what ``generate.py`` runs), restated so that its memory can be traced.

Wan's reference code (Wan-Video/Wan2.1 and Wan2.2, ``wan/modules/model.py`` and ``wan/modules/attention.py``)
cannot be installed as a package, so this module states its forward again, tensor for tensor, in the dtypes
the reference produces under ``generate.py``'s ``torch.amp.autocast('cuda', dtype=bfloat16)``. A CPU trace
has no CUDA autocast, so each cast autocast would make is written out (:func:`_lin`: a linear layer casts
its input to bf16 and returns bf16; the head runs inside an fp32 autocast region). Where each tensor comes from:

* ``WanModel.forward``: the patch embedding (a bf16 ``Conv3d``) gives ``x`` in bf16, flattened to
  ``[B, L, dim]`` and zero-padded to ``seq_len``. The timestep is expanded to every token in Wan2.2
  (``t.expand(B, seq_len)``, so ``e`` is ``[B, L, dim]`` and ``e0`` is ``[B, L, 6, dim]``, both fp32); Wan2.1
  embeds one timestep per sample (``e`` is ``[B, dim]``, ``e0`` is ``[B, 6, dim]``). The sinusoidal
  embedding is computed in float64. The text context is padded to ``text_len`` and embedded.
* ``WanAttentionBlock.forward``: ``(modulation + e0).chunk(6)`` in fp32 (per token in Wan2.2); the
  self-attention input ``norm1(x).float() * (1 + e[1]) + e[0]`` in fp32; after the first block the residual
  ``x = x + y * e[2]`` is fp32 and stays fp32; cross-attention on ``norm3(x)`` (an affine fp32 LayerNorm);
  the FFN on ``norm2(x).float() * (1 + e[4]) + e[3]``, GELU (tanh) in bf16; ``x = x + y * e[5]``.
* ``WanSelfAttention.forward``: ``q`` and ``k`` through ``WanRMSNorm`` (fp32 inside, cast back to bf16),
  then ``rope_apply``: each sample's tokens to float64, viewed as complex, multiplied by the complex128
  frequencies, viewed back, concatenated with the padding and stacked, then ``.float()``.
* ``attention.flash_attention``: the fp32 ``q`` and ``k`` are cast to bf16 (``k`` after a per-sample
  ``cat`` of its valid length), ``v`` is concatenated too; FlashAttention's output is cast back to ``q``'s
  dtype (fp32 for self-attention).
* ``Head.forward``: ``(modulation + e.unsqueeze(2)).chunk(2)``, the LayerNorm and the output projection in an
  fp32 autocast region; ``unpatchify`` and ``.float()``.
* Sequence parallelism (``wan/distributed/sequence_parallel.py``, rank 0's view): ``e``/``e0`` are computed
  for the whole sequence first, then ``x`` (and a per-token ``e0``) are chunked; RoPE is applied to the local
  chunk; Ulysses' all-to-all gathers the sequence and scatters the heads of bf16 ``q``, ``k``, ``v`` before
  attention and back after it.

Only shapes, dtypes and the order of allocations and frees matter here; the arithmetic is the reference's so
that a real CPU run of a small model reproduces the trace byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

BF16 = torch.bfloat16
F32 = torch.float32


@dataclass(frozen=True)
class WanShape:
    """The architecture of one Wan DiT (``wan/configs``) and which code generation runs it."""

    dim: int
    ffn_dim: int
    heads: int
    layers: int
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    patch: tuple[int, int, int] = (1, 2, 2)
    per_token_time: bool = True  # Wan2.2's code: the timestep is expanded to every token


def _lin(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A linear layer under CUDA autocast to bf16: the input is cast, the output is bf16."""
    assert isinstance(layer, nn.Linear)
    return nn.functional.linear(x.to(BF16), layer.weight, layer.bias)


def _lin32(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A linear layer inside an fp32 autocast region: input and (a transient copy of) the weight in fp32."""
    assert isinstance(layer, nn.Linear)
    bias = layer.bias.float() if layer.bias is not None else None
    return nn.functional.linear(x.float(), layer.weight.float(), bias)


def _half(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (BF16, torch.float16) else x.to(BF16)


class RmsNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.float()
        return (f * torch.rsqrt(f.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = False) -> None:
        super().__init__(dim, elementwise_affine=affine, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # layer_norm is an fp32 op under autocast: its affine weights are cast too
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return nn.functional.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def rope_params(max_len: int, dim: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = torch.outer(torch.arange(max_len), 1.0 / torch.pow(theta, torch.arange(0, dim, 2).to(torch.float64) / dim))
    return torch.polar(torch.ones_like(freqs), freqs)


class Rope(nn.Module):
    """``rope_apply``: float64 complex rotation of each sample's tokens, then ``.float()``.

    Under sequence parallelism (``sequence_parallel.rope_apply``) the frequencies of the whole sequence are
    built, padded to ``local * sp`` with ``pad_freqs`` and sliced to the rank's share.
    """

    def __init__(self, sp: int = 1) -> None:
        super().__init__()
        self.sp = sp

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int], freqs: torch.Tensor) -> torch.Tensor:
        s, n, c = x.size(1), x.size(2), x.size(3) // 2
        parts = torch.split(freqs, [c - 2 * (c // 3), c // 3, c // 3], dim=1)
        f, h, w = grid
        seq = f * h * w if self.sp == 1 else s
        out = []
        for i in range(x.size(0)):
            xi = torch.view_as_complex(x[i, :seq].to(torch.float64).reshape(seq, n, -1, 2))
            fi = torch.cat(
                [
                    parts[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
                    parts[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
                    parts[2][:w].view(1, 1, w, -1).expand(f, h, w, -1),
                ],
                dim=-1,
            ).reshape(f * h * w, 1, -1)
            if self.sp > 1:  # pad_freqs, then rank 0's slice
                pad = torch.ones(s * self.sp - fi.size(0), *fi.shape[1:], dtype=fi.dtype, device=fi.device)
                fi = torch.cat([fi, pad], dim=0)[:s]
            xi = torch.view_as_real(xi * fi).flatten(2)
            xi = torch.cat([xi, x[i, seq:]])  # the reference reuses one name: the product is freed here
            out.append(xi)
        return torch.stack(out).float()


class FlashAttention(nn.Module):
    """``flash_attention``: bf16 copies of q, k, v, a fused kernel, the output cast back to q's dtype."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_lens: bool) -> torch.Tensor:
        b, lq, out_dtype = q.size(0), q.size(1), q.dtype
        q = _half(q.flatten(0, 1))
        if k_lens:
            k = _half(torch.cat([u for u in k]))
            v = _half(torch.cat([u for u in v]))
        else:
            k, v = _half(k.flatten(0, 1)), _half(v.flatten(0, 1))
        x = nn.functional.scaled_dot_product_attention(
            torch.unflatten(q, 0, (b, -1)).transpose(1, 2),
            torch.unflatten(k, 0, (b, -1)).transpose(1, 2),
            torch.unflatten(v, 0, (b, -1)).transpose(1, 2),
        ).transpose(1, 2)
        return x.reshape(b, lq, *x.shape[2:]).type(out_dtype)


def all_to_all(x: torch.Tensor, sp: int, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """``util.all_to_all`` on rank 0: contiguous chunks, received buffers, concatenated (rank 0 receives its
    own chunk from every peer here, so the sizes and the copies are the reference's)."""
    inputs = [u.contiguous() for u in x.chunk(sp, dim=scatter_dim)]
    outputs = [torch.empty_like(u) for u in inputs]
    for received, sent in zip(outputs, inputs, strict=True):
        received.copy_(sent)
    return torch.cat(outputs, dim=gather_dim).contiguous()


class DistributedAttention(nn.Module):
    """``ulysses.distributed_attention``: gather the sequence and scatter the heads, attend, and back."""

    def __init__(self, sp: int) -> None:
        super().__init__()
        self.sp = sp
        self.attn = FlashAttention()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (all_to_all(t, self.sp, 2, 1) for t in (q, k, v))
        x = self.attn(q, k, v, k_lens=True)
        return all_to_all(x, self.sp, 1, 2)


class SelfAttention(nn.Module):
    """``WanSelfAttention.forward`` (``sp_attn_forward`` under sequence parallelism)."""

    def __init__(self, dim: int, heads: int, sp: int = 1) -> None:
        super().__init__()
        self.heads, self.head_dim, self.sp = heads, dim // heads, sp
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RmsNorm(dim), RmsNorm(dim)
        self.rope = Rope(sp)
        self.attn: nn.Module = DistributedAttention(sp) if sp > 1 else FlashAttention()

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int], freqs: torch.Tensor) -> torch.Tensor:
        b, s, n, d = x.size(0), x.size(1), self.heads, self.head_dim
        q = self.norm_q(_lin(self.q, x)).view(b, s, n, d)
        k = self.norm_k(_lin(self.k, x)).view(b, s, n, d)
        v = _lin(self.v, x).view(b, s, n, d)
        q = self.rope(q, grid, freqs)
        k = self.rope(k, grid, freqs)
        y = self.attn(_half(q), _half(k), _half(v)) if self.sp > 1 else self.attn(q, k, v, k_lens=True)
        return _lin(self.o, y.flatten(2))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RmsNorm(dim), RmsNorm(dim)
        self.attn = FlashAttention()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, d = x.size(0), self.heads, self.head_dim
        q = self.norm_q(_lin(self.q, x)).view(b, -1, n, d)
        k = self.norm_k(_lin(self.k, context)).view(b, -1, n, d)
        v = _lin(self.v, context).view(b, -1, n, d)
        return _lin(self.o, self.attn(q, k, v, k_lens=False).flatten(2))


class Ffn(nn.Module):
    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _lin(self.fc2, nn.functional.gelu(_lin(self.fc1, x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, shape: WanShape, sp: int) -> None:
        super().__init__()
        dim = shape.dim
        self.norm1, self.norm2 = LayerNorm(dim), LayerNorm(dim)
        self.norm3 = LayerNorm(dim, affine=True)  # cross_attn_norm=True in every Wan config
        self.self_attn = SelfAttention(dim, shape.heads, sp)
        self.cross_attn = CrossAttention(dim, shape.heads)
        self.ffn = Ffn(dim, shape.ffn_dim)
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        grid: tuple[int, int, int],
        freqs: torch.Tensor,
        context: torch.Tensor,
    ) -> torch.Tensor:
        # Wan2.2: e0 [B, L, 6, dim], chunks [B, L, 1, dim]; Wan2.1: e0 [B, 6, dim], chunks [B, 1, dim]
        if e0.dim() == 4:
            e = [c.squeeze(2) for c in (self.modulation.unsqueeze(0) + e0).chunk(6, dim=2)]
        else:
            e = list((self.modulation + e0).chunk(6, dim=1))
        y = self.self_attn(self.norm1(x).float() * (1 + e[1]) + e[0], grid, freqs)
        x = x + y * e[2]
        x = x + self.cross_attn(self.norm3(x), context)
        z: torch.Tensor = self.ffn(self.norm2(x).float() * (1 + e[4]) + e[3])
        return x + z * e[5]


class Head(nn.Module):
    def __init__(self, shape: WanShape) -> None:
        super().__init__()
        self.norm = LayerNorm(shape.dim)
        self.head = nn.Linear(shape.dim, math.prod(shape.patch) * shape.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, shape.dim) / shape.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # fp32 autocast region: the projection runs in fp32 (its bf16 weight is cast for the call)
        if e.dim() == 3:
            m = (self.modulation.unsqueeze(0) + e.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = m[0].squeeze(2), m[1].squeeze(2)
        else:
            m = (self.modulation + e.unsqueeze(1)).chunk(2, dim=1)
            shift, scale = m[0], m[1]
        return _lin32(self.head, self.norm(x) * (1 + scale) + shift)


def sinusoidal(dim: int, position: torch.Tensor) -> torch.Tensor:
    half = dim // 2
    position = position.type(torch.float64)
    sinusoid = torch.outer(position, torch.pow(10000, -torch.arange(half).to(position).div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


class WanReferenceDiT(nn.Module):
    """One Wan DiT as ``generate.py`` runs it; ``sp`` > 1 traces rank 0 of a Ulysses sequence-parallel run."""

    def __init__(self, shape: WanShape, sp: int = 1) -> None:
        super().__init__()
        self.shape, self.sp = shape, sp
        dim = shape.dim
        self.patch_embedding = nn.Conv3d(shape.in_dim, dim, kernel_size=shape.patch, stride=shape.patch)
        self.text_embedding = nn.Sequential(nn.Linear(shape.text_dim, dim), nn.GELU("tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(shape.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(Block(shape, sp) for _ in range(shape.layers))
        self.head = Head(shape)
        d = dim // shape.heads
        self.freqs = torch.cat(
            [rope_params(1024, d - 4 * (d // 6)), rope_params(1024, 2 * (d // 6)), rope_params(1024, 2 * (d // 6))],
            dim=1,
        )

    def forward(self, latent: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``latent`` [C, F, H, W] (fp32), ``t`` [1], ``context`` [text tokens, text_dim] (bf16); batch one."""
        shape, sp = self.shape, self.sp
        x = self.patch_embedding(latent.unsqueeze(0).to(BF16))
        f, h, w = x.shape[2:]
        grid = (int(f), int(h), int(w))
        x = x.flatten(2).transpose(1, 2)
        seq_len = -(-x.size(1) // sp) * sp
        x = torch.cat([x, x.new_zeros(1, seq_len - x.size(1), x.size(2))], dim=1)
        # time embeddings, fp32 autocast region (the sinusoid in float64)
        tt = t.expand(1, seq_len).flatten() if shape.per_token_time else t
        s = sinusoidal(shape.freq_dim, tt).float()
        e = _lin32(self.time_embedding[2], self.time_embedding[1](_lin32(self.time_embedding[0], s)))
        e0 = _lin32(self.time_projection[1], self.time_projection[0](e))
        if shape.per_token_time:
            e = torch.unflatten(e, 0, (1, seq_len))
            e0 = torch.unflatten(torch.unflatten(e0, 0, (1, seq_len)), 2, (6, shape.dim))
        else:
            e0 = torch.unflatten(e0, 1, (6, shape.dim))
        pad = context.new_zeros(shape.text_len - context.size(0), context.size(1))
        ctx = _lin(self.text_embedding[0], torch.stack([torch.cat([context, pad])]))
        ctx = _lin(self.text_embedding[2], self.text_embedding[1](ctx))
        if sp > 1:  # rank 0 keeps the first chunk of the tokens and of a per-token e, e0 (views)
            x = torch.chunk(x, sp, dim=1)[0]
            if shape.per_token_time:
                e, e0 = torch.chunk(e, sp, dim=1)[0], torch.chunk(e0, sp, dim=1)[0]
        for block in self.blocks:
            x = block(x, e0, grid, self.freqs, ctx)
        x = self.head(x, e)
        if sp > 1:  # gather_forward: the whole sequence
            x = torch.cat([x] * sp, dim=1)
        c = shape.out_dim
        pt, ph, pw = shape.patch
        u = x[0, : f * h * w].view(f, h, w, pt, ph, pw, c)
        u = torch.einsum("fhwpqrc->cfphqwr", u).reshape(c, f * pt, h * ph, w * pw)
        return u.float()
