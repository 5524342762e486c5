"""The estimator actor: a :class:`~vramgate.actors.CoreActor` over the sans-io :class:`EstimatorCore`.

* :class:`~vramgate.messages.estimation.EstimateRequirement` -> replies
  :class:`~vramgate.messages.RequirementEstimated` (or :class:`~vramgate.messages.RequestRejected` with
  ``bad_request`` for an unknown model or GPU, or values the model cannot take);
* :class:`~vramgate.messages.RequestAdmitted` -> remembers the admitted plan (bounded), so that
* :class:`~vramgate.messages.RunFinished` of that request teaches the estimator its observed peak and, for a run
  that ran to the end, its time (the time corrections of :mod:`vramgate.policy.timing`, learned per GPU);
* :class:`~vramgate.messages.estimation.ObserveRun` teaches it a run with its plan directly.

Every requirement it answers carries the corrected time and its interval. The estimator owns what it learns:
each lesson is learned here once and published as :class:`~vramgate.messages.estimation.CorrectionLearned` (both
corrections, with what it now holds for the model, the GPU and the GPU's times when ``holdings`` is set or it
publishes to anyone): sent to every actor named in ``publish_to``, then replied to an ``ObserveRun`` or sent to
``events_to`` (when set) for a ``RunFinished``. A gate's estimator publishes to nobody: its request core sends the
lessons on to the optimizer with its next question (``OptimizePlan.corrections``), so that a lesson is one
message.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from vramgate.actors.core import CoreActor, Output, Reply, Send
from vramgate.errors import BadRequest
from vramgate.messages import Message, Plan, RequestAdmitted, RequestRejected, RequirementEstimated, RunFinished
from vramgate.messages.estimation import CorrectionLearned, EstimateRequirement, ObserveRun
from vramgate.messages.log import CoreSpec, LogHeader
from vramgate.policy.estimate import Estimator
from vramgate.policy.learning import LearnedCorrections, LearnedState
from vramgate.policy.registered import from_header
from vramgate.replay import register_core_kind

#: The core kind written into recorded log headers.
KIND = "estimator"


class EstimatorCore:
    """Estimates on request; learns from finished runs. ``max_plans`` bounds the remembered admitted plans."""

    def __init__(
        self,
        estimator: Estimator,
        *,
        events_to: str | None = None,
        max_plans: int = 4096,
        publish_to: tuple[str, ...] = (),
        holdings: bool = False,
    ) -> None:
        if max_plans < 1:
            raise ValueError("max_plans must be at least 1")
        self.estimator = estimator
        self.events_to = events_to
        self.publish_to = publish_to
        #: whether a lesson carries what the estimator holds after it (always when it publishes to anyone)
        self.holdings = holdings or bool(publish_to)
        self.max_plans = max_plans
        self._plans: OrderedDict[str, Plan] = OrderedDict()

    def handle(self, message: Message, now: float) -> Sequence[Output]:
        if isinstance(message, EstimateRequirement):
            return [Reply(self._estimate(message))]
        if isinstance(message, RequestAdmitted):
            self._remember(message.request_id, message.plan)
            return []
        if isinstance(message, RunFinished):
            plan = self._plans.pop(message.request_id, None)
            if plan is None:
                return []
            learned = self._observe(message, plan)
            return [*self._publish(learned), *([Send(self.events_to, learned)] if self.events_to else [])]
        if isinstance(message, ObserveRun):
            learned = self._observe(message.finished, message.plan)
            return [*self._publish(learned), Reply(learned)]
        raise TypeError(f"the estimator does not handle {type(message).__name__}")

    def pending_plans(self) -> int:
        """How many admitted plans wait for their ``RunFinished``."""
        return len(self._plans)

    def _remember(self, request_id: str, plan: Plan) -> None:
        self._plans[request_id] = plan
        self._plans.move_to_end(request_id)
        while len(self._plans) > self.max_plans:
            self._plans.popitem(last=False)

    def _estimate(self, m: EstimateRequirement) -> Message:
        rid = m.request_id or (m.request.request_id if m.request is not None else "")
        try:
            params = self.estimator.resolve(m.request) if m.request is not None else m.params
            assert params is not None  # EstimateRequirement guarantees one of the two
            requirement = self.estimator.estimate(params, m.gpu)
        except BadRequest as exc:
            return RequestRejected(request_id=rid, code="bad_request", reason=str(exc))
        return RequirementEstimated(request_id=rid, requirement=requirement)

    def _publish(self, learned: CorrectionLearned) -> list[Output]:
        return [Send(to, learned) for to in self.publish_to]

    def _observe(self, finished: RunFinished, plan: Plan) -> CorrectionLearned:
        factor = self.estimator.observe(finished, plan)
        gpu = self.estimator.gpus.get(plan.gpu or plan.requirement.gpu).name
        model = plan.params.model
        times = self.estimator.learned.times
        low, corrected, high = times.interval(model, gpu, 1.0, plan.params.options.gpus)
        return CorrectionLearned(
            model=model,
            gpu=gpu,
            factor=factor,
            runs=self.estimator.learned.runs(model, gpu),
            outcome=finished.outcome,
            request_id=finished.request_id,
            time_factor=corrected,
            time_runs=times.runs(gpu),
            time_low=low / corrected,
            time_high=high / corrected,
            # what the optimizer installs; a core without holdings (as in logs made before lessons were published)
            # sends the figures alone
            history=self.estimator.learned.learned(model, gpu) if self.holdings else None,
            times=times.learned(gpu) if self.holdings else None,
        )


def estimator_actor(
    estimator: Estimator | None = None,
    *,
    events_to: str | None = None,
    max_plans: int = 4096,
    publish_to: tuple[str, ...] = (),
    holdings: bool = False,
) -> CoreActor:
    """A :class:`CoreActor` running an :class:`EstimatorCore`; its recorded config (the learned state at start,
    ``events_to``, ``publish_to``, ``holdings``) rebuilds the same core for replay."""
    estimator = estimator if estimator is not None else Estimator()
    config: dict[str, Any] = {
        "events_to": events_to,
        "max_plans": max_plans,
        "learned": msgspec.to_builtins(estimator.learned.state()),
        "prices_loads": estimator.prices_loads,
    }
    if publish_to:
        config["publish_to"] = list(publish_to)
    if holdings:
        config["holdings"] = True
    core = EstimatorCore(estimator, events_to=events_to, max_plans=max_plans, publish_to=publish_to, holdings=holdings)
    return CoreActor(core, kind=KIND, config=config)


def build_core(header: LogHeader, spec: CoreSpec) -> EstimatorCore:
    """Rebuild an estimator core from its recorded config (for replay): the built-in catalogs with the entries the
    header records (:mod:`vramgate.policy.registered`), the built-in calibration."""
    config: Mapping[str, Any] = spec.config
    state = msgspec.convert(config.get("learned", {}), LearnedState)
    events_to = config.get("events_to")
    models, gpus = from_header(header.config).catalogs()
    # a log without ``prices_loads`` was recorded before estimates priced cold starts
    prices_loads = bool(config.get("prices_loads", False))
    estimator = Estimator(models, gpus, learned=LearnedCorrections(state=state), prices_loads=prices_loads)
    return EstimatorCore(
        estimator,
        events_to=str(events_to) if events_to else None,
        max_plans=int(config.get("max_plans", 4096)),
        publish_to=tuple(str(name) for name in config.get("publish_to", ())),
        holdings=bool(config.get("holdings", False)),
    )


register_core_kind(KIND, build_core)
