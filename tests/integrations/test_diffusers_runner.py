"""The diffusers adapter says it is the ``diffusers`` runner, so the gate prices what its pipeline holds."""

from __future__ import annotations

import pytest

from vramgate.messages import GenerationRequest, RunOptions
from vramgate.policy.estimate import Estimator

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from vramgate.integrations.diffusers import RUNNER, request_options


def test_request_options_name_the_adapter_and_keep_what_is_pinned() -> None:
    assert RUNNER == "diffusers"
    assert request_options().runner == "diffusers"
    pinned = request_options(RunOptions(offload_model=True, vae_tiling=False))
    assert (pinned.runner, pinned.offload_model, pinned.vae_tiling) == ("diffusers", True, False)


def test_requests_for_the_adapter_are_priced_for_diffusers() -> None:
    estimator = Estimator()
    ours = GenerationRequest(model="t2v-A14B", width=1280, height=720, options=request_options())
    wan = GenerationRequest(model="t2v-A14B", width=1280, height=720)
    cost = {name: estimator.estimate(estimator.resolve(r), "H100") for name, r in (("ours", ours), ("wan", wan))}
    assert estimator.resolve(ours).options.runner == "diffusers"
    assert cost["ours"].vram_mb < cost["wan"].vram_mb - 10 * 1024
