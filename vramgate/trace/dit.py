"""Trace one denoising forward of a DiT and turn its peak live bytes into a per-token activation term.

A model is built from its configuration on the meta device (no memory, no weights to download), its weights
cast as a runner loads them, and one forward is run per token count under :class:`~vramgate.trace._live.LiveBytes`
with memory-efficient attention forced. Peak live bytes are linear in the sequence length, so two token counts
give the slope (bytes per token) and the intercept (bytes that do not grow with the sequence). For Wan's own code
a third forward, as rank 0 of a two-way sequence-parallel run, splits the slope into what each GPU holds for
its share of the tokens and what it holds for the whole sequence.

The same functions run on real CPU tensors (``device="cpu"``), which is how the tests check the meta trace
byte for byte against a real run of a small model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vramgate.policy.models import ActivationTerm
from vramgate.trace._live import EfficientAttention, LiveBytes
from vramgate.trace.wan_reference import WanReferenceDiT, WanShape

#: A latent grid: (latent frames, latent height, latent width), before the DiT's patching.
Grid = tuple[int, int, int]
#: Builds a forward's keyword arguments for a latent grid on a device.
InputBuilder = Callable[[Grid, torch.device], dict[str, Any]]

#: Default latent grids of a full-size trace: 832x480x81 and 1280x720x81 for a Wan2.1-VAE model.
DEFAULT_GRIDS: tuple[Grid, Grid] = ((21, 60, 104), (21, 90, 160))


@dataclass(frozen=True)
class Point:
    """One traced forward: its token count, the peak live bytes above what existed before it, and where."""

    tokens: int
    peak_bytes: int
    label: str


def tokens_of(grid: Grid, patch: tuple[int, int, int]) -> int:
    """DiT tokens of a latent grid: each axis divided by the patch (rounded up in time)."""
    return -(-grid[0] // patch[0]) * (grid[1] // patch[1]) * (grid[2] // patch[2])


def cast_as_loaded(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast floating weights to ``dtype``, except the modules the model keeps in fp32 (as ``from_pretrained``)."""
    keep: Sequence[str] = getattr(model, "_keep_in_fp32_modules", None) or ()
    for name, module in model.named_modules():
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for local, tensor in tensors:
            full = f"{name}.{local}" if name else local
            want = torch.float32 if any(k in full.split(".") for k in keep) else dtype
            if tensor.is_floating_point() and tensor.dtype != want:
                tensor.data = tensor.data.to(want)
    return model


def weight_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters, bytes) of ``model``'s parameters and buffers as they are stored."""
    params = sum(p.numel() for p in model.parameters())
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    stored += sum(b.numel() * b.element_size() for b in model.buffers())
    return params, stored


def measure(model: torch.nn.Module, inputs: dict[str, Any], tokens: int) -> Point:
    """Run ``model(**inputs)`` once under the live-bytes mode; the peak counts only what the forward made."""
    live = LiveBytes()
    with torch.no_grad(), EfficientAttention(), live, live.watching(model):
        out = model(**inputs)
        del out
    return Point(tokens=tokens, peak_bytes=live.peak, label=live.peak_label)


def linear_term(low: Point, high: Point, *, source: str, split: Point | None = None, sp: int = 2) -> ActivationTerm:
    """The activation term through two points; ``split`` (the high point's tokens on ``sp`` GPUs) separates
    the per-GPU share from what every GPU holds for the whole sequence."""
    if high.tokens == low.tokens:
        raise ValueError("two different token counts are needed")
    if low.label != high.label:
        raise ValueError(
            f"the peak moved from {low.label or 'the top level'} at {low.tokens} tokens to "
            f"{high.label or 'the top level'} at {high.tokens}: trace larger grids"
        )
    slope = (high.peak_bytes - low.peak_bytes) / (high.tokens - low.tokens)
    fixed = max(0.0, low.peak_bytes - slope * low.tokens)
    full = 0.0
    if split is not None:
        # high = (local + full) * N + fixed; split = local * N / sp + full * N + fixed
        local = (high.peak_bytes - split.peak_bytes) / (high.tokens * (1.0 - 1.0 / sp))
        local = min(max(local, 0.0), slope)
        full = slope - local
        slope = local
    return ActivationTerm(
        bytes_per_token=round(slope, 2),
        bytes_per_full_token=round(full, 2),
        fixed_bytes=round(fixed),
        peak_phase=high.label,
        source=source,
    )


# --------------------------------------------------------------------------- Wan's generate.py


def wan_inputs(shape: WanShape) -> InputBuilder:
    def build(grid: Grid, device: torch.device) -> dict[str, Any]:
        return {
            "latent": torch.zeros(shape.in_dim, *grid, device=device),
            "t": torch.full((1,), 999.0, device=device),
            "context": torch.zeros(shape.text_len, shape.text_dim, dtype=torch.bfloat16, device=device),
        }

    return build


def trace_wan_reference(
    shape: WanShape,
    grids: tuple[Grid, Grid] = DEFAULT_GRIDS,
    *,
    device: str = "meta",
    sp: int = 2,
) -> tuple[ActivationTerm, list[Point]]:
    """The ``generate.py`` activation term of a Wan DiT (bf16 weights, as ``--convert_model_dtype`` loads them)."""
    dev = torch.device(device)
    build = wan_inputs(shape)
    points = []
    for sp_size in (1, sp):
        with dev:
            model = WanReferenceDiT(shape, sp=sp_size).to(torch.bfloat16).eval()
        for grid in grids if sp_size == 1 else grids[1:]:
            points.append(measure(model, build(grid, dev), tokens_of(grid, shape.patch)))
    family = "Wan2.2" if shape.per_token_time else "Wan2.1"
    term = linear_term(
        points[0],
        points[1],
        split=points[2] if sp > 1 else None,
        sp=sp,
        source=f"vramgate profile trace: {family} wan/modules/model.py restated (vramgate.trace.wan_reference)",
    )
    return term, points


# --------------------------------------------------------------------------- diffusers


def trace_diffusers(
    model_cls: type[Any],
    config: dict[str, Any],
    inputs: InputBuilder,
    grids: tuple[Grid, Grid],
    patch: tuple[int, int, int],
    *,
    device: str = "meta",
    dtype: torch.dtype = torch.bfloat16,
) -> tuple[ActivationTerm, list[Point], tuple[int, int]]:
    """The diffusers activation term of ``model_cls`` built from ``config``; also (params, weight bytes)."""
    dev = torch.device(device)
    with dev:
        model = cast_as_loaded(model_cls.from_config(config), dtype).eval()
    points = []
    for grid in grids:
        points.append(measure(model, inputs(grid, dev), tokens_of(grid, patch)))
    term = linear_term(points[0], points[1], source=f"vramgate profile trace: diffusers {model_cls.__name__}")
    return term, points, weight_bytes(model)


__all__ = [
    "DEFAULT_GRIDS",
    "Grid",
    "Point",
    "cast_as_loaded",
    "linear_term",
    "measure",
    "tokens_of",
    "trace_diffusers",
    "trace_wan_reference",
    "weight_bytes",
]
