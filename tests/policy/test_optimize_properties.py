"""Properties of the optimizer over many requests, GPUs, budgets, pins and levels (hypothesis)."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vramgate.messages import LEVELS, GenerationRequest, Plan, RunOptions
from vramgate.messages.requests import OptimizationLevel, level_index
from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG
from vramgate.policy.models import DEFAULT_MODEL_CATALOG, parse_size
from vramgate.policy.optimize import Optimizer

ESTIMATOR = Estimator()
OPTIMIZER = Optimizer(ESTIMATOR)
GPU_NAMES = sorted(DEFAULT_GPU_CATALOG.names())
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPTION_NAMES = ("offload_model", "convert_model_dtype", "t5_cpu", "vae_tiling", "sequential_offload")


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    profile = draw(st.sampled_from(DEFAULT_MODEL_CATALOG.all()))
    width, height = parse_size(draw(st.sampled_from(profile.sizes)))
    frames = 4 * draw(st.integers(4, 30)) + 1
    steps = draw(st.integers(8, 50))
    pins = {name: draw(st.none() | st.booleans()) for name in OPTION_NAMES}
    if draw(st.booleans()):
        pins["resident_blocks"] = draw(st.integers(0, profile.dit.layers))
        pins["sequential_offload"] = None if pins["sequential_offload"] is None else False
    request = GenerationRequest(
        model=profile.name,
        width=width,
        height=height,
        frames=frames,
        steps=steps,
        options=RunOptions(**pins),
    )
    gpu = DEFAULT_GPU_CATALOG.get(draw(st.sampled_from(GPU_NAMES)))
    budget = int(gpu.memory_mib * draw(st.floats(0.2, 1.0)))
    ram = draw(st.none() | st.integers(16_000, 256_000))
    return {"request": request, "gpu": gpu, "budget": budget, "ram": ram}


def optimize(case: dict[str, Any], level: OptimizationLevel) -> Plan:
    return OPTIMIZER.optimize(
        case["request"], gpu=case["gpu"], budget_mb=case["budget"], ram_budget_mb=case["ram"], max_level=level
    )


@SETTINGS
@given(cases(), st.sampled_from(LEVELS))
def test_a_returned_plan_fits_its_budget(case: dict[str, Any], level: OptimizationLevel) -> None:
    plan = optimize(case, level)
    again = ESTIMATOR.estimate(plan.params, case["gpu"])
    assert (again.vram_mb, again.ram_mb) == (plan.requirement.vram_mb, plan.requirement.ram_mb)
    fits = again.vram_mb <= case["budget"] and (case["ram"] is None or again.ram_mb <= case["ram"])
    assert plan.fits == fits
    assert level_index(plan.level) <= level_index(level)
    assert all(level_index(s.level) <= level_index(level) for s in plan.suggestions)


@SETTINGS
@given(cases())
def test_a_higher_level_never_fits_worse(case: dict[str, Any]) -> None:
    plans = [optimize(case, level) for level in LEVELS]
    for lower, higher in itertools.pairwise(plans):
        if lower.fits:
            assert higher.fits
            if lower.level in ("none", "basic"):  # no quality lost: a higher level has nothing better to offer
                assert higher.params == lower.params
        elif not higher.fits:  # neither fits: the higher level comes at least as close
            assert excess(higher, case) <= excess(lower, case)


def excess(plan: Plan, case: dict[str, Any]) -> int:
    """How far a plan is over its budgets, in MiB of VRAM plus MiB of host RAM."""
    over = max(0, plan.requirement.vram_mb - case["budget"])
    if case["ram"] is not None:
        over += max(0, plan.requirement.ram_mb - case["ram"])
    return over


@SETTINGS
@given(cases(), st.sampled_from(("none", "basic")))
def test_basic_never_changes_steps_frames_or_size(case: dict[str, Any], level: OptimizationLevel) -> None:
    plan = optimize(case, level)
    asked = ESTIMATOR.resolve(case["request"])
    p = plan.params
    assert (p.steps, p.frames, p.width, p.height) == (asked.steps, asked.frames, asked.width, asked.height)
    assert all(s.quality_impact == "none" for s in plan.suggestions)
    if level == "none":
        assert p == asked


@SETTINGS
@given(cases(), st.sampled_from(LEVELS))
def test_pinned_options_are_never_changed(case: dict[str, Any], level: OptimizationLevel) -> None:
    plan = optimize(case, level)
    pins = case["request"].options
    for name in (*OPTION_NAMES, "resident_blocks"):
        pinned = getattr(pins, name)
        if pinned is not None:
            assert getattr(plan.params.options, name) == pinned, name
    assert {s.parameter for s in plan.suggestions}.isdisjoint(
        {name for name in OPTION_NAMES if getattr(pins, name) is not None}
    )


@SETTINGS
@given(cases(), st.sampled_from(LEVELS))
def test_plans_are_deterministic(case: dict[str, Any], level: OptimizationLevel) -> None:
    first = optimize(case, level)
    fresh = Optimizer(Estimator()).optimize(
        case["request"], gpu=case["gpu"], budget_mb=case["budget"], ram_budget_mb=case["ram"], max_level=level
    )
    assert msgspec.json.encode(first) == msgspec.json.encode(fresh)


@SETTINGS
@given(cases(), st.sampled_from(("aggressive", "maximum")))
def test_quality_stays_within_limits(case: dict[str, Any], level: OptimizationLevel) -> None:
    plan = optimize(case, level)
    asked = ESTIMATOR.resolve(case["request"])
    p = plan.params
    assert min(asked.steps, max(10, asked.steps / 2)) <= p.steps <= asked.steps
    assert asked.frames / 2 <= p.frames <= asked.frames
    assert (p.frames - 1) % 4 == 0
    if level == "aggressive":
        assert (p.width, p.height) == (asked.width, asked.height)
    elif (p.width, p.height) != (asked.width, asked.height):
        profile = DEFAULT_MODEL_CATALOG.get(p.model)
        assert f"{p.width}*{p.height}" in profile.sizes
        assert p.width * p.height < asked.width * asked.height


@pytest.mark.parametrize("level", ["basic", "maximum"])
def test_next_level_respects_pins(level: OptimizationLevel) -> None:
    pins = RunOptions(t5_cpu=False, vae_tiling=False)
    request = GenerationRequest(model="t2v-A14B", width=832, height=480, options=pins)
    gpu = DEFAULT_GPU_CATALOG.get("RTX4090-24GB")
    plan = OPTIMIZER.optimize(request, gpu=gpu, budget_mb=23_000, ram_budget_mb=None, max_level=level)
    assert plan.fits
    nxt = OPTIMIZER.next_level(plan, pinned=pins, max_level=level)
    assert nxt is not None
    assert not nxt.params.options.t5_cpu
    assert not nxt.params.options.vae_tiling
