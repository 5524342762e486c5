"""Requirements and plans: what a run needs, and the parameters that make it fit."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from vramgate.messages._base import MB, Fraction, Ident, Message, Seconds
from vramgate.messages.requests import LoraSpec, OptimizationLevel, ParamDtype, RunnerName, Task

QualityImpact = Literal["none", "low", "medium", "high"]
Value = str | int | float | bool | None


class Component(Message, frozen=True):
    """One part of a requirement: resident weights, activations, VAE decode, text encoder, runtime overhead."""

    name: str
    vram_mb: MB = 0
    ram_mb: MB = 0
    seconds: Seconds = 0.0
    note: str = ""


class ResourceRequirement(Message, frozen=True):
    """What a run needs: peak VRAM per GPU, peak host RAM and total time, with their components.

    ``confidence`` is in [0, 1]; ``correction`` is the learned observed/predicted factor applied to ``vram_mb``.
    ``time_low_s`` / ``time_high_s``: the interval the time is expected within (``None``: only the point is known;
    :mod:`vramgate.policy.timing` gives it). ``load_time_s`` is its own term, not in the time: what a cold start
    adds to it by reading the weights from disk (the time assumes them loaded, as the published timings do); a
    device where the model is resident saves it (see :mod:`vramgate.policy._resident`).
    """

    vram_mb: MB
    ram_mb: MB
    estimated_time_seconds: Seconds
    optimization_level: OptimizationLevel = "none"
    components: tuple[Component, ...] = ()
    gpu: str = ""
    world_size: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    confidence: Fraction = 0.5
    correction: Annotated[float, msgspec.Meta(gt=0.0)] = 1.0
    time_low_s: Seconds | None = None
    time_high_s: Seconds | None = None
    load_time_s: Seconds = 0.0


class ResolvedOptions(Message, frozen=True):
    """Every run option decided: what the run will actually use."""

    offload_model: bool = False
    convert_model_dtype: bool = False
    t5_cpu: bool = False
    vae_tiling: bool = False
    dit_fsdp: bool = False
    t5_fsdp: bool = False
    ulysses: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    gpus: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    resident_blocks: Annotated[int, msgspec.Meta(ge=0, le=1024)] | None = None
    sequential_offload: bool = False
    dit_dtype: ParamDtype = "bf16"
    runner: RunnerName = "generate.py"
    free_text_encoder: bool = False
    one_expert_in_ram: bool = False


class RunParams(Message, frozen=True):
    """The concrete parameters of a run: a request with every default filled in and every option decided."""

    model: str
    task: Task
    width: Annotated[int, msgspec.Meta(gt=0)]
    height: Annotated[int, msgspec.Meta(gt=0)]
    frames: Annotated[int, msgspec.Meta(ge=1)]
    steps: Annotated[int, msgspec.Meta(ge=1)]
    fps: Annotated[int, msgspec.Meta(ge=1)] = 16
    guidance_scale: float | None = None
    lora: tuple[LoraSpec, ...] = ()
    options: ResolvedOptions = ResolvedOptions()


class OptimizationSuggestion(Message, frozen=True):
    """One change the optimizer made (or proposes), with its saving, its cost and a sentence a user understands."""

    parameter: str
    current: Value
    suggested: Value
    reason: str
    vram_saved_mb: int = 0
    time_added_s: float = 0.0
    quality_impact: QualityImpact = "none"
    level: OptimizationLevel = "basic"
    ram_saved_mb: int = 0


class Plan(Message, frozen=True):
    """The parameters to run with, what they need, and how they differ from the request.

    ``fits`` says whether ``requirement`` fits ``budget_mb`` (per GPU) and the host RAM budget.
    """

    params: RunParams
    requirement: ResourceRequirement
    request_id: Ident = ""
    suggestions: tuple[OptimizationSuggestion, ...] = ()
    level: OptimizationLevel = "none"
    fits: bool = True
    budget_mb: MB | None = None
    ram_budget_mb: MB | None = None
    gpu: str = ""
