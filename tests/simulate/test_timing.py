"""The simulator's vramgate policy learns each GPU's times from the runs that end, as a gate does: against a truth
1.5x slower than the catalog, three runs bring its estimate within 10 %, and the truth's own figures stay put."""

from __future__ import annotations

import pytest

from vramgate.messages.trace import Arrival
from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG
from vramgate.simulate.gate import VramgatePolicy
from vramgate.simulate.run import simulate

from ._helpers import small, trace

GPU = "H200-141GB"
TRUE_FACTOR = 1.5


def test_the_vramgate_policy_learns_a_gpu_time_from_three_runs() -> None:
    estimator = Estimator()
    spec = DEFAULT_GPU_CATALOG.get(GPU)
    requests = [small(i) for i in range(3)]
    raw = estimator.estimate(estimator.resolve(requests[0]), spec).estimated_time_seconds
    lines = [Arrival(at=i * 10_000.0, request=r, true_seconds=raw * TRUE_FACTOR) for i, r in enumerate(requests)]
    result, sim = simulate(trace(*lines), [spec], "vramgate", time_spread=0.0)
    assert result.completed == 3
    policy = sim.policy
    assert isinstance(policy, VramgatePolicy)
    learned = policy.optimizer.estimator
    assert isinstance(learned, Estimator)
    params = estimator.resolve(requests[0])
    after = learned.estimate(params, spec)
    assert after.estimated_time_seconds == pytest.approx(raw * TRUE_FACTOR, rel=0.10)
    before = estimator.estimate(params, spec)  # the simulation's estimator (the truth's) learned nothing
    assert before.estimated_time_seconds == raw
    assert before.time_low_s is not None
    assert before.time_high_s is not None
    assert after.time_low_s is not None
    assert after.time_high_s is not None
    width_before = (before.time_high_s - before.time_low_s) / before.estimated_time_seconds
    width_after = (after.time_high_s - after.time_low_s) / after.estimated_time_seconds
    assert width_after < width_before / 2
    assert after.vram_mb == before.vram_mb
