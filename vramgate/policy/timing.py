"""How sure a time estimate is, and a per-GPU time correction learned from observed runs.

Sans-io: :class:`TimeCorrections` takes observations and answers queries; it reads no clock and does no I/O.

The estimate's time for a run on a GPU is off by a factor that is mostly the GPU's (its achieved throughput
against the catalog's figures). The factor's logarithm has a normal prior centred on 0 (the estimate is right),
with a spread that says how sure the estimate is: narrow where the GPU and the model are in the calibration (the
published rows the constants were fitted to: t2v-A14B on H100 and A100-80GB, ti2v-5B on RTX 4090, within 10 %),
wider where only the GPU is, widest where the GPU is not (a compute-limited data-center GPU outside the
calibration was off by 40 % to 69 %), and wider again for runs over many GPUs (8-GPU runs on consumer cards were
off by up to 56 %). Each observed run (observed over predicted seconds, run noise ``noise`` in log space) updates
it by the conjugate normal rule (the prior weighing at most half a run in the mean), so the correction converges
to the GPU's true factor and its interval narrows as runs are observed, down to the run noise. The interval of a
time is the central 90 % of a run's distribution: the factor's uncertainty and the run noise.

What was learned is a msgspec struct per GPU (:meth:`TimeCorrections.state`), persisted with the VRAM corrections
(:mod:`vramgate.policy.learning`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec

from vramgate.messages.estimation import TimeFactor
from vramgate.messages.lifecycle import RunFinished
from vramgate.messages.plans import ResourceRequirement

#: The (model, GPU) pairs of the calibration (``wan_published.csv`` in the reference data).
CALIBRATED: frozenset[tuple[str, str]] = frozenset(
    {("t2v-A14B", "H100-80GB"), ("t2v-A14B", "A100-80GB"), ("ti2v-5B", "RTX4090-24GB")}
)
#: Log-space spread of the prior: the pair calibrated, only the GPU calibrated, the GPU not calibrated.
PAIR_SPREAD = 0.06
GPU_SPREAD = 0.15
UNCALIBRATED_SPREAD = 0.3
#: Added (in quadrature) for runs over more GPUs than the calibration had (4).
WIDE_WORLD_SPREAD = 0.25
#: Two-sided normal quantile for a central 90 % interval.
_Z90 = 1.6449


class TimeCorrections:
    """Per-GPU time corrections with intervals; see the module docstring."""

    def __init__(self, *, noise: float = 0.1, state: Mapping[str, TimeFactor] | None = None) -> None:
        if not noise > 0.0:
            raise ValueError("noise must be positive")
        self.noise = noise
        self._gpus: dict[str, TimeFactor] = dict(state) if state is not None else {}
        self._gpu_calibrated = {gpu for _, gpu in CALIBRATED}

    def state(self) -> dict[str, TimeFactor]:
        """What was learned, by GPU name (sorted, so that it encodes the same every time)."""
        return dict(sorted(self._gpus.items()))

    def prior_spread(self, model: str, gpu: str, world_size: int = 1) -> float:
        """The prior's log-space spread for a run of ``model`` on ``world_size`` GPUs of kind ``gpu``."""
        if (model, gpu) in CALIBRATED:
            spread = PAIR_SPREAD
        elif gpu in self._gpu_calibrated:
            spread = GPU_SPREAD
        else:
            spread = UNCALIBRATED_SPREAD
        if world_size > 4:
            spread = math.hypot(spread, WIDE_WORLD_SPREAD)
        return spread

    def observe(self, gpu: str, *, predicted_s: float, observed_s: float) -> None:
        """Learn from one run on ``gpu``: its uncorrected predicted time and its observed time (both > 0)."""
        if not (predicted_s > 0.0 and observed_s > 0.0):
            raise ValueError("predicted_s and observed_s must be positive")
        ratio = math.log(observed_s / predicted_s)
        found = self._gpus.get(gpu, TimeFactor())
        self._gpus[gpu] = TimeFactor(
            runs=found.runs + 1, log_sum=found.log_sum + ratio, log_square_sum=found.log_square_sum + ratio * ratio
        )

    def observe_run(self, gpu: str, *, predicted_s: float, finished: RunFinished) -> bool:
        """Learn from a finished run when it teaches a time: it ran to the end (``ok``) and says how long it took;
        ``predicted_s`` is the uncorrected estimate for its plan. Returns whether it taught anything."""
        seconds = finished.seconds
        if finished.outcome != "ok" or seconds is None or not (seconds > 0.0 and predicted_s > 0.0):
            return False
        self.observe(gpu, predicted_s=predicted_s, observed_s=seconds)
        return True

    def runs(self, gpu: str) -> int:
        found = self._gpus.get(gpu)
        return 0 if found is None else found.runs

    def learned(self, gpu: str) -> TimeFactor | None:
        """What was learned of ``gpu``'s times (``None``: nothing yet)."""
        return self._gpus.get(gpu)

    def install(self, gpu: str, learned: TimeFactor) -> None:
        """Hold ``learned`` for ``gpu``'s times, as published by the estimator that learned it."""
        self._gpus[gpu] = learned

    def posterior(self, model: str, gpu: str, world_size: int = 1) -> tuple[float, float]:
        """The log factor's posterior mean and the spread of a run's time about it (the factor's uncertainty and
        the run noise). The mean weighs the prior as at most half a run, so that a calibration that is wrong for
        this GPU (a slower clock, another driver) is overruled within a few runs."""
        prior = self.prior_spread(model, gpu, world_size)
        found = self._gpus.get(gpu, TimeFactor())
        noise = self.noise**2
        weight = min(1.0 / prior**2, 0.5 / noise)
        mean = (found.log_sum / noise) / (weight + found.runs / noise)
        variance = 1.0 / (1.0 / prior**2 + found.runs / noise)
        return mean, math.sqrt(variance + noise)

    def factor(self, model: str, gpu: str, world_size: int = 1) -> float:
        """The correction to multiply the estimate's time by (1.0 before any run on ``gpu``)."""
        return math.exp(self.posterior(model, gpu, world_size)[0])

    def interval(self, model: str, gpu: str, point_s: float, world_size: int = 1) -> tuple[float, float, float]:
        """The corrected time of an estimate of ``point_s`` seconds and its interval: (low, corrected, high)."""
        mean, spread = self.posterior(model, gpu, world_size)
        corrected = point_s * math.exp(mean)
        half = _Z90 * spread
        return corrected * math.exp(-half), corrected, corrected * math.exp(half)

    def apply(self, requirement: ResourceRequirement, model: str) -> ResourceRequirement:
        """``requirement`` with its time corrected and its interval set (memory figures unchanged)."""
        low, corrected, high = self.interval(
            model, requirement.gpu, requirement.estimated_time_seconds, requirement.world_size
        )
        return msgspec.structs.replace(requirement, estimated_time_seconds=corrected, time_low_s=low, time_high_s=high)


def expected_run_s(estimated_s: float, time_scale: float, min_run_s: float) -> float:
    """How long a run whose plan estimates ``estimated_s`` seconds is expected to last: times ``time_scale``, at least
    ``min_run_s`` (``[run] time_scale`` and ``min_seconds``: a server whose runs are compressed or simulated says
    so)."""
    return max(min_run_s, estimated_s * time_scale)


def time_high_s(requirement: ResourceRequirement) -> float:
    """The longest ``requirement`` is expected to run: the top of its interval, else its point time."""
    high = requirement.time_high_s
    return requirement.estimated_time_seconds if high is None else high
