"""The optimizer actor: asked through a real actor system, on asyncio and trio; its log replays identically."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramgate.actors import ActorSystem, Recorder
from vramgate.actors.optimizer import OptimizerCore, optimizer_actor
from vramgate.clock import ManualClock
from vramgate.messages import GenerationRequest, PlanOptimized, RequestRejected, decode_json, encode_json
from vramgate.messages.optimization import OptimizePlan, PlanDoesNotFit, ShrinkPlan
from vramgate.policy.estimate import Estimator
from vramgate.policy.optimize import Optimizer
from vramgate.replay import replay

pytestmark = pytest.mark.anyio

REQUEST = GenerationRequest(model="t2v-A14B", width=832, height=480, request_id="r1")


def ask_for(gpu: str, budget: int, **kw: object) -> OptimizePlan:
    return OptimizePlan(request=kw.pop("request", REQUEST), gpu=gpu, budget_mb=budget, **kw)  # type: ignore[arg-type]


async def test_the_actor_answers_with_a_plan_a_miss_or_a_bad_request(tmp_path: Path) -> None:
    system = ActorSystem(clock=ManualClock(), recorder=Recorder(tmp_path / "log.jsonl"))
    ref = system.spawn(optimizer_actor(Estimator()), name="optimizer")
    async with system:
        fits = await ref.ask(ask_for("RTX4090-24GB", 23_000), timeout=30)
        assert isinstance(fits, PlanOptimized)
        assert fits.request_id == "r1"
        assert fits.plan.fits
        assert fits.plan.requirement.vram_mb <= 23_000

        miss = await ref.ask(ask_for("RTX3060-12GB", 10_000, request_id="r2"), timeout=30)
        assert isinstance(miss, PlanDoesNotFit)
        assert miss.request_id == "r2"
        assert miss.needed_mb == miss.best_plan.requirement.vram_mb > 10_000
        assert miss.smallest_gpu is not None
        assert miss.smallest_gpu in miss.reason

        bad = await ref.ask(
            ask_for("H100", 70_000, request=GenerationRequest(model="nope", width=8, height=8)), timeout=30
        )
        assert isinstance(bad, RequestRejected)
        assert bad.code == "bad_request"
        assert "nope" in bad.reason

        shrunk = await ref.ask(ShrinkPlan(plan=fits.plan), timeout=30)
        assert isinstance(shrunk, PlanOptimized)
        assert shrunk.request_id == "r1"
        assert shrunk.plan.requirement.vram_mb <= 0.9 * fits.plan.requirement.vram_mb
    result = replay(tmp_path / "log.jsonl")
    assert result.identical, result.summary()
    assert result.outputs == 4


def test_the_core_is_plain_synchronous_code() -> None:
    core = OptimizerCore(Optimizer(Estimator()))
    wire = encode_json(ask_for("RTX4090-24GB", 23_000, max_level="none"))
    message = decode_json(wire, OptimizePlan)
    (out,) = core.handle(message, 0.0)
    answer = out.message  # type: ignore[union-attr]
    assert isinstance(answer, PlanDoesNotFit)  # level none changes nothing, and as asked it does not fit
    assert answer.best_plan.suggestions == ()
    with pytest.raises(TypeError, match="RequestRejected"):
        core.handle(RequestRejected(request_id="x", code="bad_request", reason=""), 0.0)
