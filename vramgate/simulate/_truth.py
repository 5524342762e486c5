"""The truth the policies do not know: what each request really needs, relative to the estimator's figures.

A request's true peak and time describe it as given (its pinned options, the rest at their defaults) on the
reference GPU (the first device). The ratios true/estimated are kept per request, and any plan of it, on any GPU,
really needs the estimator's figures for that plan times the same ratios. When a trace gives no true figures, the
ratios are drawn with seeded log-normal noise.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

import msgspec

from vramgate.messages.plans import ResourceRequirement, RunParams
from vramgate.messages.requests import GenerationRequest
from vramgate.policy._resident import WEIGHT_COMPONENTS
from vramgate.policy.gpus import GpuSpec


class EstimatorLike(Protocol):
    def resolve(self, request: GenerationRequest) -> RunParams: ...

    def estimate(self, params: RunParams, gpu: GpuSpec | str) -> ResourceRequirement: ...


class Truth:
    """Cached real estimates, and the noise that turns them into the truth."""

    def __init__(self, estimator: EstimatorLike, reference: GpuSpec, *, mem_spread: float, time_spread: float):
        self.estimator = estimator
        self.reference = reference
        self.mem_spread = mem_spread
        self.time_spread = time_spread
        self._given: dict[GenerationRequest, RunParams] = {}
        self._estimates: dict[tuple[RunParams, str], tuple[int, float]] = {}
        self._footprints: dict[tuple[RunParams, str], tuple[int, int]] = {}
        self._gpus: dict[str, GpuSpec] = {reference.name: reference}

    def as_given(self, request: GenerationRequest) -> RunParams:
        """The request resolved as given (raises the estimator's typed error on a bad request)."""
        key = msgspec.structs.replace(request, request_id="", priority=0, prompt="", max_wait_s=None)
        params = self._given.get(key)
        if params is None:
            params = self._given[key] = self.estimator.resolve(request)
        return params

    def estimate(self, params: RunParams, gpu: GpuSpec) -> tuple[int, float]:
        """The estimator's peak VRAM per GPU (MiB) and time (s) for ``params`` on ``gpu``."""
        key = (params, gpu.name)
        found = self._estimates.get(key)
        if found is None:
            requirement = self.estimator.estimate(params, gpu)
            found = self._estimates[key] = (requirement.vram_mb, requirement.estimated_time_seconds)
            weights = sum(c.vram_mb for c in requirement.components if c.name in WEIGHT_COMPONENTS)
            self._footprints[key] = (weights, requirement.ram_mb)
        return found

    def footprint(self, params: RunParams, gpu: GpuSpec) -> tuple[int, int]:
        """The estimator's weights on each GPU at the peak (MiB) and host RAM peak (MiB) for ``params`` on ``gpu``."""
        found = self._footprints.get((params, gpu.name))
        if found is None:
            self.estimate(params, gpu)
            found = self._footprints[(params, gpu.name)]
        return found

    def ratios(
        self, request: GenerationRequest, true_peak_mb: int | None, true_seconds: float | None, rng: random.Random
    ) -> tuple[float, float]:
        """True/estimated ratios of memory and time for a request (noise is drawn even when figures are given,
        so that adding true figures to one line does not shift the draws of the others)."""
        mem_noise = _lognormal(rng, self.mem_spread)
        time_noise = _lognormal(rng, self.time_spread)
        vram, seconds = self.estimate(self.as_given(request), self.reference)
        mem = true_peak_mb / max(vram, 1) if true_peak_mb is not None else mem_noise
        time = true_seconds / max(seconds, 1e-9) if true_seconds is not None else time_noise
        return mem, time


def _lognormal(rng: random.Random, spread: float) -> float:
    if spread <= 0.0:
        rng.random()
        return 1.0
    value = rng.gauss(0.0, spread)
    return math.exp(max(-2.5 * spread, min(2.5 * spread, value)))
