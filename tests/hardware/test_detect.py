from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vramgate.clock import ManualClock
from vramgate.hardware import ProbeReading, SimulatedGpu, detect, read_probe
from vramgate.messages import ResourceSample, decode_json, encode_json


def test_detect_here_degrades_to_host_and_simulated(tmp_path: Path) -> None:
    clock = ManualClock()
    with detect(["H100-80GB", "24GB"], disk_path=tmp_path, clock=clock) as devices:
        sample = devices.sample(at=clock.now())
        names = [(device.index, device.name, device.simulated) for device in sample.devices]
        if devices.gpu_backend == "none":
            assert names == [(0, "H100-80GB", True), (1, "24GB", True)]
            assert any("no GPU backend" in warning for warning in sample.warnings)
        assert sample.host is not None
        assert sample.host.disk_path == str(tmp_path)
        assert [gpu.name for gpu in devices.simulated] == ["H100-80GB", "24GB"]
        devices.simulated[0].allocate("run", 1000)
        after = {device.name: device for device in devices.sample().devices if device.simulated}
        assert after["H100-80GB"].used_mb == devices.simulated[0].context_overhead_mb + 1000
        assert decode_json(encode_json(sample), ResourceSample) == sample


@pytest.mark.parametrize("missing", [("pynvml",), ("torch",), ("pynvml", "torch")])
def test_missing_libraries_are_warnings(monkeypatch: pytest.MonkeyPatch, missing: tuple[str, ...]) -> None:
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)
    with detect(["L4"], torch=True) as devices:
        sample = devices.sample()
    if "pynvml" in missing:
        assert any("nvidia-ml-py" in warning for warning in sample.warnings)
    if "torch" in missing:
        assert any(warning.startswith("torch: not installed") for warning in sample.warnings)
    assert sample.host is not None
    assert [device.name for device in sample.devices if device.simulated] == ["L4-24GB"]


def test_disabled_backends_are_said_so() -> None:
    devices = detect(nvml=False, torch=False, host=False)
    assert devices.gpu_backend == "none"
    assert devices.probes == ()
    assert "nvml: disabled" in devices.warnings
    assert "torch: disabled" in devices.warnings
    assert devices.sample().devices == ()


class _Broken:
    name = "broken"
    blocking = False

    def sample(self) -> ProbeReading:
        raise RuntimeError("driver went away")

    def close(self) -> None:
        return None


def test_a_probe_that_raises_becomes_a_warning() -> None:
    reading = read_probe(_Broken())
    assert reading.devices == ()
    assert reading.warnings == ("broken: probe failed: RuntimeError: driver went away",)


def test_given_simulated_gpus_are_used_as_they_are() -> None:
    gpu = SimulatedGpu("A10G", index=7, context_overhead_mb=0)
    with detect([gpu], nvml=False, torch=False, host=False) as devices:
        assert devices.simulated == (gpu,)
        assert devices.sample().devices[0].index == 7
