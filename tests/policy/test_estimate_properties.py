"""Monotonicity of the estimate: bigger runs never cost less; memory techniques never raise VRAM."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vramgate.errors import InvalidParameter
from vramgate.messages import ResolvedOptions, RunParams
from vramgate.policy.estimate import Estimator

ESTIMATOR = Estimator()
GPUS = ["H100-80GB", "A100-80GB", "RTX4090-24GB", "L40S-48GB", "RTX5090-32GB"]


@st.composite
def runs(draw: st.DrawFn) -> tuple[RunParams, str]:
    model = draw(st.sampled_from(["t2v-A14B", "i2v-A14B", "ti2v-5B"]))
    profile = ESTIMATOR.models.get(model)
    m = profile.spatial_multiple
    task = draw(st.sampled_from(profile.tasks))
    world = draw(st.sampled_from([1, 2, 4, 8]))
    sharded = world > 1 and draw(st.booleans())
    t5_fsdp = world > 1 and draw(st.booleans())
    options = ResolvedOptions(
        offload_model=draw(st.booleans()),
        convert_model_dtype=draw(st.booleans()),
        t5_cpu=not t5_fsdp and draw(st.booleans()),
        vae_tiling=draw(st.booleans()),
        dit_fsdp=sharded,
        t5_fsdp=t5_fsdp,
        ulysses=draw(st.sampled_from([u for u in (1, 2, 4, 8) if world % u == 0 and profile.dit.heads % u == 0])),
        gpus=world,
        resident_blocks=draw(st.none() | st.integers(0, profile.dit.layers)),
        sequential_offload=draw(st.booleans()),
        dit_dtype=draw(st.sampled_from(["bf16", "fp8"])),
    )
    params = RunParams(
        model=model,
        task=task,
        width=m * draw(st.integers(4, 1920 // m)),
        height=m * draw(st.integers(4, 1088 // m)),
        frames=4 * draw(st.integers(0, 50)) + 1,
        steps=draw(st.integers(1, 60)),
        options=options,
    )
    return params, draw(st.sampled_from(GPUS))


def _estimate(params: RunParams, gpu: str) -> tuple[int, float]:
    req = ESTIMATOR.estimate(params, gpu)
    return req.vram_mb, req.estimated_time_seconds


@settings(max_examples=150, deadline=None)
@given(runs(), st.integers(1, 20), st.integers(1, 40), st.integers(1, 8), st.integers(1, 8))
def test_more_frames_steps_or_pixels_never_lower_the_estimate(
    run: tuple[RunParams, str], more_frames: int, more_steps: int, wider: int, taller: int
) -> None:
    params, gpu = run
    vram, seconds = _estimate(params, gpu)
    m = ESTIMATOR.models.get(params.model).spatial_multiple
    for bigger in (
        msgspec.structs.replace(params, frames=params.frames + 4 * more_frames),
        msgspec.structs.replace(params, steps=params.steps + more_steps),
        msgspec.structs.replace(params, width=params.width + m * wider),
        msgspec.structs.replace(params, height=params.height + m * taller),
    ):
        vram2, seconds2 = _estimate(bigger, gpu)
        assert vram2 >= vram
        assert seconds2 >= seconds - 1e-9


TECHNIQUES: dict[str, object] = {
    "offload_model": True,
    "convert_model_dtype": True,
    "t5_cpu": True,
    "vae_tiling": True,
    "sequential_offload": True,
    "dit_dtype": "fp8",
    "resident_blocks": 0,
    "t5_fsdp": True,
    "ulysses": None,  # the largest valid degree
}


@settings(max_examples=150, deadline=None)
@given(runs(), st.sampled_from(sorted(TECHNIQUES)))
def test_turning_a_memory_technique_on_never_raises_vram(run: tuple[RunParams, str], technique: str) -> None:
    params, gpu = run
    o = params.options
    value = TECHNIQUES[technique]
    if technique == "ulysses":
        heads = ESTIMATOR.models.get(params.model).dit.heads
        value = max(u for u in (1, 2, 4, 8) if o.gpus % u == 0 and heads % u == 0 and u >= o.ulysses)
    if technique == "resident_blocks" and o.resident_blocks is not None:
        value = max(0, o.resident_blocks - 1)
    if technique == "t5_fsdp" and (o.gpus < 2 or o.t5_cpu):
        return
    if technique == "t5_cpu" and o.t5_fsdp:
        return
    on = msgspec.structs.replace(params, options=msgspec.structs.replace(o, **{technique: value}))
    assert _estimate(on, gpu)[0] <= _estimate(params, gpu)[0]


@settings(max_examples=100, deadline=None)
@given(runs())
def test_streaming_costs_time_and_saves_memory(run: tuple[RunParams, str]) -> None:
    """Streaming moves the DiT over the host link every forward pass; swapping moves it once per expert switch,
    so for runs of a few steps swapping costs more - the property holds from 8 steps on."""
    params, gpu = run
    base = msgspec.structs.replace(
        params,
        steps=max(params.steps, 8),
        options=msgspec.structs.replace(params.options, sequential_offload=False, resident_blocks=None),
    )
    streamed = msgspec.structs.replace(base, options=msgspec.structs.replace(base.options, sequential_offload=True))
    vram, seconds = _estimate(base, gpu)
    vram_s, seconds_s = _estimate(streamed, gpu)
    assert vram_s <= vram
    assert seconds_s > seconds


def test_fsdp_on_four_gpus_saves_memory_but_two_experts_on_two_gpus_do_not() -> None:
    """FSDP keeps both experts' shards: on 2 GPUs that is one whole expert plus gathered blocks."""
    base = RunParams(
        model="t2v-A14B",
        task="t2v",
        width=1280,
        height=720,
        frames=81,
        steps=40,
        options=ResolvedOptions(gpus=4, ulysses=4, convert_model_dtype=True),
    )
    fsdp = msgspec.structs.replace(base, options=msgspec.structs.replace(base.options, dit_fsdp=True))
    assert _estimate(fsdp, "H100")[0] < _estimate(base, "H100")[0]
    two = msgspec.structs.replace(base, options=ResolvedOptions(gpus=2, ulysses=2, convert_model_dtype=True))
    two_fsdp = msgspec.structs.replace(two, options=msgspec.structs.replace(two.options, dit_fsdp=True))
    assert _estimate(two_fsdp, "H100")[0] > _estimate(two, "H100")[0]
    two_fsdp_offload = msgspec.structs.replace(
        two, options=msgspec.structs.replace(two.options, dit_fsdp=True, offload_model=True)
    )
    assert _estimate(two_fsdp_offload, "H100")[0] < _estimate(two, "H100")[0]


def test_invalid_generated_options_are_never_produced() -> None:
    with pytest.raises(InvalidParameter):
        ESTIMATOR.estimate(
            RunParams(
                model="ti2v-5B",
                task="t2v",
                width=1280,
                height=704,
                frames=121,
                steps=50,
                options=ResolvedOptions(gpus=2, ulysses=2, t5_cpu=True, t5_fsdp=True),
            ),
            "H100",
        )
