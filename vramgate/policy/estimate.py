"""The estimator: what a generation run needs (peak VRAM per GPU, peak host RAM, seconds), split into parts.

Sans-io: plain synchronous code, no clock, no I/O. :meth:`Estimator.resolve` turns a request into concrete
:class:`~vramgate.messages.RunParams` (defaults from the model profile, options the request does not pin turned
off); :meth:`Estimator.estimate` prices a run on a GPU; :meth:`Estimator.observe` learns from a finished run.
The model behind the numbers is in ``_physics.py``; its constants come from :class:`Calibration`, fitted to
published figures by ``python -m vramgate.policy.fit``.
"""

from __future__ import annotations

from typing import NamedTuple

from vramgate.errors import InvalidParameter
from vramgate.messages.lifecycle import RunFinished
from vramgate.messages.plans import Component, Plan, ResolvedOptions, ResourceRequirement, RunParams
from vramgate.messages.requests import GenerationRequest, OptimizationLevel, RunOptions
from vramgate.policy._derived import MIB, Derived, derive
from vramgate.policy._host_ram import cold_load_seconds
from vramgate.policy._physics import Breakdown, compute
from vramgate.policy.calibration import Calibration
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG, GpuCatalog, GpuSpec
from vramgate.policy.learning import LearnedCorrections
from vramgate.policy.models import DEFAULT_MODEL_CATALOG, ModelCatalog, ModelProfile

#: Largest token count the calibration data covers; beyond it confidence drops.
_CALIBRATED_TOKENS = 120_000
#: How many (run, GPU) physics results an estimator remembers (all are forgotten past it).
_COMPUTED_KEPT = 4096
#: GPU architectures the calibration data covers.
_CALIBRATED_ARCHITECTURES = frozenset({"hopper", "ampere", "ada"})


