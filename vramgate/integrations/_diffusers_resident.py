"""A diffusers pipeline's weights as a resident model: measured per component and declared to a gate.

A server that keeps a pipeline loaded between runs declares it once (:func:`declare_pipeline`); admission then
counts its weights as resident on the device and each run reserves only its working memory there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vramgate.integrations import _diffusers_placement as _place
from vramgate.messages import ModelLoaded, ParamDtype

if TYPE_CHECKING:
    import torch

    from vramgate.gate import Gate

_MIB = 1 << 20


@dataclass(frozen=True)
class PipelineMemory:
    """What a pipeline's weights (parameters and buffers) hold, in MiB rounded up per component.

    ``vram_mb`` is what lies on the device the weights count for, ``ram_mb`` what lies in host RAM, by
    component in ``vram_by_component`` and ``ram_by_component``; ``dtype`` is the transformer's.
    """

    vram_mb: int
    ram_mb: int
    vram_by_component: dict[str, int]
    ram_by_component: dict[str, int]
    dtype: ParamDtype


def pipeline_memory(pipe: Any, device: str | torch.device) -> PipelineMemory:
    """Measure ``pipe``'s weights: what lies on ``device`` counts as its VRAM, what lies on the CPU as host RAM."""
    import torch

    on = torch.device(device)
    vram: dict[str, int] = {}
    ram: dict[str, int] = {}
    for name, module in _place.modules(pipe).items():
        here = there = 0
        for tensor in (*module.parameters(), *module.buffers()):
            size = tensor.numel() * tensor.element_size()
            if _same(tensor.device, on):
                here += size
            elif tensor.device.type == "cpu":
                there += size
        if here:
            vram[name] = math.ceil(here / _MIB)
        if there:
            ram[name] = math.ceil(there / _MIB)
    return PipelineMemory(
        vram_mb=sum(vram.values()),
        ram_mb=sum(ram.values()),
        vram_by_component=vram,
        ram_by_component=ram,
        dtype=_dit_dtype(pipe),
    )


async def declare_pipeline(
    gate: Gate,
    pipe: Any,
    *,
    model: str,
    device: int,
    weights_on: str | torch.device | None = None,
    owner: str = "",
) -> ModelLoaded:
    """Declare ``pipe`` resident on the gate's ``device`` as ``model``, with its measured weights.

    The weights count as the device's where they lie on ``weights_on`` (default: that CUDA device, or the CPU
    for a simulated GPU, where torch runs a simulated device's work); what lies on the CPU otherwise counts as
    host RAM. The dtype is the transformer's.
    """
    if weights_on is None:
        weights_on = "cpu" if gate.simulated_device(device) is not None else f"cuda:{device}"
    measured = pipeline_memory(pipe, weights_on)
    components = tuple(dict.fromkeys((*measured.vram_by_component, *measured.ram_by_component)))
    return await gate.declare_loaded(
        model,
        device=device,
        vram_mb=measured.vram_mb,
        ram_mb=measured.ram_mb if not _same_type(weights_on, "cpu") else 0,
        dtype=measured.dtype,
        components=components,
        owner=owner,
    )


def _same(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    return (a.index or 0) == (b.index or 0)


def _same_type(device: str | torch.device, kind: str) -> bool:
    import torch

    return torch.device(device).type == kind


def _dit_dtype(pipe: Any) -> ParamDtype:
    import torch

    names: dict[Any, ParamDtype] = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    float8 = getattr(torch, "float8_e4m3fn", None)
    if float8 is not None:
        names[float8] = "fp8"
    for name in _place.DIT_NAMES:
        module = _place.modules(pipe).get(name)
        if module is None:
            continue
        for param in module.parameters():
            if param.dtype in names:
                return names[param.dtype]
    return "bf16"
