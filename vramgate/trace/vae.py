"""Trace a VAE decode and turn its peak live bytes into bytes per output pixel (and per pixel of every frame).

A video VAE decodes a frame chunk at a time, so its working memory grows with the pixels of one frame, and it
holds the decoded video, which grows with pixels times frames. Three decodes (two sizes at one length, and the
larger size at a second length) separate the two. The model is built from its configuration on the meta
device, in fp32 as the pipelines run it; ``device="cpu"`` runs it for real (the tests compare both).
"""

from __future__ import annotations

from typing import Any

import torch

from vramgate.policy.models import VaeDecodeTerm
from vramgate.trace._live import EfficientAttention, LiveBytes
from vramgate.trace.dit import Grid, Point


def decode_peak(vae: torch.nn.Module, latents: torch.Tensor, pixels: int) -> Point:
    """The peak live bytes of ``vae.decode(latents)`` (the latents themselves not counted)."""
    live = LiveBytes()
    with torch.no_grad(), EfficientAttention(), live, live.watching(vae):
        out = vae.decode(latents)  # type: ignore[operator]
        del out
    return Point(tokens=pixels, peak_bytes=live.peak, label=live.peak_label)


def trace_vae_decode(
    vae_cls: type[Any],
    config: dict[str, Any],
    grids: tuple[Grid, Grid, Grid],
    stride: tuple[int, int, int],
    *,
    channels: int,
    device: str = "meta",
    source: str = "",
) -> tuple[VaeDecodeTerm, list[Point]]:
    """Decode three latent grids: the first two of one length and two sizes, the third the second's size at
    another length. Raises ``ValueError`` when the peak is not reached in the same module in all three."""
    dev = torch.device(device)
    with dev:
        vae = vae_cls.from_config(config).eval()
    points = []
    frames = []
    for t, h, w in grids:
        latents = torch.zeros(1, channels, t, h, w, device=dev)
        pixels = h * stride[1] * w * stride[2]
        frames.append((t - 1) * stride[0] + 1)
        points.append(decode_peak(vae, latents, pixels))
    (p1, p2, p3), (f1, f2, f3) = points, frames
    if len({p.label for p in points}) != 1 or f1 != f2 or f3 == f2 or p1.tokens == p2.tokens:
        raise ValueError(f"VAE decode peaks do not line up: {points} at frames {frames}")
    per_pixel_frame = (p3.peak_bytes - p2.peak_bytes) / (p2.tokens * (f3 - f2))
    per_pixel = (p2.peak_bytes - p1.peak_bytes) / (p2.tokens - p1.tokens) - per_pixel_frame * f1
    term = VaeDecodeTerm(
        bytes_per_pixel=round(max(per_pixel, 0.0), 1),
        bytes_per_pixel_frame=round(max(per_pixel_frame, 0.0), 2),
        peak_phase=p2.label,
        source=source or f"vramgate profile trace: {vae_cls.__name__}.decode",
    )
    return term, points


__all__ = ["decode_peak", "trace_vae_decode"]
