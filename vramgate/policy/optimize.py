"""The optimizer: the plan with the least quality loss that fits a device's budget and the host's RAM.

Memory techniques come first (they cost time, never quality); quality knobs (steps, frames, resolution) are used
only as far as the request's ``max_level`` allows:

* ``none``: nothing is changed; the plan says whether the request fits as asked;
* ``basic``: memory techniques only (``free_text_encoder``, ``convert_model_dtype``, ``offload_model``,
  ``t5_cpu``, VAE tiling, ``one_expert_in_ram`` for a mixture of experts, block offloading of the DiT with fewer
  resident blocks, sequential offloading; FSDP and Ulysses on several GPUs);
* ``aggressive``: also fewer steps and shorter clips (down to half of what was asked);
* ``maximum``: also the model's smaller supported sizes.

Among the plans that fit, the optimizer picks the least quality loss, then the least estimated time (see
:mod:`vramgate.policy._search`). Options the request pins are never changed. When nothing fits, the plan has
``fits=False`` and is the configuration that comes closest; :meth:`Optimizer.rejection` turns it into a
:class:`~vramgate.errors.DoesNotFit` with the VRAM it needs and the smallest catalog GPU that holds it.

This is a sans-io core: plain synchronous code, no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from vramgate.errors import DoesNotFit, InvalidParameter
from vramgate.messages.plans import OptimizationSuggestion, Plan, ResourceRequirement, RunParams
from vramgate.messages.requests import GenerationRequest, OptimizationLevel, RunOptions, level_index
from vramgate.policy import _explain
from vramgate.policy._search import (
    Budget,
    Candidate,
    Search,
    Space,
    frame_ladder,
    placement_ladder,
    search,
    size_ladder,
    steps_ladder,
    toggles_for,
)
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG, GpuCatalog, GpuSpec
from vramgate.policy.ledger import MARGIN_FRACTION, MIN_MARGIN_MB, default_margin_mb
from vramgate.policy.models import DEFAULT_MODEL_CATALOG, ModelCatalog, ModelProfile, parse_size

__all__ = [
    "EstimatorLike",
    "ModelLimits",
    "Optimizer",
    "default_margin_mb",
    "limits_of",
    "optimize_parameters_for_resources",
]


class EstimatorLike(Protocol):
    """What the optimizer needs from an estimator."""

    def resolve(self, request: GenerationRequest) -> RunParams: ...

    def estimate(self, params: RunParams, gpu: GpuSpec | str) -> ResourceRequirement: ...


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """What the search needs to know about a model: DiT blocks, the VAE's temporal stride, supported sizes."""

    layers: int
    frame_stride: int
    sizes: tuple[tuple[int, int], ...]
    #: DiT experts (2 for Wan2.2's MoE A14B models, 1 for TI2V-5B): what offloading moves between phases
    experts: int = 1


def limits_of(profile: ModelProfile) -> ModelLimits:
    """The search limits of a model profile."""
    return ModelLimits(
        layers=profile.dit.layers,
        frame_stride=profile.frame_multiple,
        sizes=tuple(parse_size(size) for size in profile.sizes),
        experts=profile.dit.experts,
    )


def _catalog_of(estimator: EstimatorLike) -> ModelCatalog:
    catalog = getattr(estimator, "models", None)
    return catalog if isinstance(catalog, ModelCatalog) else DEFAULT_MODEL_CATALOG


def _gpus_of(estimator: EstimatorLike) -> GpuCatalog:
    catalog = getattr(estimator, "gpus", None)
    return catalog if isinstance(catalog, GpuCatalog) else DEFAULT_GPU_CATALOG