def _mb(value: float) -> int:
    return int(-(-value // MIB)) if value > 0 else 0


def nearest_frames(duration_s: float, fps: int, multiple: int) -> int:
    """``duration_s * fps`` rounded to the nearest ``multiple * k + 1`` (at least 1)."""
    raw = duration_s * fps
    k = max(0, round((raw - 1) / multiple))
    return multiple * k + 1


class _Priced(NamedTuple):
    """What an estimate takes from the physics alone (the learned corrections go on top), and what it came from."""

    derived: Derived
    spec: GpuSpec
    constants: Calibration
    breakdown: Breakdown
    #: the components before any learned correction
    components: tuple[Component, ...]
    vram_mb: int
    ram_mb: int
    #: the confidence before anything was learned
    confidence: float
    load_time_s: float


class Estimator:
    """Prices runs of registered models on catalog GPUs; learns per (model, GPU) corrections from runs."""

    def __init__(
        self,
        models: ModelCatalog = DEFAULT_MODEL_CATALOG,
        gpus: GpuCatalog = DEFAULT_GPU_CATALOG,
        constants: Calibration | None = None,
        learned: LearnedCorrections | None = None,
        *,
        prices_loads: bool = True,
    ) -> None:
        self.models = models
        #: whether a requirement carries the time a cold start adds (``load_time_s``); off only to replay logs
        #: recorded before estimates had it
        self.prices_loads = prices_loads
        self.gpus = gpus
        self.constants = constants if constants is not None else Calibration.default()
        self.learned = learned if learned is not None else LearnedCorrections()
        self._derived: dict[str, tuple[ModelProfile, Derived]] = {}
        self._gpu_cache: dict[str, GpuSpec] = {}
        # the physics of each (run, GPU) seen: a server prices and learns from the same few runs again and again
        self._computed: dict[tuple[RunParams, str], _Priced] = {}

    # ---------------------------------------------------------------- lookups

    @property
    def catalog(self) -> ModelCatalog:
        """The model catalog (the optimizer reads profiles from it)."""
        return self.models

    def profile(self, name: str) -> ModelProfile:
        return self.models.get(name)

    def _profile_derived(self, name: str) -> tuple[ModelProfile, Derived]:
        cached = self._derived.get(name)
        profile = self.models.get(name) if cached is None or self.models.find(name) is not cached[0] else cached[0]
        if cached is None or cached[0] is not profile:
            cached = self._derived[name] = (profile, derive(profile))
        return cached

    def _gpu(self, gpu: GpuSpec | str) -> GpuSpec:
        if isinstance(gpu, GpuSpec):
            return gpu
        found = self._gpu_cache.get(gpu)
        if found is None:
            found = self._gpu_cache[gpu] = self.gpus.get(gpu)
        return found

    # ---------------------------------------------------------------- resolve

    def resolve(self, request: GenerationRequest) -> RunParams:
        """Fill defaults from the profile, validate, and decide options (unpinned ones off)."""
        profile = self.models.get(request.model)
        task = request.task or profile.default_task
        if task not in profile.tasks:
            raise InvalidParameter(
                "task", task, f"model {profile.name} does not support it", valid="/".join(profile.tasks)
            )
        fps = request.fps or profile.default_fps
        if request.frames is not None:
            frames = request.frames
        elif request.duration_s is not None:
            frames = nearest_frames(request.duration_s, fps, profile.frame_multiple)
        else:
            frames = profile.default_frames
        steps = request.steps if request.steps is not None else profile.default_steps
        params = RunParams(
            model=profile.name,
            task=task,
            width=request.width,
            height=request.height,
            frames=frames,
            steps=steps,
            fps=fps,
            guidance_scale=request.guidance_scale,
            lora=request.lora,
            options=resolve_options(request.options),
        )
        self.validate(params, profile)
        return params

    def validate(self, params: RunParams, profile: ModelProfile | None = None) -> None:
        """Raise :class:`InvalidParameter` naming what is wrong with ``params`` and what would be valid."""
        profile = profile if profile is not None else self.models.get(params.model)
        validate_params(params, profile)

    # ---------------------------------------------------------------- estimate

    def breakdown(self, params: RunParams, gpu: GpuSpec | str) -> Breakdown:
        """The raw model numbers (bytes, seconds) without learned correction; no validation."""
        profile, derived = self._profile_derived(params.model)
        return self._priced(params, profile, derived, self._gpu(gpu)).breakdown

    def _priced(self, params: RunParams, profile: ModelProfile, derived: Derived, spec: GpuSpec) -> _Priced:
        """:func:`compute` and the parts of a requirement that follow from it alone, remembered until the profile,
        the GPU or the constants they came from are replaced (shared: read them, never change them)."""
        key = (params, spec.name)
        seen = self._computed.get(key)
        constants = self.constants
        if seen is not None and seen.derived is derived and seen.spec is spec and seen.constants is constants:
            return seen
        b = compute(params, derived, spec, constants)
        phase = b.peak_phase
        components = [
            Component(name="dit_weights", vram_mb=_mb(b.dit_weights), ram_mb=_mb(b.ram_weights), note=phase),
            Component(name="text_encoder", vram_mb=_mb(b.text_encoder)),
            Component(name="vae_weights", vram_mb=_mb(b.vae_weights)),
            Component(
                name="activations",
                vram_mb=_mb(b.activations),
                seconds=b.t_denoise,
                note=f"{b.tokens} tokens, {b.tokens_per_gpu} per GPU, {b.runner}"
                + (f", peak in {b.activation_peak}" if b.activation_peak else ""),
            ),
            Component(name="vae_work", vram_mb=_mb(b.vae_work), seconds=b.t_vae),
            Component(name="runtime", vram_mb=_mb(b.runtime), ram_mb=_mb(b.ram_runtime), seconds=b.t_overhead),
            Component(name="text_encode", seconds=b.t_text),
            Component(name="weight_transfers", seconds=b.t_transfers + b.t_stream),
            *([Component(name="checkpoint_reads", seconds=b.t_disk, note="from disk")] if b.t_disk else []),
        ]
        if b.t_comm:
            components.append(Component(name="interconnect", seconds=b.t_comm, note="Ulysses all-to-alls"))
        if b.lora:
            components.insert(1, Component(name="lora", vram_mb=_mb(b.lora)))
        priced = _Priced(
            derived,
            spec,
            constants,
            b,
            tuple(components),
            sum(c.vram_mb for c in components),
            _mb(b.ram_weights + b.ram_runtime),
            self._confidence(profile, spec, b),
            cold_load_seconds(derived),
        )
        if len(self._computed) >= _COMPUTED_KEPT:
            self._computed.clear()
        self._computed[key] = priced
        return priced

    def estimate(
        self, params: RunParams, gpu: GpuSpec | str, *, level: OptimizationLevel = "none"
    ) -> ResourceRequirement:
        """Peak VRAM per GPU (world size ``params.options.gpus``), peak host RAM and seconds, with components."""
        profile, derived = self._profile_derived(params.model)
        validate_params(params, profile)
        spec = self._gpu(gpu)
        priced = self._priced(params, profile, derived, spec)
        learned = self.learned
        factor = learned.factor(profile.name, spec.name)
        components = priced.components
        vram_mb = priced.vram_mb
        if factor != 1.0:
            corrected = _mb(priced.breakdown.vram * factor)
            correction = Component(
                name="learned_correction", vram_mb=max(0, corrected - vram_mb), note=f"x{factor:.3f}"
            )
            components = (*components, correction)
            vram_mb = max(vram_mb, corrected)
        requirement = ResourceRequirement(
            vram_mb=vram_mb,
            ram_mb=priced.ram_mb,
            estimated_time_seconds=priced.breakdown.seconds,
            optimization_level=level,
            components=components,
            gpu=spec.name,
            world_size=params.options.gpus,
            confidence=learned.confidence(profile.name, spec.name, priced.confidence),
            correction=factor,
            load_time_s=priced.load_time_s if self.prices_loads else 0.0,
        )
        return learned.times.apply(requirement, profile.name)  # the time corrected, with its interval

    def fits(self, requirement: ResourceRequirement, gpu: GpuSpec | str) -> bool:
        """Whether ``requirement`` fits ``gpu`` with the calibrated safety margin kept free."""
        spec = self._gpu(gpu)
        return requirement.vram_mb <= spec.memory_mib * (1.0 - self.constants.safety_margin_fraction)

    @staticmethod
    def _confidence(profile: ModelProfile, gpu: GpuSpec, b: Breakdown) -> float:
        """The confidence of a run's estimate before anything was learned about its (model, GPU)."""
        base = 0.8 if profile.name in ("t2v-A14B", "i2v-A14B", "ti2v-5B") else 0.55
        if gpu.architecture not in _CALIBRATED_ARCHITECTURES:
            base -= 0.1
        if b.tokens > _CALIBRATED_TOKENS:
            base -= 0.1
        return base

    # ---------------------------------------------------------------- learning

    def observe(self, finished: RunFinished, plan: Plan) -> float:
        """Learn from a finished run of ``plan``; returns the new correction for its (model, GPU)."""
        requirement = plan.requirement
        gpu = plan.gpu or requirement.gpu
        spec = self._gpu(gpu)
        b = self.breakdown(plan.params, spec)
        raw = b.vram
        self.learned.times.observe_run(spec.name, predicted_s=b.seconds, finished=finished)
        return self.learned.observe(
            plan.params.model,
            spec.name,
            predicted_mb=raw / MIB,
            observed_mb=finished.observed.best_mb(),
            outcome=finished.outcome,
            budget_mb=plan.budget_mb if plan.fits else None,
        )


def resolve_options(options: RunOptions | None) -> ResolvedOptions:
    """Pinned options as given; unpinned ones off (everything resident, weights as loaded, one GPU)."""
    if options is None:
        return ResolvedOptions()
    gpus = options.gpus if options.gpus is not None else 1
    return ResolvedOptions(
        offload_model=bool(options.offload_model),
        convert_model_dtype=bool(options.convert_model_dtype),
        t5_cpu=bool(options.t5_cpu),
        vae_tiling=bool(options.vae_tiling),
        dit_fsdp=bool(options.dit_fsdp),
        t5_fsdp=bool(options.t5_fsdp),
        ulysses=options.ulysses if options.ulysses is not None else 1,
        gpus=gpus,
        resident_blocks=options.resident_blocks,
        sequential_offload=bool(options.sequential_offload),
        dit_dtype=options.dit_dtype if options.dit_dtype is not None else "bf16",
        runner=options.runner if options.runner is not None else "generate.py",
        free_text_encoder=bool(options.free_text_encoder),
        one_expert_in_ram=bool(options.one_expert_in_ram),
    )


def validate_params(params: RunParams, profile: ModelProfile) -> None:
    """Raise :class:`InvalidParameter` for values the model or the options cannot take."""
    m = profile.spatial_multiple
    for field, value in (("width", params.width), ("height", params.height)):
        if value <= 0:
            raise InvalidParameter(field, value, "must be positive", valid=f"a positive multiple of {m}")
        if value % m:
            lower = max(m, value // m * m)
            raise InvalidParameter(
                field, value, f"must be a multiple of {m} for {profile.name}", valid=f"e.g. {lower} or {lower + m}"
            )
    f = profile.frame_multiple
    if params.frames <= 0 or (params.frames - 1) % f:
        k = max(0, (params.frames - 1) // f)
        raise InvalidParameter(
            "frames", params.frames, f"must be {f}k+1 for {profile.name}", valid=f"e.g. {f * k + 1} or {f * k + f + 1}"
        )
    if params.steps <= 0:
        raise InvalidParameter("steps", params.steps, "must be positive", valid="1 or more")
    if params.fps <= 0:
        raise InvalidParameter("fps", params.fps, "must be positive", valid="1 or more")
    if params.task not in profile.tasks:
        raise InvalidParameter("task", params.task, f"not supported by {profile.name}", valid="/".join(profile.tasks))
    o = params.options
    if o.gpus < 1:
        raise InvalidParameter("gpus", o.gpus, "must be positive", valid="1 or more")
    if o.ulysses < 1 or o.gpus % o.ulysses:
        raise InvalidParameter(
            "ulysses", o.ulysses, f"must divide the GPU count {o.gpus}", valid=f"a divisor of {o.gpus}"
        )
    if profile.dit.heads % o.ulysses:
        raise InvalidParameter(
            "ulysses", o.ulysses, f"must divide the {profile.dit.heads} attention heads of {profile.name}"
        )
    if (o.dit_fsdp or o.t5_fsdp) and o.gpus < 2:
        raise InvalidParameter("dit_fsdp/t5_fsdp", True, "FSDP needs more than one GPU", valid="gpus >= 2")
    if o.t5_cpu and o.t5_fsdp:
        raise InvalidParameter("t5_cpu", True, "cannot be combined with t5_fsdp")
    if o.one_expert_in_ram and profile.dit.experts < 2:
        raise InvalidParameter(
            "one_expert_in_ram", True, f"{profile.name} has one DiT expert", valid="false (or a model with experts)"
        )
    if o.resident_blocks is not None and o.resident_blocks > profile.dit.layers:
        raise InvalidParameter(
            "resident_blocks",
            o.resident_blocks,
            f"{profile.name} has {profile.dit.layers} blocks",
            valid=f"0..{profile.dit.layers}",
        )


__all__ = ["Estimator", "nearest_frames", "resolve_options", "validate_params"]


def copy_estimator(estimator: Estimator) -> Estimator:
    """An estimator with the same catalogs, constants and learned state (VRAM and times), learning on its own."""
    learned = LearnedCorrections(state=estimator.learned.state())
    return Estimator(
        estimator.models, estimator.gpus, estimator.constants, learned, prices_loads=estimator.prices_loads
    )
