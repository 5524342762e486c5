"""Requests: what a generation server asks vramgate to run."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from vramgate.messages._base import MB, Ident, Message

OptimizationLevel = Literal["none", "basic", "aggressive", "maximum"]
#: The levels in order: each allows everything the one before it does, and more.
LEVELS: tuple[OptimizationLevel, ...] = ("none", "basic", "aggressive", "maximum")

Task = Literal["t2v", "i2v"]
ParamDtype = Literal["fp32", "bf16", "fp16", "fp8"]
#: The code that runs a generation: Wan's reference ``generate.py``, a diffusers pipeline, or DiffSynth-Studio.
#: Each holds a different amount of activation memory per token, so a plan is priced for its runner.
RunnerName = Literal["generate.py", "diffusers", "diffsynth"]
RUNNER_NAMES: tuple[RunnerName, ...] = ("generate.py", "diffusers", "diffsynth")

Pixels = Annotated[int, msgspec.Meta(gt=0, le=16384)]


def level_index(level: OptimizationLevel) -> int:
    """Position of ``level`` in :data:`LEVELS` (``none`` is 0)."""
    return LEVELS.index(level)


class LoraSpec(Message, frozen=True):
    """A LoRA adapter applied to the DiT. Its size is taken from ``size_mb`` or estimated from ``rank``."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    rank: Annotated[int, msgspec.Meta(ge=1, le=4096)] | None = None
    scale: Annotated[float, msgspec.Meta(ge=-100.0, le=100.0)] = 1.0
    size_mb: MB | None = None


class RunOptions(Message, frozen=True):
    """Run options of the Wan2.2 ``generate.py`` family. ``None`` means "not pinned: the optimizer chooses".

    ``gpus`` is the world size of a multi-GPU run; ``resident_blocks`` enables block (group) offloading of the
    DiT with that many transformer blocks kept on the GPU; ``sequential_offload`` streams every layer.
    ``runner`` names the code that will run the plan (default ``generate.py``); the optimizer never changes it.
    """

    offload_model: bool | None = None
    convert_model_dtype: bool | None = None
    t5_cpu: bool | None = None
    vae_tiling: bool | None = None
    dit_fsdp: bool | None = None
    t5_fsdp: bool | None = None
    ulysses: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    gpus: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    resident_blocks: Annotated[int, msgspec.Meta(ge=0, le=1024)] | None = None
    sequential_offload: bool | None = None
    dit_dtype: ParamDtype | None = None
    runner: RunnerName | None = None


class GenerationRequest(Message, frozen=True):
    """One generation: "t2v-A14B at 1280x720, 81 frames, 40 steps".

    Give ``frames`` (4k+1 for Wan) or ``duration_s`` (with ``fps``, default the model's); ``steps`` and ``task``
    default from the model profile. ``priority``: higher runs first. ``max_level`` bounds what the optimizer may
    change: ``basic`` (the default) never lowers quality.
    """

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    width: Pixels
    height: Pixels
    request_id: Ident = ""
    task: Task | None = None
    frames: Annotated[int, msgspec.Meta(ge=1, le=10001)] | None = None
    duration_s: Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)] | None = None
    fps: Annotated[int, msgspec.Meta(ge=1, le=240)] | None = None
    steps: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    guidance_scale: Annotated[float, msgspec.Meta(ge=0.0, le=100.0)] | None = None
    lora: tuple[LoraSpec, ...] = ()
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0
    max_level: OptimizationLevel = "basic"
    options: RunOptions | None = None
    max_wait_s: Annotated[float, msgspec.Meta(gt=0.0)] | None = None
    prompt: Annotated[str, msgspec.Meta(max_length=20000)] = ""

    def __post_init__(self) -> None:
        if self.frames is not None and self.duration_s is not None:
            raise ValueError("give either `frames` or `duration_s`, not both")
        if self.fps is not None and self.duration_s is None and self.frames is None:
            raise ValueError("`fps` needs `duration_s`")
