"""One owner for a lesson: the estimator learns each run once and publishes its corrections; the optimizer plans
from what it was sent: on its own, or in a gate, carried by the request core's next question (through real msgspec
decoding, a real gate on asyncio and trio, and its replayed log)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from vramgate.actors import Recorder
from vramgate.actors.core import Reply, Send
from vramgate.actors.estimator import EstimatorCore
from vramgate.actors.optimizer import OptimizerCore, optimizer_actor
from vramgate.clock import ManualClock
from vramgate.config import AdmissionSettings, CleanupConfig, DevicesConfig, GateConfig, MonitorConfig
from vramgate.gate import open_gate
from vramgate.hardware import detect
from vramgate.messages import (
    GenerationRequest,
    ObservedPeak,
    Plan,
    PlanOptimized,
    RunFinished,
    decode_json,
    encode_json,
)
from vramgate.messages.estimation import CorrectionLearned, ObserveRun
from vramgate.messages.optimization import OptimizePlan, ShrinkPlan
from vramgate.policy.estimate import Estimator
from vramgate.policy.optimize import Optimizer
from vramgate.replay import read_log, replay

pytestmark = pytest.mark.anyio

GPU = "H100-80GB"
BUDGET = 40_000
REQUEST = GenerationRequest(model="t2v-A14B", width=1280, height=720, frames=81, steps=40)


def _ask(budget: int = BUDGET) -> OptimizePlan:
    return OptimizePlan(request=REQUEST, gpu=GPU, budget_mb=budget, ram_budget_mb=256 * 1024)


def _planned(core: OptimizerCore, budget: int = BUDGET) -> Plan:
    (out,) = core.handle(_ask(budget), 0.0)
    assert isinstance(out, Reply)
    assert isinstance(out.message, PlanOptimized)
    return out.message.plan


def _lesson(plan: Plan, peak_mb: int) -> ObserveRun:
    finished = RunFinished(
        request_id="r1",
        lease_id="l1",
        outcome="ok",
        observed=ObservedPeak(torch_peak_reserved_mb=peak_mb),
        seconds=200.0,
    )
    return ObserveRun(finished=finished, plan=plan)


def test_the_optimizer_plans_with_the_corrections_the_estimator_published() -> None:
    estimator = Estimator()
    teacher = EstimatorCore(estimator, publish_to=("optimizer",))
    optimizer = optimizer_actor(Estimator()).core
    assert isinstance(optimizer, OptimizerCore)
    before = _planned(optimizer)

    outputs = teacher.handle(_lesson(before, int(before.requirement.vram_mb * 1.4)), 0.0)
    sent, reply = outputs
    assert isinstance(sent, Send)
    assert isinstance(reply, Reply)
    assert sent.to == "optimizer"
    assert sent.message == reply.message
    # It reaches the optimizer as any message does: encoded, then decoded.
    published = decode_json(encode_json(sent.message), CorrectionLearned)
    assert published.history == estimator.learned.learned("t2v-A14B", GPU)
    assert published.times == estimator.learned.times.learned(GPU)
    assert optimizer.handle(published, 0.0) == []

    after = _planned(optimizer)
    assert after != before  # the lesson moved the plan (a larger correction at the same budget)
    assert after.requirement.correction == published.factor > 1.0
    same = Optimizer(estimator).optimize(
        REQUEST, gpu=GPU, budget_mb=BUDGET, ram_budget_mb=256 * 1024, max_level=REQUEST.max_level
    )
    assert after == same

    # Installing the same corrections again changes nothing: the lesson counts once, where it was learned.
    optimizer.handle(published, 0.0)
    assert optimizer.learned is not None
    assert optimizer.learned.state() == estimator.learned.state()
    assert estimator.learned.runs("t2v-A14B", GPU) == 1
    assert estimator.learned.times.runs(GPU) == 1
    assert _planned(optimizer) == after


def test_the_optimizer_no_longer_learns_lessons_itself() -> None:
    core = OptimizerCore(Optimizer(Estimator()))
    plan = _planned(core)
    with pytest.raises(TypeError, match="ObserveRun"):
        core.handle(_lesson(plan, plan.requirement.vram_mb * 2), 0.0)


def _config(learned_path: Path) -> GateConfig:
    return GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=0.05),
        admission=AdmissionSettings(ram_budget="256GiB"),
        cleanup=CleanupConfig(after_run=False),
        learned_path=str(learned_path),
    )


async def _plan(gate_config: GateConfig, path: Path | None = None, *, peak_factor: float | None = None) -> Plan:
    """Open a gate, run REQUEST (reporting ``peak_factor`` x its estimate as the observed peak, when given: the one
    run that teaches), then plan it again; the second plan."""
    clock = ManualClock()
    devices = detect((GPU,), nvml=False, torch=False, clock=clock)
    recorder = Recorder(path) if path is not None else None
    async with open_gate(gate_config, clock=clock, devices=devices, recorder=recorder) as gate:
        async with gate.admit(REQUEST) as lease:
            if peak_factor is not None:
                lease.report(peak_vram_mb=int(lease.plan.requirement.vram_mb * peak_factor))
        await gate.wait_idle()
        ticket = await gate.submit(REQUEST)
        async with gate.hold(await ticket.wait_admitted()) as again:
            pass
        # What the gate's optimizer planned after the lesson is what the gate's own estimator would plan.
        gpu, budget = max(gate.plan_budgets().items(), key=lambda item: item[1])
        same = Optimizer(gate.estimator).optimize(
            REQUEST, gpu=gpu, budget_mb=budget, ram_budget_mb=gate.ram_budget_mb, max_level=REQUEST.max_level
        )
        assert again.plan.params == same.params
        assert again.plan.requirement == same.requirement
        if peak_factor is not None:
            assert again.plan.requirement != lease.plan.requirement  # the lesson was used
            assert gate.estimator.learned.runs(REQUEST.model, GPU) == 1  # the one run that taught, learned once
        return again.plan


async def test_a_gate_teaches_the_estimator_once_and_its_optimizer_plans_from_the_published_corrections(
    tmp_path: Path,
) -> None:
    log = tmp_path / "gate.jsonl"
    config = _config(tmp_path / "learned.json")
    taught = await _plan(config, log, peak_factor=1.3)

    _, read = read_log(log)
    records = list(read)
    to_optimizer = [r for r in records if r.recipient == "optimizer"]
    assert not [r for r in to_optimizer if isinstance(r.message, ObserveRun | CorrectionLearned)]
    # The lesson reaches the optimizer once, with the gate's next question: one message per lesson.
    asked = [r for r in to_optimizer if isinstance(r.message, OptimizePlan)]
    assert {r.sender for r in asked} == {"gate"}
    lessons = [c for r in asked if isinstance(r.message, OptimizePlan) for c in r.message.corrections]
    assert [c.runs for c in lessons] == [1]
    assert lessons[0].history == msgspec.convert(  # what the estimator held after it
        next(r.message for r in records if isinstance(r.message, CorrectionLearned)).history, type(lessons[0].history)
    )
    assert [r.recipient for r in records if isinstance(r.message, CorrectionLearned)] == ["gate"]
    result = replay(log)
    assert result.identical, result.summary()

    # Saved with learned_path: the next gate's optimizer starts from the corrections and plans the same.
    reopened = await _plan(config)
    assert reopened.params == taught.params
    assert reopened.requirement.correction == taught.requirement.correction


def test_the_demo_log_carries_the_published_corrections_and_replays_identical(small_demo_log: Path) -> None:
    _, read = read_log(small_demo_log)
    records = list(read)
    published = [r for r in records if isinstance(r.message, CorrectionLearned)]
    assert published
    assert all(r.sender == "estimator" and r.recipient == "gate" for r in published)
    # Every question to the optimizer carries the lessons learned since the one before it (the latest per model and
    # GPU), each once.
    pending: dict[tuple[str, str], CorrectionLearned] = {}
    for record in records:
        message = record.message
        if isinstance(message, CorrectionLearned):
            pending.pop((message.model, message.gpu), None)
            pending[(message.model, message.gpu)] = message
        elif isinstance(message, OptimizePlan | ShrinkPlan):
            assert list(message.corrections) == list(pending.values())
            pending.clear()
    assert not [r for r in records if isinstance(r.message, ObserveRun) and r.recipient == "optimizer"]
    result = replay(small_demo_log)
    assert result.identical, result.summary()
