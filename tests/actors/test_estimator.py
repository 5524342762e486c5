"""The estimator actor over a real actor system (asyncio and trio): estimates, learns, and replays identically."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramgate.actors import ActorSystem, Recorder
from vramgate.actors.estimator import EstimatorCore, estimator_actor
from vramgate.clock import ManualClock
from vramgate.messages import (
    GenerationRequest,
    ObservedPeak,
    Plan,
    RequestAdmitted,
    RequestRejected,
    RequirementEstimated,
    RunFinished,
    RunOptions,
)
from vramgate.messages.estimation import CorrectionLearned, EstimateRequirement, ObserveRun
from vramgate.policy.estimate import Estimator
from vramgate.replay import replay

pytestmark = pytest.mark.anyio

REQUEST = GenerationRequest(
    model="t2v-A14B",
    width=832,
    height=480,
    request_id="r1",
    options=RunOptions(offload_model=True, convert_model_dtype=True),
)


def _plan(estimator: Estimator, request_id: str) -> Plan:
    params = estimator.resolve(REQUEST)
    requirement = estimator.estimate(params, "H100-80GB")
    return Plan(params=params, requirement=requirement, request_id=request_id, gpu="H100-80GB", budget_mb=75_000)


async def test_estimates_and_learns_through_the_actor_system(tmp_path: Path) -> None:
    system = ActorSystem(clock=ManualClock(), recorder=Recorder(tmp_path / "log.jsonl"))
    ref = system.spawn(estimator_actor(Estimator()), name="estimator")
    async with system:
        answer = await ref.ask(EstimateRequirement(request=REQUEST, gpu="H100"), timeout=30)
        assert isinstance(answer, RequirementEstimated)
        assert answer.request_id == "r1"
        assert answer.requirement.gpu == "H100-80GB"
        first = answer.requirement.vram_mb

        bad = await ref.ask(EstimateRequirement(request=REQUEST, gpu="no-such-gpu", request_id="r2"), timeout=30)
        assert isinstance(bad, RequestRejected)
        assert bad.code == "bad_request"
        assert "no-such-gpu" in bad.reason

        plan = _plan(Estimator(), "r1")
        oom = RunFinished(
            request_id="r1", lease_id="l1", outcome="oom", observed=ObservedPeak(torch_peak_reserved_mb=74_000)
        )
        learned = await ref.ask(ObserveRun(finished=oom, plan=plan), timeout=30)
        assert isinstance(learned, CorrectionLearned)
        assert learned.factor > 1.0
        assert learned.runs == 1

        again = await ref.ask(EstimateRequirement(request=REQUEST, gpu="H100-80GB"), timeout=30)
        assert isinstance(again, RequirementEstimated)
        assert again.requirement.vram_mb > first
        assert again.requirement.correction == learned.factor
    result = replay(tmp_path / "log.jsonl")
    assert result.identical, result.summary()


def test_the_core_learns_from_run_finished_after_seeing_the_admission() -> None:
    estimator = Estimator()
    core = EstimatorCore(estimator, events_to="stats", max_plans=2)
    plan = _plan(estimator, "r1")
    raw = plan.requirement.vram_mb
    assert (
        core.handle(RequestAdmitted(request_id="r1", lease_id="l1", devices=(0,), reservation_mb=raw, plan=plan), 0.0)
        == []
    )
    assert core.pending_plans() == 1
    finished = RunFinished(
        request_id="r1", lease_id="l1", outcome="ok", observed=ObservedPeak(torch_peak_reserved_mb=int(raw * 1.2))
    )
    (out,) = core.handle(finished, 1.0)
    assert out.to == "stats"  # type: ignore[union-attr]
    assert isinstance(out.message, CorrectionLearned)
    assert out.message.factor == pytest.approx(1.2, rel=0.01)
    assert core.pending_plans() == 0
    # a run the core never saw admitted teaches nothing
    assert core.handle(RunFinished(request_id="zz", lease_id="l9", outcome="ok"), 2.0) == []
    # admitted plans are bounded
    for i in range(5):
        core.handle(RequestAdmitted(request_id=f"q{i}", lease_id="l", devices=(0,), reservation_mb=1, plan=plan), 3.0)
    assert core.pending_plans() == 2
