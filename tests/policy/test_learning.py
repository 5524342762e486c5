"""Learned corrections: a robust high quantile of observed/predicted, OOMs raise it at once, and it persists."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramgate.errors import ConfigError, DecodeError
from vramgate.messages import ObservedPeak, Plan, RunFinished, RunOptions
from vramgate.policy.estimate import Estimator
from vramgate.policy.learning import LearnedCorrections, load_corrections, quantile, save_corrections


def test_nothing_learned_means_no_correction() -> None:
    learned = LearnedCorrections()
    assert learned.factor("t2v-A14B", "H100-80GB") == 1.0
    assert learned.confidence("t2v-A14B", "H100-80GB", 0.7) == 0.7


def test_the_correction_is_a_high_quantile_not_a_mean() -> None:
    learned = LearnedCorrections(quantile=0.9)
    ratios = [1.0] * 18 + [1.3, 1.3]
    for r in ratios:
        learned.observe("m", "g", predicted_mb=1000, observed_mb=1000 * r, outcome="ok")
    mean = sum(ratios) / len(ratios)
    assert learned.factor("m", "g") > mean
    assert learned.factor("m", "g") == pytest.approx(quantile(ratios, 0.9))


def test_few_runs_only_raise_many_runs_may_lower() -> None:
    learned = LearnedCorrections(min_runs_to_lower=5)
    for _ in range(4):
        learned.observe("m", "g", predicted_mb=1000, observed_mb=800, outcome="ok")
    assert learned.factor("m", "g") == 1.0
    learned.observe("m", "g", predicted_mb=1000, observed_mb=800, outcome="ok")
    assert learned.factor("m", "g") == pytest.approx(0.8)
    assert learned.confidence("m", "g", 0.6) > 0.6  # consistent runs raise confidence


def test_an_oom_at_a_predicted_fit_raises_the_correction_at_once() -> None:
    learned = LearnedCorrections(oom_step=1.1)
    for _ in range(10):
        learned.observe("m", "g", predicted_mb=1000, observed_mb=900, outcome="ok")
    assert learned.factor("m", "g") < 1.0
    factor = learned.observe("m", "g", predicted_mb=1000, observed_mb=None, outcome="oom", budget_mb=1200)
    assert factor >= 1.2 * 1.1
    # later good runs do not pull it back under what the OOM proved
    for _ in range(20):
        learned.observe("m", "g", predicted_mb=1000, observed_mb=900, outcome="ok")
    assert learned.factor("m", "g") >= 1.2 * 1.1


def test_runs_without_a_peak_teach_nothing_and_windows_are_bounded() -> None:
    learned = LearnedCorrections(window=8)
    assert learned.observe("m", "g", predicted_mb=1000, observed_mb=None, outcome="error") == 1.0
    assert learned.runs("m", "g") == 0
    for i in range(30):
        learned.observe("m", "g", predicted_mb=1000, observed_mb=1000 + i, outcome="ok")
    assert len(learned.history("m", "g").ratios) == 8
    assert learned.runs("m", "g") == 30


def test_state_persists_and_reloads(tmp_path: Path) -> None:
    learned = LearnedCorrections()
    for r in (1.1, 1.2, 1.05):
        learned.observe("t2v-A14B", "H100-80GB", predicted_mb=1000, observed_mb=1000 * r, outcome="ok")
    learned.observe("ti2v-5B", "RTX4090-24GB", predicted_mb=1000, observed_mb=None, outcome="oom")
    path = tmp_path / "learned.json"
    save_corrections(learned, path)
    again = load_corrections(path)
    assert again.state() == learned.state()
    assert again.factor("t2v-A14B", "H100-80GB") == learned.factor("t2v-A14B", "H100-80GB")
    assert again.factor("ti2v-5B", "RTX4090-24GB") > 1.0
    with pytest.raises(ConfigError):
        load_corrections(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"entries": {"m@g": {"ratios": "x"}}}')
    with pytest.raises(DecodeError) as info:
        load_corrections(tmp_path / "bad.json")
    assert info.value.path == "$.entries[...].ratios"


def test_the_estimator_applies_what_it_learned() -> None:
    estimator = Estimator()
    from vramgate.messages import GenerationRequest

    params = estimator.resolve(
        GenerationRequest(model="ti2v-5B", width=1280, height=704, options=RunOptions(offload_model=True, t5_cpu=True))
    )
    before = estimator.estimate(params, "RTX4090-24GB")
    plan = Plan(params=params, requirement=before, gpu="RTX4090-24GB", budget_mb=24_000)
    observed = int(before.vram_mb * 1.15)
    estimator.observe(
        RunFinished(request_id="r", lease_id="l", outcome="ok", observed=ObservedPeak(torch_peak_reserved_mb=observed)),
        plan,
    )
    after = estimator.estimate(params, "RTX4090-24GB")
    assert after.correction == pytest.approx(1.15, rel=0.01)
    assert after.vram_mb == pytest.approx(observed, rel=0.01)
    assert any(c.name == "learned_correction" for c in after.components)
    assert sum(c.vram_mb for c in after.components) == after.vram_mb
    assert after.confidence >= before.confidence
    # other GPUs are not affected
    assert estimator.estimate(params, "RTX3090-24GB").correction == 1.0