class Optimizer:
    """Finds plans that fit. Deterministic: the same inputs always give the same plan."""

    def __init__(
        self,
        estimator: EstimatorLike,
        gpus: GpuCatalog | None = None,
        *,
        models: ModelCatalog | None = None,
        min_steps_fraction: float = 0.5,
        min_steps: int = 10,
        min_frames_fraction: float = 0.5,
        margin_fraction: float = MARGIN_FRACTION,
        min_margin_mb: int = MIN_MARGIN_MB,
    ) -> None:
        self._estimator = estimator
        self._gpus = gpus if gpus is not None else _gpus_of(estimator)
        self._models = models if models is not None else _catalog_of(estimator)
        self._min_steps_fraction = min_steps_fraction
        self._min_steps = min_steps
        self._min_frames_fraction = min_frames_fraction
        self._margin_fraction = margin_fraction
        self._min_margin_mb = min_margin_mb
        self._limits: dict[str, ModelLimits] = {}

    @property
    def estimator(self) -> EstimatorLike:
        return self._estimator

    def limits(self, model: str) -> ModelLimits:
        found = self._limits.get(model)
        if found is None:
            found = self._limits[model] = limits_of(self._models.get(model))
        return found

    # ------------------------------------------------------------------ the core call

    def optimize(
        self,
        request: GenerationRequest | RunParams,
        *,
        gpu: GpuSpec | str,
        budget_mb: int,
        ram_budget_mb: int | None,
        max_level: OptimizationLevel,
        world_size: int | None = None,
        pinned: RunOptions | None = None,
    ) -> Plan:
        """The best plan for ``request`` within ``budget_mb`` of VRAM per GPU and ``ram_budget_mb`` of host RAM.

        ``pinned`` defaults to the request's own options. ``plan.fits`` is ``False`` when nothing within
        ``max_level`` fits; the plan is then the configuration that comes closest.
        """
        if budget_mb < 0:
            raise InvalidParameter("budget_mb", budget_mb, "must not be negative")
        if ram_budget_mb is not None and ram_budget_mb < 0:
            raise InvalidParameter("ram_budget_mb", ram_budget_mb, "must not be negative")
        spec = self._gpus.get(gpu) if isinstance(gpu, str) else gpu
        request_id = ""
        if isinstance(request, GenerationRequest):
            request_id = request.request_id
            if pinned is None:
                pinned = request.options
            params = self._estimator.resolve(request)
        else:
            params = request
        pinned = pinned if pinned is not None else RunOptions()
        params = self._with_world_size(params, world_size, pinned)
        space = self._space(params, pinned, max_level)
        budget = Budget(budget_mb, ram_budget_mb)

        def estimate(p: RunParams) -> ResourceRequirement:
            return self._estimator.estimate(p, spec)

        result = search(space, estimate, budget)
        evaluator = result.evaluator
        chosen = result.best if result.best is not None else result.closest
        if chosen is None:  # the base itself is invalid for the estimator; let it raise its own error
            estimate(params)
            raise InvalidParameter("request", params.model, "no configuration of this request can be estimated")
        return self._plan(evaluator, chosen, fits=result.best is not None, spec=spec, budget=budget, rid=request_id)

    def next_level(
        self,
        plan: Plan,
        *,
        gpu: GpuSpec | str | None = None,
        max_level: OptimizationLevel | None = None,
        ram_budget_mb: int | None = None,
        pinned: RunOptions | None = None,
        shrink: float = 0.1,
    ) -> Plan | None:
        """A plan that needs at least ``shrink`` (a fraction) less VRAM than ``plan``, or ``None`` if there is none.

        Used after an out-of-memory failure: the new plan starts from ``plan``'s parameters (what it already
        turned on stays on) and its suggestions follow ``plan``'s.
        """
        if not 0.0 < shrink < 1.0:
            raise InvalidParameter("shrink", shrink, "must be between 0 and 1")
        level = max_level if max_level is not None else ("basic" if plan.level in ("none", "basic") else plan.level)
        ceiling = plan.requirement.vram_mb
        if plan.budget_mb is not None:
            ceiling = min(ceiling, plan.budget_mb)
        target = math.floor(ceiling * (1.0 - shrink))
        spec = gpu if gpu is not None else (plan.gpu or plan.requirement.gpu)
        if not spec:
            raise InvalidParameter("gpu", None, "the plan names no GPU; pass gpu=")
        ram = ram_budget_mb if ram_budget_mb is not None else plan.ram_budget_mb
        nxt = self.optimize(
            plan.params,
            gpu=spec,
            budget_mb=target,
            ram_budget_mb=ram,
            max_level=level,
            world_size=plan.params.options.gpus,
            pinned=pinned,
        )
        if not nxt.fits:
            return None
        merged = _merge_levels(plan.level, nxt.level)
        return msgspec.structs.replace(
            nxt,
            request_id=plan.request_id,
            suggestions=plan.suggestions + nxt.suggestions,
            level=merged,
            requirement=msgspec.structs.replace(nxt.requirement, optimization_level=merged),
        )

    # ------------------------------------------------------------------ rejection

    def margin_mb(self, capacity_mb: int) -> int:
        return default_margin_mb(capacity_mb, fraction=self._margin_fraction, minimum_mb=self._min_margin_mb)

    def smallest_gpu(self, vram_mb: int) -> GpuSpec | None:
        """The catalog GPU with the least memory whose budget (capacity less the safety margin) holds ``vram_mb``."""
        fitting = [g for g in self._gpus.all() if g.memory_mib - self.margin_mb(g.memory_mib) >= vram_mb]
        return min(fitting, key=lambda g: (g.memory_mib, g.name)) if fitting else None

    def rejection(self, plan: Plan) -> DoesNotFit:
        """The typed rejection for a plan that does not fit: what it needs and the smallest GPU that holds it."""
        need = plan.requirement.vram_mb
        smallest = self.smallest_gpu(need)
        where = f" on {plan.gpu}" if plan.gpu else ""
        ram, ram_budget = plan.requirement.ram_mb, plan.ram_budget_mb
        if plan.budget_mb is not None and need <= plan.budget_mb and ram_budget is not None and ram > ram_budget:
            reason = (
                f"no plan within level {plan.level!r} fits the host RAM: the closest needs {_explain.fmt_mb(ram)} "
                f"of host RAM but {_explain.fmt_mb(ram_budget)} is available ({_explain.fmt_mb(ram - ram_budget)} "
                f"short; its {_explain.fmt_mb(need)} of VRAM per GPU fits{where}); give it at least "
                f"{_explain.fmt_mb(ram)} of host RAM ({ram} MiB), or a GPU with more VRAM, so that fewer weights "
                "wait on the host"
            )
            return DoesNotFit(
                reason,
                needed_mb=need,
                available_mb=plan.budget_mb,
                smallest_gpu=smallest.name if smallest is not None else None,
            )
        parts = [f"needs {_explain.fmt_mb(need)} of VRAM per GPU"]
        if plan.budget_mb is not None:
            parts[0] += f" but {_explain.fmt_mb(plan.budget_mb)} is available{where}"
        if plan.ram_budget_mb is not None and plan.requirement.ram_mb > plan.ram_budget_mb:
            parts.append(
                f"and {_explain.fmt_mb(plan.requirement.ram_mb)} of host RAM "
                f"(budget {_explain.fmt_mb(plan.ram_budget_mb)})"
            )
        reason = f"no plan within level {plan.level!r} fits: the closest {' '.join(parts)}"
        reason += f"; the smallest GPU that holds it is {smallest.name}" if smallest else "; no catalog GPU holds it"
        return DoesNotFit(
            reason,
            needed_mb=need,
            available_mb=plan.budget_mb,
            smallest_gpu=smallest.name if smallest is not None else None,
        )

    # ------------------------------------------------------------------ internals

    def _with_world_size(self, params: RunParams, world_size: int | None, pinned: RunOptions) -> RunParams:
        if world_size is None or world_size == params.options.gpus:
            return params
        if world_size < 1:
            raise InvalidParameter("world_size", world_size, "must be at least 1")
        if pinned.gpus is not None and pinned.gpus != world_size:
            raise InvalidParameter("world_size", world_size, f"the request pins gpus={pinned.gpus}")
        options = msgspec.structs.replace(params.options, gpus=world_size)
        return msgspec.structs.replace(params, options=options)

    def _space(self, params: RunParams, pinned: RunOptions, max_level: OptimizationLevel) -> Space:
        idx = level_index(max_level)
        lim = self.limits(params.model)
        opts = params.options
        ws = opts.gpus
        if idx >= 1:
            toggles = toggles_for(opts, pinned, ws, lim.experts)
            placements = placement_ladder(opts, pinned, lim.layers)
        else:
            toggles, placements = (), ((opts.resident_blocks, opts.sequential_offload),)
        steps: tuple[int, ...] = (params.steps,)
        frames: tuple[int, ...] = (params.frames,)
        sizes: tuple[tuple[int, int], ...] = ((params.width, params.height),)
        if idx >= 2:
            floor = min(params.steps, max(math.ceil(params.steps * self._min_steps_fraction), self._min_steps))
            steps = steps_ladder(params.steps, floor)
            frames = frame_ladder(params.frames, lim.frame_stride, math.ceil(params.frames * self._min_frames_fraction))
        if idx >= 3:
            sizes = size_ladder(params.width, params.height, lim.sizes)
        return Space(
            base=params,
            toggles=toggles,
            ulysses_on=ws,
            placements=placements,
            steps=steps,
            frames=frames,
            sizes=sizes,
        )

    def _plan(self, evaluator: Search, cand: Candidate, *, fits: bool, spec: GpuSpec, budget: Budget, rid: str) -> Plan:
        space = evaluator.space
        params = evaluator.params(cand.quality, cand.mask, cand.placement)
        lim = self.limits(params.model)
        suggestions = _explain.suggestions(evaluator, cand, lim.layers, experts=lim.experts)
        level: OptimizationLevel = "none"
        for s in suggestions:
            if level_index(s.level) > level_index(level):
                level = s.level
        requirement = msgspec.structs.replace(cand.requirement, optimization_level=level)
        del space
        return Plan(
            params=params,
            requirement=requirement,
            request_id=rid,
            suggestions=suggestions,
            level=level,
            fits=fits,
            budget_mb=budget.vram_mb,
            ram_budget_mb=budget.ram_mb,
            gpu=spec.name,
        )


