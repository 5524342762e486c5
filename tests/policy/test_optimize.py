"""The optimizer against the real estimator: fitting plans, their suggestions, levels, pins and rejections."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest

from vramgate.errors import DecodeError, DoesNotFit, InvalidParameter, UnknownModel
from vramgate.messages import GenerationRequest, Plan, RunOptions, RunParams
from vramgate.messages.requests import OptimizationLevel
from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG, GpuSpec
from vramgate.policy.optimize import Optimizer, optimize_parameters_for_resources, summary

GPUS = DEFAULT_GPU_CATALOG
RTX4090 = GPUS.get("RTX4090-24GB")
H100 = GPUS.get("H100-80GB")


@pytest.fixture(scope="module")
def estimator() -> Estimator:
    return Estimator()


@pytest.fixture(scope="module")
def optimizer(estimator: Estimator) -> Optimizer:
    return Optimizer(estimator)


def budget_of(optimizer: Optimizer, gpu: GpuSpec) -> int:
    return gpu.memory_mib - optimizer.margin_mb(gpu.memory_mib)


def request(size: tuple[int, int] = (1280, 720), **kw: Any) -> GenerationRequest:
    return GenerationRequest(model=kw.pop("model", "t2v-A14B"), width=size[0], height=size[1], **kw)


def run(
    optimizer: Optimizer,
    req: GenerationRequest | RunParams,
    *,
    gpu: GpuSpec = RTX4090,
    budget: int | None = None,
    ram: int | None = None,
    level: OptimizationLevel = "basic",
    **kw: Any,
) -> Plan:
    b = budget if budget is not None else budget_of(optimizer, gpu)
    return optimizer.optimize(req, gpu=gpu, budget_mb=b, ram_budget_mb=ram, max_level=level, **kw)


def test_a_request_that_fits_is_left_as_asked(optimizer: Optimizer, estimator: Estimator) -> None:
    req = request((832, 480))
    plan = run(optimizer, req, gpu=GPUS.get("H200-141GB"))
    assert plan.fits
    assert plan.suggestions == ()
    assert plan.level == "none"
    assert plan.params == estimator.resolve(req)


def test_basic_fits_480p_on_a_4090_by_memory_techniques(optimizer: Optimizer, estimator: Estimator) -> None:
    req = request((832, 480), frames=81, steps=40)
    plan = run(optimizer, req)
    assert plan.fits
    assert plan.level == "basic"
    p = plan.params
    assert (p.width, p.height, p.frames, p.steps) == (832, 480, 81, 40)
    assert plan.requirement.vram_mb <= plan.budget_mb == budget_of(optimizer, RTX4090)
    again = estimator.estimate(p, RTX4090)
    assert (again.vram_mb, again.ram_mb) == (plan.requirement.vram_mb, plan.requirement.ram_mb)
    assert all(s.quality_impact == "none" and s.level == "basic" for s in plan.suggestions)
    assert plan.suggestions, "the request as asked does not fit a 4090"
    assert "fits by memory techniques alone" in summary(plan)


def test_the_plan_is_the_fastest_fitting_technique_combination(optimizer: Optimizer, estimator: Estimator) -> None:
    """Brute force over every on/off technique and every DiT placement agrees with the search."""
    req = request((832, 480))
    budget = budget_of(optimizer, RTX4090)
    plan = run(optimizer, req)
    base = estimator.resolve(req)
    best: float | None = None
    names = ("free_text_encoder", "convert_model_dtype", "offload_model", "t5_cpu", "vae_tiling", "one_expert_in_ram")
    placements: list[dict[str, Any]] = [{}]
    placements += [{"resident_blocks": k} for k in range(40)]
    placements += [{"sequential_offload": True}]
    for bits in itertools.product((False, True), repeat=len(names)):
        for placement in placements:
            options = msgspec.structs.replace(base.options, **dict(zip(names, bits, strict=True)), **placement)
            r = estimator.estimate(msgspec.structs.replace(base, options=options), RTX4090)
            if r.vram_mb <= budget and (best is None or r.estimated_time_seconds < best):
                best = r.estimated_time_seconds
    assert best is not None
    assert plan.requirement.estimated_time_seconds == pytest.approx(best, rel=1e-9)


def test_suggestions_add_up_to_the_difference_from_the_request(optimizer: Optimizer, estimator: Estimator) -> None:
    req = request((1280, 720))
    plan = run(optimizer, req, level="aggressive")
    assert plan.fits
    base = estimator.estimate(estimator.resolve(req), RTX4090)
    assert sum(s.vram_saved_mb for s in plan.suggestions) == base.vram_mb - plan.requirement.vram_mb
    added = sum(s.time_added_s for s in plan.suggestions)
    assert added == pytest.approx(plan.requirement.estimated_time_seconds - base.estimated_time_seconds, abs=0.01)
    for s in plan.suggestions:
        assert s.reason.endswith(".")
        assert "VRAM" in s.reason


def test_aggressive_shortens_the_clip_but_keeps_size_and_steps(optimizer: Optimizer) -> None:
    # 18 GB: below what 720p x 81 frames needs under any offloading (about 21 GiB), above a 61-frame clip's
    assert not run(optimizer, request((1280, 720), frames=81, steps=40), budget=18_000).fits
    plan = run(optimizer, request((1280, 720), frames=81, steps=40), budget=18_000, level="aggressive")
    assert plan.fits
    p = plan.params
    assert (p.width, p.height, p.steps) == (1280, 720, 40)
    assert 41 <= p.frames < 81
    assert (p.frames - 1) % 4 == 0
    frames = [s for s in plan.suggestions if s.parameter == "frames"]
    assert len(frames) == 1
    assert frames[0].level == "aggressive"
    assert frames[0].quality_impact != "none"
    assert plan.level == "aggressive"


def test_maximum_moves_to_a_smaller_supported_size_when_nothing_else_fits(optimizer: Optimizer) -> None:
    req = request((1280, 720))
    tight = 12_000  # 720p needs about 12.6 GiB even at half the frames; 832x480 x 81 frames about 11 GiB
    assert not run(optimizer, req, budget=tight, level="aggressive").fits
    plan = run(optimizer, req, budget=tight, level="maximum")
    assert plan.fits
    assert (plan.params.width, plan.params.height) == (832, 480)
    assert plan.level == "maximum"
    assert any(s.parameter == "size" and s.suggested == "832x480" for s in plan.suggestions)


def test_level_none_changes_nothing(optimizer: Optimizer, estimator: Estimator) -> None:
    req = request((1280, 720))
    plan = run(optimizer, req, level="none")
    assert not plan.fits
    assert plan.suggestions == ()
    assert plan.params == estimator.resolve(req)


def test_pinned_options_are_kept(optimizer: Optimizer) -> None:
    pinned = RunOptions(offload_model=True, t5_cpu=False, vae_tiling=False, sequential_offload=False)
    plan = run(optimizer, request((832, 480), options=pinned))
    assert plan.fits
    o = plan.params.options
    assert (o.offload_model, o.t5_cpu, o.vae_tiling, o.sequential_offload) == (True, False, False, False)
    assert {s.parameter for s in plan.suggestions}.isdisjoint({"offload_model", "t5_cpu", "vae_tiling"})
    # pinned off, the one-GPU run keeps the idle expert resident and cannot fit a 4090
    stuck = run(optimizer, request((832, 480), options=RunOptions(offload_model=False)))
    assert stuck.params.options.offload_model is False


def test_host_ram_bounds_offloading(optimizer: Optimizer) -> None:
    req = request((832, 480))
    free = run(optimizer, req)
    assert free.fits
    short = run(optimizer, req, ram=free.requirement.ram_mb - 1)
    if short.fits:
        assert short.requirement.ram_mb < free.requirement.ram_mb
    else:
        assert short.requirement.ram_mb > free.requirement.ram_mb - 1 or short.requirement.vram_mb > short.budget_mb


def test_rejection_names_what_it_takes(optimizer: Optimizer) -> None:
    small = GPUS.get("RTX3060-12GB")
    plan = run(optimizer, request((1280, 720)), gpu=small)
    assert not plan.fits
    error = optimizer.rejection(plan)
    assert isinstance(error, DoesNotFit)
    assert error.needed_mb == plan.requirement.vram_mb > plan.budget_mb
    assert error.smallest_gpu is not None
    chosen = GPUS.get(error.smallest_gpu)
    assert chosen.memory_mib - optimizer.margin_mb(chosen.memory_mib) >= error.needed_mb
    for other in GPUS.all():
        if other.memory_mib < chosen.memory_mib:
            assert other.memory_mib - optimizer.margin_mb(other.memory_mib) < error.needed_mb
    assert error.smallest_gpu in str(error)


def test_several_gpus_shard_and_split_the_sequence(optimizer: Optimizer) -> None:
    req = request((1280, 720))
    a100 = GPUS.get("A100-40GB")
    one = run(optimizer, req, gpu=a100, budget=18_000)
    assert not one.fits
    four = run(optimizer, req, gpu=a100, budget=18_000, world_size=4)
    assert four.fits
    o = four.params.options
    assert o.gpus == 4
    assert four.requirement.world_size == 4
    assert o.ulysses == 4 or o.dit_fsdp
    assert not (o.t5_cpu and o.t5_fsdp)
    assert four.requirement.vram_mb < one.requirement.vram_mb


def test_world_size_conflicting_with_a_pin_is_rejected(optimizer: Optimizer) -> None:
    with pytest.raises(InvalidParameter, match="world_size"):
        run(optimizer, request((832, 480), options=RunOptions(gpus=2)), world_size=4)


def test_next_level_needs_less_and_keeps_what_was_done(optimizer: Optimizer) -> None:
    plan = run(optimizer, request((832, 480)))
    nxt = optimizer.next_level(plan)
    assert nxt is not None
    assert nxt.fits
    assert nxt.requirement.vram_mb <= 0.9 * plan.requirement.vram_mb
    for name in ("offload_model", "convert_model_dtype", "t5_cpu", "vae_tiling"):
        if getattr(plan.params.options, name):
            assert getattr(nxt.params.options, name)
    assert nxt.suggestions[: len(plan.suggestions)] == plan.suggestions
    # basic cannot go below the most offloaded configuration: eventually there is no next level
    last: Plan | None = nxt
    for _ in range(50):
        assert last is not None
        prev, last = last, optimizer.next_level(last)
        if last is None:
            break
        assert last.requirement.vram_mb < prev.requirement.vram_mb
    assert last is None


def test_the_same_inputs_give_the_same_plan(estimator: Estimator) -> None:
    req = request((1280, 720), request_id="r1")
    a = run(Optimizer(estimator), req, level="maximum", budget=20_000)
    b = run(Optimizer(Estimator()), req, level="maximum", budget=20_000)
    assert msgspec.json.encode(a) == msgspec.json.encode(b)
    assert a.request_id == "r1"


def test_bad_input_is_a_typed_error(optimizer: Optimizer) -> None:
    with pytest.raises(UnknownModel):
        run(optimizer, request((832, 480), model="no-such-model"))
    with pytest.raises(InvalidParameter, match="budget_mb"):
        run(optimizer, request((832, 480)), budget=-1)
    with pytest.raises(InvalidParameter, match="width"):
        run(optimizer, request((830, 480)))


def test_legacy_call_returns_params_and_suggestions() -> None:
    params, suggestions = optimize_parameters_for_resources(
        {"model": "t2v-A14B", "width": 832, "height": 480}, gpu="RTX4090-24GB"
    )
    assert isinstance(params, RunParams)
    assert suggestions
    assert all(s.level == "basic" for s in suggestions)  # the request's own max_level (basic) bounds it
    assert (params.width, params.height, params.frames) == (832, 480, 81)
    assert Estimator().estimate(params, "RTX4090-24GB").vram_mb <= budget_of(Optimizer(Estimator()), RTX4090)
    with pytest.raises(DoesNotFit) as info:
        optimize_parameters_for_resources(request((1280, 720)), vram_mb=8_000)
    assert info.value.needed_mb is not None
    assert info.value.needed_mb > 8_000
    with pytest.raises(DecodeError, match="width"):
        optimize_parameters_for_resources({"model": "t2v-A14B", "width": "wide", "height": 480}, gpu="H100")
    with pytest.raises(InvalidParameter, match="gpu"):
        optimize_parameters_for_resources({"model": "t2v-A14B", "width": 832, "height": 480})


ISSUE_EXAMPLE = {"frames": 81, "steps": 40}


def test_a14b_720p_fits_a_4090_by_offloading_alone_when_the_host_holds_the_weights(
    optimizer: Optimizer, estimator: Estimator
) -> None:
    """The issue's example without its 64 GiB: block streaming brings 720p x 81 frames within a 4090's VRAM."""
    req = request((1280, 720), **ISSUE_EXAMPLE)
    plan = run(optimizer, req, ram=80 * 1024, level="basic")
    assert plan.fits
    p = plan.params
    assert (p.width, p.height, p.frames, p.steps) == (1280, 720, 81, 40)
    assert p.options.sequential_offload or p.options.resident_blocks is not None
    assert all(s.quality_impact == "none" and s.level == "basic" for s in plan.suggestions)
    text = summary(plan)
    assert "fits by memory techniques alone" in text
    assert "x the time" in text
    asked = estimator.estimate(estimator.resolve(req), RTX4090).estimated_time_seconds
    assert plan.requirement.estimated_time_seconds > asked  # streaming costs time, and the plan says so


def test_a14b_720p_on_a_4090_needs_more_than_64_gib_of_host_ram_holding_everything(
    optimizer: Optimizer, estimator: Estimator
) -> None:
    """Without the host RAM techniques, 64 GiB is short: both bf16 experts and umT5 alone take 63.8 GiB of it."""
    held = RunOptions(free_text_encoder=False, one_expert_in_ram=False)
    plan = run(optimizer, request((1280, 720), options=held, **ISSUE_EXAMPLE), ram=64 * 1024, level="basic")
    assert not plan.fits
    assert plan.requirement.vram_mb <= plan.budget_mb
    assert plan.requirement.ram_mb > 64 * 1024
    d = estimator.breakdown(plan.params, RTX4090)
    assert d.ram_weights > 63.5 * 2**30


def test_issue_example_a14b_720p_fits_a_4090_with_64gb_by_offloading_alone(optimizer: Optimizer) -> None:
    plan = run(optimizer, request((1280, 720), frames=81, steps=40), ram=64 * 1024, level="basic")
    assert plan.fits
    assert (plan.params.width, plan.params.height, plan.params.frames, plan.params.steps) == (1280, 720, 81, 40)
    assert "x the time" in summary(plan)
    assert plan.level == "basic"
    assert plan.requirement.ram_mb <= 64 * 1024
    assert all(s.quality_impact == "none" for s in plan.suggestions)
    freed = next(s for s in plan.suggestions if s.parameter == "free_text_encoder")
    assert freed.reason.startswith("Free the text encoder once the prompt is encoded: saves ")


def test_a14b_720p_on_a_4090_with_32gb_keeps_one_expert_in_host_ram(optimizer: Optimizer) -> None:
    """With half the RAM, both bf16 experts (53.2 GiB) no longer fit: the idle one is read from disk instead."""
    plan = run(optimizer, request((1280, 720), **ISSUE_EXAMPLE), ram=32 * 1024, level="basic")
    assert plan.fits
    assert (plan.params.frames, plan.params.steps) == (81, 40)
    assert plan.params.options.one_expert_in_ram
    assert plan.requirement.ram_mb <= 32 * 1024
    expert = next(s for s in plan.suggestions if s.parameter == "one_expert_in_ram")
    assert expert.ram_saved_mb > 20 * 1024  # one bf16 expert of 14B parameters
    assert expert.time_added_s > 1.0  # one expert's checkpoint read from disk at the boundary
    assert "idle expert" in expert.reason
    assert "adds about" in expert.reason


def test_one_expert_models_are_never_offered_the_expert_technique(optimizer: Optimizer) -> None:
    plan = run(optimizer, request((1280, 704), model="ti2v-5B", frames=121), ram=8 * 1024, level="basic")
    assert all(s.parameter != "one_expert_in_ram" for s in plan.suggestions)
    assert not plan.params.options.one_expert_in_ram
    assert all("expert" not in s.reason for s in plan.suggestions)
    with pytest.raises(InvalidParameter, match="one_expert_in_ram"):
        run(optimizer, request((1280, 704), model="ti2v-5B", options=RunOptions(one_expert_in_ram=True)), level="none")
