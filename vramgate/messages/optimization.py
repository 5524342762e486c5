"""The optimizer's messages: asking for a plan that fits a budget, and the answer when none does.

The optimizer answers :class:`OptimizePlan` and :class:`ShrinkPlan` with
:class:`~vramgate.messages.lifecycle.PlanOptimized` when a plan fits, with :class:`PlanDoesNotFit` when nothing
within the level fits, and with :class:`~vramgate.messages.lifecycle.RequestRejected` (code ``bad_request``)
when the request itself is invalid (an unknown model, a size the model cannot make).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from vramgate.messages._base import MB, Ident, Message
from vramgate.messages.estimation import CorrectionLearned
from vramgate.messages.plans import Plan, RunParams
from vramgate.messages.requests import GenerationRequest, OptimizationLevel, RunOptions


class OptimizePlan(Message, frozen=True):
    """Find the plan with the least quality loss for ``request`` that fits ``budget_mb`` of VRAM per GPU on
    ``gpu`` and ``ram_budget_mb`` of host RAM (``None``: host RAM is not limited).

    ``max_level`` defaults to the request's own (``basic`` for bare run parameters); ``pinned`` to the
    request's options; ``world_size`` to the request's GPU count. ``corrections``: the estimator's lessons the
    optimizer has not been sent yet, installed before it plans (in order).
    """

    request: GenerationRequest | RunParams
    gpu: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    budget_mb: MB
    ram_budget_mb: MB | None = None
    request_id: Ident = ""
    max_level: OptimizationLevel | None = None
    world_size: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    pinned: RunOptions | None = None
    corrections: tuple[CorrectionLearned, ...] = ()


class ShrinkPlan(Message, frozen=True):
    """Find a plan that needs at least ``shrink`` (a fraction) less VRAM than ``plan`` (after an out-of-memory
    failure). ``max_level`` defaults to the plan's level, at least ``basic``; ``corrections`` as for
    :class:`OptimizePlan`."""

    plan: Plan
    request_id: Ident = ""
    max_level: OptimizationLevel | None = None
    ram_budget_mb: MB | None = None
    pinned: RunOptions | None = None
    shrink: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.1
    corrections: tuple[CorrectionLearned, ...] = ()


class PlanDoesNotFit(Message, frozen=True):
    """No plan within the level fits: ``best_plan`` comes closest, needs ``needed_mb`` of VRAM per GPU, and fits
    ``smallest_gpu`` (the smallest catalog GPU whose budget holds it; ``None`` when none does)."""

    request_id: Ident
    reason: str
    needed_mb: MB
    best_plan: Plan
    smallest_gpu: str | None = None
