"""The estimate's load time: reading the weights a cold start lacks, its own term beside the time."""

from __future__ import annotations

import pytest

from vramgate.messages import GenerationRequest
from vramgate.policy._derived import derive
from vramgate.policy._host_ram import DISK_READ_BYTES_PER_S
from vramgate.policy.estimate import Estimator
from vramgate.policy.models import DEFAULT_MODEL_CATALOG


@pytest.mark.parametrize("model", ["t2v-A14B", "ti2v-5B"])
def test_the_load_time_is_the_checkpoint_read_from_disk(model: str) -> None:
    estimator = Estimator()
    request = GenerationRequest(model=model, width=832, height=480, frames=81, steps=40)
    requirement = estimator.estimate(estimator.resolve(request), "H100-80GB")
    d = derive(DEFAULT_MODEL_CATALOG.get(model))
    stored = d.experts * d.expert_params * d.checkpoint_bytes + d.text_encoder_bytes + d.image_encoder_bytes
    assert requirement.load_time_s == pytest.approx((stored + d.vae_bytes) / DISK_READ_BYTES_PER_S)
    # its own term: the components still add up to the time, which assumes the weights loaded
    assert sum(c.seconds for c in requirement.components) == pytest.approx(requirement.estimated_time_seconds)


def test_a_bigger_checkpoint_takes_longer_to_load() -> None:
    estimator = Estimator()
    times = {}
    for model in ("t2v-A14B", "ti2v-5B"):
        request = GenerationRequest(model=model, width=832, height=480, frames=81, steps=40)
        times[model] = estimator.estimate(estimator.resolve(request), "H100-80GB").load_time_s
    assert times["t2v-A14B"] > 2 * times["ti2v-5B"] > 0
