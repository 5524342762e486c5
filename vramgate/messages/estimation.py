"""The estimator's messages: ask for a requirement, feed it finished runs, hear what it learned."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vramgate.messages._base import Ident, Message
from vramgate.messages.lifecycle import Outcome, RunFinished
from vramgate.messages.plans import Plan, RunParams
from vramgate.messages.requests import GenerationRequest


class EstimateRequirement(Message, frozen=True):
    """Ask the estimator what a run needs on ``gpu``: give the ``request`` (defaults filled in, unpinned options
    off) or concrete ``params``. The answer is ``RequirementEstimated`` (or ``RequestRejected`` for bad input).
    """

    gpu: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    request_id: Ident = ""
    request: GenerationRequest | None = None
    params: RunParams | None = None

    def __post_init__(self) -> None:
        if (self.request is None) == (self.params is None):
            raise ValueError("give exactly one of `request` and `params`")


class ObserveRun(Message, frozen=True):
    """Teach the estimator one finished run of ``plan`` (when it did not see the plan admitted)."""

    finished: RunFinished
    plan: Plan


class ProfileGpuHistory(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What was learned for one (model profile, GPU) pair.

    ``ratios`` are the latest observed/predicted ratios (oldest first, bounded); ``floor`` is the least factor
    OOMs have forced; ``runs``/``ooms`` count every observation.
    """

    ratios: tuple[float, ...] = ()
    floor: Annotated[float, msgspec.Meta(gt=0.0)] = 1.0
    runs: Annotated[int, msgspec.Meta(ge=0)] = 0
    ooms: Annotated[int, msgspec.Meta(ge=0)] = 0


class TimeFactor(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What was learned about one GPU's times: ``runs`` observations, the sum of their log ratios and of squares."""

    runs: Annotated[int, msgspec.Meta(ge=0)] = 0
    log_sum: float = 0.0
    log_square_sum: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0


class CorrectionLearned(Message, frozen=True):
    """The estimator's VRAM correction for (``model``, ``gpu``) after a run: ``factor`` x the raw estimate; and its
    time correction for ``gpu``: ``time_factor`` x the raw time, learned from ``time_runs`` runs, the interval of
    a time then ``time_low`` to ``time_high`` x the corrected time.

    The estimator owns what it learns and publishes it with this message: ``history`` is what it holds for
    (``model``, ``gpu``) and ``times`` what it holds for ``gpu``'s times after the lesson (``None``: nothing learned
    yet). A planner that installs them (:meth:`~vramgate.policy.learning.LearnedCorrections.install`) estimates as
    the estimator does, without learning the lesson again.
    """

    model: str
    gpu: str
    factor: Annotated[float, msgspec.Meta(gt=0.0)]
    runs: Annotated[int, msgspec.Meta(ge=0)]
    outcome: Outcome
    request_id: Ident = ""
    time_factor: Annotated[float, msgspec.Meta(gt=0.0)] = 1.0
    time_runs: Annotated[int, msgspec.Meta(ge=0)] = 0
    time_low: Annotated[float, msgspec.Meta(gt=0.0)] = 1.0
    time_high: Annotated[float, msgspec.Meta(gt=0.0)] = 1.0
    history: ProfileGpuHistory | None = None
    times: TimeFactor | None = None
