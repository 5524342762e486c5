"""The optimizer actor: a :class:`~vramgate.actors.CoreActor` over the sans-io :class:`OptimizerCore`.

Ask it :class:`~vramgate.messages.optimization.OptimizePlan` (or :class:`~vramgate.messages.optimization.ShrinkPlan`
after an out-of-memory failure); it answers :class:`~vramgate.messages.PlanOptimized` when a plan fits,
:class:`~vramgate.messages.optimization.PlanDoesNotFit` with the closest plan when none does, and
:class:`~vramgate.messages.RequestRejected` (``bad_request``) when the request is invalid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from vramgate.actors.core import CoreActor, Output, Reply
from vramgate.errors import BadRequest
from vramgate.messages import GenerationRequest, Message, Plan, PlanOptimized, RequestRejected
from vramgate.messages.estimation import ObserveRun
from vramgate.messages.optimization import OptimizePlan, PlanDoesNotFit, ShrinkPlan
from vramgate.policy.optimize import EstimatorLike, Optimizer
from vramgate.replay import register_core_kind

#: The core kind written into recorded log headers.
KIND = "optimizer"


class OptimizerCore:
    """Message in, plan out. Holds no state between messages, so a replay decides the same again."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer

    def handle(self, message: Message, now: float) -> Sequence[Output]:
        if isinstance(message, OptimizePlan):
            return [Reply(self._optimize(message))]
        if isinstance(message, ShrinkPlan):
            return [Reply(self._shrink(message))]
        if isinstance(message, ObserveRun):
            # Learn what the estimator learns, so that plans use the same corrected estimates.
            observe = getattr(self.optimizer.estimator, "observe", None)
            if observe is not None:
                observe(message.finished, message.plan)
            return []
        raise TypeError(f"the optimizer does not handle {type(message).__name__}")

    def _optimize(self, m: OptimizePlan) -> Message:
        request = m.request
        rid = m.request_id or (request.request_id if isinstance(request, GenerationRequest) else "")
        level = m.max_level
        if level is None:
            level = request.max_level if isinstance(request, GenerationRequest) else "basic"
        try:
            plan = self.optimizer.optimize(
                request,
                gpu=m.gpu,
                budget_mb=m.budget_mb,
                ram_budget_mb=m.ram_budget_mb,
                max_level=level,
                world_size=m.world_size,
                pinned=m.pinned,
            )
        except BadRequest as exc:
            return RequestRejected(request_id=rid, code="bad_request", reason=str(exc))
        if rid and plan.request_id != rid:
            plan = _with_id(plan, rid)
        if plan.fits:
            return PlanOptimized(request_id=rid, plan=plan)
        error = self.optimizer.rejection(plan)
        return PlanDoesNotFit(
            request_id=rid,
            reason=error.reason,
            needed_mb=plan.requirement.vram_mb,
            best_plan=plan,
            smallest_gpu=error.smallest_gpu,
        )

    def _shrink(self, m: ShrinkPlan) -> Message:
        rid = m.request_id or m.plan.request_id
        try:
            plan = self.optimizer.next_level(
                m.plan, max_level=m.max_level, ram_budget_mb=m.ram_budget_mb, pinned=m.pinned, shrink=m.shrink
            )
        except BadRequest as exc:
            return RequestRejected(request_id=rid, code="bad_request", reason=str(exc))
        if plan is None:
            need = m.plan.requirement.vram_mb
            smallest = self.optimizer.smallest_gpu(need)
            return PlanDoesNotFit(
                request_id=rid,
                reason=f"no plan within the level needs {m.shrink:.0%} less VRAM than the one that failed",
                needed_mb=need,
                best_plan=m.plan,
                smallest_gpu=smallest.name if smallest is not None else None,
            )
        return PlanOptimized(request_id=rid, plan=_with_id(plan, rid))


def _with_id(plan: Plan, rid: str) -> Plan:
    return msgspec.structs.replace(plan, request_id=rid)


def optimizer_actor(estimator: EstimatorLike | None = None, *, config: Mapping[str, Any] | None = None) -> CoreActor:
    """A :class:`CoreActor` running an :class:`OptimizerCore` (with the default estimator unless one is given).

    The estimator's learned corrections at start are recorded in the config, so that a replay starts from them.
    """
    estimator = _estimator(estimator)
    recorded = dict(config or {})
    learned = getattr(estimator, "learned", None)
    if learned is not None and "learned" not in recorded:
        recorded["learned"] = msgspec.to_builtins(learned.state())
    return CoreActor(OptimizerCore(Optimizer(estimator)), kind=KIND, config=recorded)


def build_core(config: Mapping[str, Any], header: Mapping[str, Any] | None = None) -> OptimizerCore:
    """Rebuild an optimizer core from its recorded config (for replay): the built-in catalogs with the entries the
    log header's config records (:mod:`vramgate.policy.registered`), the recorded corrections."""
    from vramgate.policy.estimate import Estimator
    from vramgate.policy.learning import LearnedCorrections, LearnedState
    from vramgate.policy.registered import from_header

    models, gpus = from_header(header or {}).catalogs()
    state = msgspec.convert(config["learned"], LearnedState) if "learned" in config else LearnedState()
    return OptimizerCore(Optimizer(Estimator(models, gpus, learned=LearnedCorrections(state=state))))


register_core_kind(KIND, lambda header, spec: build_core(spec.config, header.config))


def _estimator(estimator: EstimatorLike | None) -> EstimatorLike:
    if estimator is not None:
        return estimator
    from vramgate.policy.estimate import Estimator

    return Estimator()
