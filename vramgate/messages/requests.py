"""Requests: what a generation server asks vramgate to run.

Each field's meaning is its ``msgspec.Meta(description=...)``: the example server's OpenAPI document and the
README's request table publish it (:mod:`vramgate.server.openapi`). A description adds no constraint.
"""

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


def _means(text: str) -> msgspec.Meta:
    """A field's meaning, as the OpenAPI document and the README's request table publish it (no constraint)."""
    return msgspec.Meta(description=text)


class LoraSpec(Message, frozen=True):
    """A LoRA adapter applied to the DiT. Its size is taken from ``size_mb`` or estimated from ``rank``."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256), _means("adapter name")]
    rank: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=4096)] | None,
        _means("adapter rank: its size is estimated from it when `size_mb` is not given"),
    ] = None
    scale: Annotated[float, msgspec.Meta(ge=-100.0, le=100.0), _means("adapter strength")] = 1.0
    size_mb: Annotated[MB | None, _means("adapter size in MiB")] = None


class RunOptions(Message, frozen=True):
    """Run options of the Wan2.2 ``generate.py`` family. ``None`` means "not pinned: the optimizer chooses".

    ``gpus`` is the world size of a multi-GPU run; ``resident_blocks`` enables block (group) offloading of the
    DiT with that many transformer blocks kept on the GPU; ``sequential_offload`` streams every layer.
    ``runner`` names the code that will run the plan (default ``generate.py``); the optimizer never changes it.
    ``free_text_encoder`` and ``one_expert_in_ram`` are host RAM techniques: the text encoder is dropped after
    encoding; only the expert in use is held, the next one read from the checkpoint at the boundary.
    """

    offload_model: Annotated[
        bool | None, _means("move each model to the CPU after its phase (`generate.py --offload_model`)")
    ] = None
    convert_model_dtype: Annotated[
        bool | None, _means("convert the weights to the model's param dtype (`generate.py --convert_model_dtype`)")
    ] = None
    t5_cpu: Annotated[bool | None, _means("run the text encoder on the CPU")] = None
    vae_tiling: Annotated[bool | None, _means("decode the video in tiles")] = None
    dit_fsdp: Annotated[bool | None, _means("shard the DiT across `gpus`")] = None
    t5_fsdp: Annotated[bool | None, _means("shard the text encoder across `gpus`")] = None
    ulysses: Annotated[Annotated[int, msgspec.Meta(ge=1, le=64)] | None, _means("sequence-parallel degree")] = None
    gpus: Annotated[Annotated[int, msgspec.Meta(ge=1, le=64)] | None, _means("world size of a multi-GPU run")] = None
    resident_blocks: Annotated[
        Annotated[int, msgspec.Meta(ge=0, le=1024)] | None, _means("offload DiT blocks, keeping this many on the GPU")
    ] = None
    sequential_offload: Annotated[bool | None, _means("stream every layer to the GPU as it runs")] = None
    dit_dtype: Annotated[ParamDtype | None, _means("the DiT weights' dtype")] = None
    runner: Annotated[
        RunnerName | None,
        _means(
            "the code that runs the plan (`generate.py`, the default; `diffusers`; `diffsynth`): it sets the "
            "activation memory the plan is priced for"
        ),
    ] = None
    free_text_encoder: Annotated[
        bool | None,
        _means("free the text encoder once the prompt is encoded: its memory is gone for the rest of the run"),
    ] = None
    one_expert_in_ram: Annotated[
        bool | None,
        _means(
            "keep one MoE expert in host RAM at a time, loading the other from the checkpoint at the expert "
            "boundary (models with several experts)"
        ),
    ] = None


class GenerationRequest(Message, frozen=True):
    """One generation: "t2v-A14B at 1280x720, 81 frames, 40 steps".

    Give ``frames`` (4k+1 for Wan) or ``duration_s`` (with ``fps``, default the model's); ``steps`` and ``task``
    default from the model profile. ``priority``: higher runs first. ``max_level`` bounds what the optimizer may
    change: ``basic`` (the default) never lowers quality.
    """

    model: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=128),
        _means(
            "model profile: a built-in (`t2v-A14B`, `i2v-A14B`, `ti2v-5B`, `wan2.1-t2v-14B`, `wan2.1-i2v-14B`, "
            "`wan2.1-t2v-1.3B`) or a registered one"
        ),
    ]
    width: Annotated[Pixels, _means("frame width in pixels")]
    height: Annotated[Pixels, _means("frame height in pixels")]
    request_id: Annotated[Ident, _means("the caller's id (the example server ignores it and gives its own)")] = ""
    task: Annotated[Task | None, _means("`t2v` or `i2v`; null: the model's default task")] = None
    frames: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=10001)] | None,
        _means("frames to generate (4k+1 for Wan); null: from `duration_s`, else the model's default"),
    ] = None
    duration_s: Annotated[
        Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)] | None, _means("clip length in seconds, instead of `frames`")
    ] = None
    fps: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=240)] | None,
        _means("frames per second with `duration_s`; null: the model's"),
    ] = None
    steps: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=1000)] | None, _means("denoising steps; null: the model's default")
    ] = None
    guidance_scale: Annotated[
        Annotated[float, msgspec.Meta(ge=0.0, le=100.0)] | None,
        _means("classifier-free guidance scale; null: the model's default"),
    ] = None
    lora: Annotated[tuple[LoraSpec, ...], _means("LoRA adapters applied to the DiT (`lora[].*` below)")] = ()
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000), _means("higher runs first")] = 0
    max_level: Annotated[
        OptimizationLevel,
        _means(
            "how far the optimizer may go: `none` changes nothing, `basic` memory techniques only (no "
            "quality loss), `aggressive` also fewer steps and shorter clips, `maximum` also smaller model sizes"
        ),
    ] = "basic"
    options: Annotated[
        RunOptions | None,
        _means("run options (`options.*` below); a value given is pinned, the optimizer never changes it"),
    ] = None
    max_wait_s: Annotated[
        Annotated[float, msgspec.Meta(gt=0.0)] | None,
        _means("end as `timed_out` if not admitted within this many seconds"),
    ] = None
    prompt: Annotated[
        str, msgspec.Meta(max_length=20000), _means("the text prompt (it does not change the memory a run needs)")
    ] = ""

    def __post_init__(self) -> None:
        if self.frames is not None and self.duration_s is not None:
            raise ValueError("give either `frames` or `duration_s`, not both")
        if self.fps is not None and self.duration_s is None and self.frames is None:
            raise ValueError("`fps` needs `duration_s`")
