"""Optimizer throughput: plans per second and milliseconds per plan, against one bare ``estimate()`` call.

    python bench/optimize.py [--cases 400] [--repeat 3] [--seed 1]

The cases are seeded and mixed: the three Wan2.2 models at their sizes, 17 to 121 frames, 10 to 50 steps, every
catalog GPU with budgets from 20% to 100% of its memory, host RAM limited or not, every level from ``none`` to
``maximum``, and half of them with pinned options. Every plan is computed from scratch (the search memoizes
estimates within one plan only). The baseline is one ``Estimator.estimate()`` call on the same cases, measured
in the same run; the ratio says how many estimates one plan costs in time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass

from vramgate.messages import GenerationRequest, ResourceRequirement, RunOptions, RunParams
from vramgate.messages.requests import LEVELS, OptimizationLevel
from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG, GpuSpec
from vramgate.policy.models import DEFAULT_MODEL_CATALOG, parse_size
from vramgate.policy.optimize import Optimizer


@dataclass(frozen=True)
class Case:
    request: GenerationRequest
    params: RunParams
    gpu: GpuSpec
    budget_mb: int
    ram_mb: int | None
    level: OptimizationLevel


def make_cases(n: int, seed: int, estimator: Estimator) -> list[Case]:
    rng = random.Random(seed)
    profiles = DEFAULT_MODEL_CATALOG.all()
    gpus = DEFAULT_GPU_CATALOG.all()
    out = []
    for i in range(n):
        profile = rng.choice(profiles)
        width, height = parse_size(rng.choice(profile.sizes))
        pins = None
        if rng.random() < 0.5:
            pins = RunOptions(offload_model=True, convert_model_dtype=True, t5_cpu=rng.choice((None, True)))
        request = GenerationRequest(
            model=profile.name,
            width=width,
            height=height,
            frames=4 * rng.randint(4, 30) + 1,
            steps=rng.randint(10, 50),
            request_id=f"bench-{i}",
            options=pins,
        )
        gpu = rng.choice(gpus)
        out.append(
            Case(
                request=request,
                params=estimator.resolve(request),
                gpu=gpu,
                budget_mb=int(gpu.memory_mib * rng.uniform(0.2, 1.0)),
                ram_mb=rng.choice((None, 65536, 131072, 262144)),
                level=rng.choice(LEVELS),
            )
        )
    return out


class Counting:
    """The real estimator, counting ``estimate()`` calls (used outside the timed loops)."""

    def __init__(self, inner: Estimator) -> None:
        self.inner = inner
        self.models = inner.models
        self.calls = 0

    def resolve(self, request: GenerationRequest) -> RunParams:
        return self.inner.resolve(request)

    def estimate(self, params: RunParams, gpu: GpuSpec | str) -> ResourceRequirement:
        self.calls += 1
        return self.inner.estimate(params, gpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    estimator = Estimator()
    optimizer = Optimizer(estimator)
    cases = make_cases(args.cases, args.seed, estimator)

    # warm up both paths (profile derivations, GPU lookups, imports)
    for c in cases[:20]:
        estimator.estimate(c.params, c.gpu)
        optimizer.optimize(c.request, gpu=c.gpu, budget_mb=c.budget_mb, ram_budget_mb=c.ram_mb, max_level=c.level)

    best_estimate = float("inf")
    best_total = float("inf")
    per_case = [float("inf")] * len(cases)  # each case's fastest of the runs (the tail without the noise)
    fits = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for c in cases:
            estimator.estimate(c.params, c.gpu)
        best_estimate = min(best_estimate, (time.perf_counter() - t0) / len(cases))

        fits = 0
        t_all = time.perf_counter()
        for i, c in enumerate(cases):
            t0 = time.perf_counter()
            plan = optimizer.optimize(
                c.request, gpu=c.gpu, budget_mb=c.budget_mb, ram_budget_mb=c.ram_mb, max_level=c.level
            )
            per_case[i] = min(per_case[i], time.perf_counter() - t0)
            fits += plan.fits
        best_total = min(best_total, time.perf_counter() - t_all)

    counting = Counting(Estimator())
    counted = Optimizer(counting)
    calls = []
    for c in cases:
        before = counting.calls
        counted.optimize(c.request, gpu=c.gpu, budget_mb=c.budget_mb, ram_budget_mb=c.ram_mb, max_level=c.level)
        calls.append(counting.calls - before)

    ms = sorted(t * 1000 for t in per_case)
    mean_ms = best_total / len(cases) * 1000
    print(f"cases: {len(cases)} (seed {args.seed}), {fits} fit; best of {args.repeat} runs")
    print(f"baseline  estimate(): {best_estimate * 1e6:8.1f} us/call   {1 / best_estimate:10.0f} calls/s")
    print(f"optimize():           {mean_ms:8.3f} ms/plan   {len(cases) / best_total:10.0f} plans/s")
    print(
        f"  per plan: p50 {statistics.median(ms):.3f} ms, p99 {ms[int(0.99 * (len(ms) - 1))]:.3f} ms, "
        f"max {ms[-1]:.3f} ms; estimates per plan: mean {statistics.mean(calls):.1f}, max {max(calls)}"
    )
    print(f"  one plan costs {mean_ms / 1000 / best_estimate:.1f} bare estimate() calls")


if __name__ == "__main__":
    main()
