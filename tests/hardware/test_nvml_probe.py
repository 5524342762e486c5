from __future__ import annotations

import os
import sys

import pynvml
import pytest
from fake_pynvml import MIB, FakeDevice, FakeNvml

from vramgate.hardware import NvmlProbe, NvmlUnavailable, detect


def _two_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeDevice(processes=[(os.getpid(), 900 * MIB), (999_999_999, None)]),
            FakeDevice(name="NVIDIA L40S", uuid="GPU-aaaaaaaa-0000-0000-0000-000000000001", total=46068 * MIB),
        ]
    )


def test_reads_every_field() -> None:
    lib = _two_gpus()
    probe = NvmlProbe(lib)
    reading = probe.sample()
    assert reading.warnings == ()
    first, second = reading.devices
    assert (first.index, first.name, first.uuid, first.backend) == (
        0,
        "NVIDIA H100 80GB HBM3",
        "GPU-11111111-2222-3333-4444-555555555555",
        "nvml",
    )
    assert (first.total_mb, first.used_mb, first.reserved_mb) == (81559, 1000, 530)
    assert first.free_mb == 81559 - 530 - 1000
    assert (first.utilization_pct, first.memory_utilization_pct, first.temperature_c) == (37.0, 12.0, 41.0)
    assert first.power_w == pytest.approx(123.456)
    assert first.power_limit_w == pytest.approx(700.0)
    assert [(proc.pid, proc.used_mb) for proc in first.processes] == [(os.getpid(), 900), (999_999_999, None)]
    assert first.processes[0].name  # this test process has a name
    assert second.name == "NVIDIA L40S"
    assert second.total_mb == 46068
    assert probe.uses_memory_v2
    assert "v2" in reading.mapping


def test_not_supported_fields_are_unknown() -> None:
    lib = _two_gpus()
    device = lib.devices[0]
    for call in ("utilization", "temperature", "power", "power_limit", "processes"):
        device.errors[call] = pynvml.NVMLError_NotSupported()
    reading = NvmlProbe(lib).sample()
    first = reading.devices[0]
    assert first.utilization_pct is None
    assert first.memory_utilization_pct is None
    assert first.temperature_c is None
    assert first.power_w is None
    assert first.power_limit_w is None
    assert first.processes == ()
    assert first.total_mb == 81559
    assert reading.warnings == ()  # unsupported is not a fault


def test_other_field_errors_are_unknown_with_a_warning() -> None:
    lib = _two_gpus()
    lib.devices[1].errors["temperature"] = pynvml.NVMLError_Unknown()
    reading = NvmlProbe(lib).sample()
    assert reading.devices[1].temperature_c is None
    assert reading.devices[1].power_w is not None
    assert len(reading.warnings) == 1
    assert "GPU 1" in reading.warnings[0]
    assert "temperature" in reading.warnings[0]


def test_falls_back_to_memory_v1_without_v2() -> None:
    lib = _two_gpus()
    lib.v2 = False
    probe = NvmlProbe(lib)
    first = probe.sample().devices[0]
    assert not probe.uses_memory_v2
    assert first.reserved_mb is None
    assert first.used_mb == 1000 + 530  # v1 counts reserved memory as used
    assert first.free_mb == 81559 - 1530
    lib.calls.clear()
    probe.sample()
    assert "memory_v2" not in lib.calls  # v2 is not tried again


def test_pynvml_without_the_v2_call() -> None:
    probe = NvmlProbe(FakeNvml(_two_gpus().devices, old_pynvml=True))
    assert not probe.uses_memory_v2
    assert probe.sample().devices[0].used_mb == 1530


def test_errors_mid_run_degrade_and_recover() -> None:
    lib = _two_gpus()
    probe = NvmlProbe(lib)
    assert len(probe.sample().devices) == 2
    lib.devices[0].errors["memory_v2"] = pynvml.NVMLError_Unknown()
    reading = probe.sample()
    assert [device.index for device in reading.devices] == [1]
    assert any("GPU 0" in warning and "memory" in warning for warning in reading.warnings)
    del lib.devices[0].errors["memory_v2"]
    lib.count_error = pynvml.NVMLError_Unknown()
    reading = probe.sample()
    assert reading.devices == ()
    assert any("cannot count devices" in warning for warning in reading.warnings)
    assert lib.shutdown_calls == 1
    lib.count_error = None
    reading = probe.sample()  # re-initializes
    assert lib.init_calls == 2
    assert len(reading.devices) == 2
    assert any("re-initialized" in warning for warning in reading.warnings)


def test_library_gone_mid_run() -> None:
    lib = _two_gpus()
    probe = NvmlProbe(lib)
    lib.count_error = pynvml.NVMLError_Unknown()
    probe.sample()
    lib.init_error = pynvml.NVMLError_DriverNotLoaded()
    reading = probe.sample()
    assert reading.devices == ()
    assert any("cannot initialize" in warning for warning in reading.warnings)


def test_a_lost_gpu_is_reported_not_raised() -> None:
    lib = _two_gpus()
    probe = NvmlProbe(lib)
    probe.sample()
    lib.devices[0].errors["memory_v2"] = pynvml.NVMLError_GpuIsLost()
    reading = probe.sample()
    lost, healthy = reading.devices
    assert lost.lost
    assert (lost.name, lost.uuid, lost.total_mb) == ("NVIDIA H100 80GB HBM3", lib.devices[0].uuid, 81559)
    assert lost.free_mb == 0
    assert not healthy.lost
    assert any("lost" in warning and "GPU 0" in warning for warning in reading.warnings)
    lib.devices[0].errors = {"handle": pynvml.NVMLError_GpuIsLost()}
    assert probe.sample().devices[0].lost


def test_init_failure_raises_unavailable_and_detect_degrades() -> None:
    lib = FakeNvml([FakeDevice()], init_error=pynvml.NVMLError_LibraryNotFound())
    with pytest.raises(NvmlUnavailable):
        NvmlProbe(lib)
    devices = detect(nvml=lib, torch=False, host=False)
    assert devices.gpu_backend == "none"
    sample = devices.sample()
    assert sample.devices == ()
    assert any("cannot initialize NVML" in warning for warning in sample.warnings)


def test_detect_uses_nvml_and_numbers_simulated_devices_after_it() -> None:
    lib = _two_gpus()
    with detect(["H100-80GB"], nvml=lib, torch=False, host=False) as devices:
        assert devices.gpu_backend == "nvml"
        sample = devices.sample(at=2.0)
        assert [(device.index, device.backend) for device in sample.devices] == [
            (0, "nvml"),
            (1, "nvml"),
            (2, "simulated"),
        ]
        assert sample.at == 2.0
    assert lib.shutdown_calls == 1


def test_torch_warning_only_when_torch_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # torch not installed
    with detect(nvml=_two_gpus(), torch=True, host=False) as asked:
        assert asked.gpu_backend == "nvml"
        assert any(warning.startswith("torch: not installed") for warning in asked.warnings)
    with detect(nvml=_two_gpus(), host=False) as auto:  # NVML measures the GPUs; torch is optional
        assert auto.gpu_backend == "nvml"
        assert not any(warning.startswith("torch") for warning in auto.warnings)
