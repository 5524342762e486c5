"""The calls users of the replaced resource manager know, on vramgate's cores and a simulated GPU."""

from __future__ import annotations

import pytest

from vramgate.compat import ResourceManager, get_resource_manager, request_from_legacy, resolution_size
from vramgate.errors import InvalidParameter
from vramgate.hardware import detect
from vramgate.policy.estimate import Estimator


@pytest.fixture
def manager() -> ResourceManager:
    return ResourceManager(devices=detect(("RTX4090-24GB",), nvml=False, torch=False))


def test_named_resolutions_map_to_each_models_sizes() -> None:
    estimator = Estimator()
    assert resolution_size(estimator.profile("t2v-A14B"), "720p") == (1280, 720)
    assert resolution_size(estimator.profile("t2v-A14B"), "480p") == (832, 480)
    assert resolution_size(estimator.profile("ti2v-5B"), "720p") == (1280, 704)
    assert resolution_size(estimator.profile("t2v-A14B"), "1080p") == (1920, 1088)
    assert resolution_size(estimator.profile("t2v-A14B"), "640x368") == (640, 368)
    with pytest.raises(InvalidParameter, match="resolution"):
        resolution_size(estimator.profile("t2v-A14B"), "4k")


def test_legacy_estimate_matches_the_estimator(manager: ResourceManager) -> None:
    requirement = manager.estimate_resource_requirements("t2v-A14B", "720p", steps=40, duration=5.0, lora_count=1)
    request = request_from_legacy(manager.estimator, "t2v-A14B", "720p", 40, 5.0, 1)
    assert request.lora[0].name == "lora-1"
    direct = manager.estimator.estimate(manager.estimator.resolve(request), "H100-80GB")
    assert requirement == direct
    # what the replaced system guessed for this run was 6.5 GB; the estimate is of the published order
    assert requirement.vram_mb > 40_000


def test_check_availability_and_vram_info(manager: ResourceManager) -> None:
    ok, why = manager.check_vram_availability(10_000)
    assert ok, why
    ok, why = manager.check_vram_availability(24_000)
    assert not ok
    assert "does not fit" in why
    (info,) = manager.get_vram_info()
    assert info.total_mb == 24_564
    assert info.allocated_mb == 0  # this process allocated nothing; the CUDA context is the rest
    assert info.free_mb == info.total_mb - manager.devices.simulated[0].context_overhead_mb
    system = manager.get_system_resources()
    assert system.ram_total_mb > 0


def test_optimize_for_the_visible_device(manager: ResourceManager) -> None:
    params, suggestions = manager.optimize_parameters_for_resources(
        {"model": "t2v-A14B", "width": 832, "height": 480, "frames": 81, "steps": 40}, ram_mb=262_144
    )
    assert (params.width, params.height, params.frames, params.steps) == (832, 480, 81, 40)
    assert suggestions
    assert any(s.parameter in ("offload_model", "resident_blocks", "sequential_offload") for s in suggestions)


def test_cleanup_reports(manager: ResourceManager) -> None:
    report = manager.cleanup_memory(aggressive=True)
    assert report.aggressive
    assert report.unavailable


def test_one_process_wide_manager() -> None:
    assert get_resource_manager() is get_resource_manager()
