"""The optimizer actor: a :class:`~vramgate.actors.CoreActor` over the sans-io :class:`OptimizerCore`.

Ask it :class:`~vramgate.messages.optimization.OptimizePlan` (or :class:`~vramgate.messages.optimization.ShrinkPlan`
after an out-of-memory failure); it answers :class:`~vramgate.messages.PlanOptimized` when a plan fits,
:class:`~vramgate.messages.optimization.PlanDoesNotFit` with the closest plan when none does, and
:class:`~vramgate.messages.RequestRejected` (``bad_request``) when the request is invalid.

The optimizer learns nothing itself: it plans with the corrections its estimator held when the actor was made
(recorded in its config), and installs the lessons it is sent
(:class:`~vramgate.messages.estimation.CorrectionLearned`): the ones a question carries (``corrections``: the
lessons the request core holds that the optimizer has not seen, installed before it plans), or, as an estimator
may publish them, on their own. Its plans use the estimator's
corrections, and a replay, fed the same messages, plans the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from vramgate.actors.core import CoreActor, Output, Reply
from vramgate.errors import BadRequest
from vramgate.messages import GenerationRequest, Message, Plan, PlanOptimized, RequestRejected
from vramgate.messages.estimation import CorrectionLearned, ObserveRun
from vramgate.messages.log import CoreSpec, LogHeader
from vramgate.messages.optimization import OptimizePlan, PlanDoesNotFit, ShrinkPlan
from vramgate.policy.estimate import Estimator
from vramgate.policy.learning import LearnedCorrections, LearnedState
from vramgate.policy.optimize import EstimatorLike, Optimizer
from vramgate.policy.registered import from_header
from vramgate.replay import register_core_kind

#: The core kind written into recorded log headers.
KIND = "optimizer"


class OptimizerCore:
    """Message in, plan out. Its only state is the corrections it was sent, so a replay decides the same again."""

    def __init__(self, optimizer: Optimizer, *, learns_lessons: bool = False) -> None:
        self.optimizer = optimizer
        #: whether it learns the lessons it is told itself: only to replay logs made before the estimator published
        #: its corrections (their estimator publishes to nobody), as they ran
        self.learns_lessons = learns_lessons
        learned = getattr(optimizer.estimator, "learned", None)
        #: the corrections plans are made with (the estimator's, as published); ``None`` for an estimator without
        self.learned = learned if isinstance(learned, LearnedCorrections) else None

    def handle(self, message: Message, now: float) -> Sequence[Output]:
        if isinstance(message, OptimizePlan):
            self._install(message.corrections)
            return [Reply(self._optimize(message))]
        if isinstance(message, ShrinkPlan):
            self._install(message.corrections)
            return [Reply(self._shrink(message))]
        if isinstance(message, CorrectionLearned):
            self._install((message,))
            return []
        if isinstance(message, ObserveRun) and self.learns_lessons and isinstance(self.optimizer.estimator, Estimator):
            self.optimizer.estimator.observe(message.finished, message.plan)
            return []
        raise TypeError(f"the optimizer does not handle {type(message).__name__}")

    def _install(self, corrections: Sequence[CorrectionLearned]) -> None:
        if self.learned is not None:
            for learned in corrections:
                self.learned.install(learned)

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

    An :class:`~vramgate.policy.estimate.Estimator` is planned with through its catalogs and constants and the
    corrections it holds now, recorded in the config so that a replay starts from them; the actor changes them only
    as the estimator's published corrections say (the estimator given is not touched).
    """
    estimator = estimator if estimator is not None else Estimator()
    recorded = dict(config or {})
    if isinstance(estimator, Estimator):
        state = estimator.learned.state()
        recorded.setdefault("learned", msgspec.to_builtins(state))
        estimator = Estimator(
            estimator.models,
            estimator.gpus,
            estimator.constants,
            LearnedCorrections(state=state),
            prices_loads=estimator.prices_loads,
        )
    return CoreActor(OptimizerCore(Optimizer(estimator)), kind=KIND, config=recorded)


def build_core(
    config: Mapping[str, Any],
    header: Mapping[str, Any] | None = None,
    *,
    learns_lessons: bool = False,
    prices_loads: bool = True,
) -> OptimizerCore:
    """Rebuild an optimizer core from its recorded config (for replay): the built-in catalogs with the entries the
    log header's config records (:mod:`vramgate.policy.registered`), the recorded corrections."""
    models, gpus = from_header(header or {}).catalogs()
    state = msgspec.convert(config["learned"], LearnedState) if "learned" in config else LearnedState()
    learned = LearnedCorrections(state=state)
    optimizer = Optimizer(Estimator(models, gpus, learned=learned, prices_loads=prices_loads))
    return OptimizerCore(optimizer, learns_lessons=learns_lessons)


def _from_header(header: LogHeader, spec: CoreSpec) -> OptimizerCore:
    estimator = header.core("estimator")
    # the estimator's recorded config says how old the log is: whether lessons were published (to the optimizer,
    # or with what it holds for the request core to send on), loads priced
    legacy = estimator is not None and not estimator.config.get("publish_to") and not estimator.config.get("holdings")
    prices_loads = estimator is None or bool(estimator.config.get("prices_loads", False))
    return build_core(spec.config, header.config, learns_lessons=legacy, prices_loads=prices_loads)


register_core_kind(KIND, _from_header)