def _merge_levels(a: OptimizationLevel, b: OptimizationLevel) -> OptimizationLevel:
    return a if level_index(a) >= level_index(b) else b


def summary(plan: Plan) -> str:
    """One sentence about a plan: whether it fits, how, and how much slower it is than the request as asked."""
    added = sum(s.time_added_s for s in plan.suggestions)
    base_time = plan.requirement.estimated_time_seconds - added
    base = msgspec.structs.replace(plan.requirement, estimated_time_seconds=max(base_time, 0.0))
    return _explain.summary(base, plan.requirement.estimated_time_seconds, plan.fits, plan.level)


# ---------------------------------------------------------------------- the legacy convenience call


def optimize_parameters_for_resources(
    params: GenerationRequest | Mapping[str, Any],
    *,
    estimator: EstimatorLike | None = None,
    gpu: GpuSpec | str | None = None,
    vram_mb: int | None = None,
    ram_mb: int | None = None,
    level: OptimizationLevel | None = None,
) -> tuple[RunParams, list[OptimizationSuggestion]]:
    """The legacy call: the parameters to run with, and the changes made to reach them.

    ``params`` is a :class:`GenerationRequest` or a mapping of its fields. The budget is ``vram_mb`` (default:
    the capacity of ``gpu`` less the safety margin); ``level`` defaults to the request's ``max_level``. Raises
    :class:`~vramgate.errors.DoesNotFit` when nothing within that level fits.
    """
    from vramgate.errors import DecodeError

    if isinstance(params, GenerationRequest):
        request = params
    else:
        try:
            request = msgspec.convert(dict(params), GenerationRequest)
        except (msgspec.ValidationError, ValueError) as exc:
            raise DecodeError(str(exc)) from exc
    if estimator is None:
        from vramgate.policy.estimate import Estimator

        estimator = Estimator()
    if gpu is None and vram_mb is None:
        raise InvalidParameter("gpu", None, "give the GPU (gpu=) or the VRAM budget (vram_mb=)")
    optimizer = Optimizer(estimator)
    if gpu is None:
        spec = DEFAULT_GPU_CATALOG.get(f"{vram_mb}MiB")
    else:
        spec = DEFAULT_GPU_CATALOG.get(gpu) if isinstance(gpu, str) else gpu
    budget = vram_mb if vram_mb is not None else spec.memory_mib - optimizer.margin_mb(spec.memory_mib)
    plan = optimizer.optimize(
        request, gpu=spec, budget_mb=budget, ram_budget_mb=ram_mb, max_level=level or request.max_level
    )
    if not plan.fits:
        raise optimizer.rejection(plan)
    return plan.params, list(plan.suggestions)
