"""A thin stand-in for the pynvml functions the NVML probe calls (there is no NVIDIA driver on CI machines).

Error classes are pynvml's own; only the driver calls are faked. Each fake device holds plain values, and tests
change them (or make a call fail) between samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

MIB = 1 << 20


@dataclass
class FakeDevice:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    total: int = 81559 * MIB
    reserved: int = 530 * MIB
    used: int = 1000 * MIB
    gpu_util: int = 37
    mem_util: int = 12
    temperature: int = 41
    power_mw: int = 123_456
    power_limit_mw: int = 700_000
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    #: call name -> exception instance raised by that call on this device
    errors: dict[str, Exception] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return self.total - self.reserved - self.used


class FakeNvml:
    """The subset of the pynvml module that :class:`vramgate.hardware.NvmlProbe` uses."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_NoData = pynvml.NVMLError_NoData
    NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
    NVMLError_FunctionNotFound = pynvml.NVMLError_FunctionNotFound
    NVMLError_ArgumentVersionMismatch = pynvml.NVMLError_ArgumentVersionMismatch
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(
        self,
        devices: list[FakeDevice],
        *,
        v2: bool = True,
        old_pynvml: bool = False,
        init_error: Exception | None = None,
    ):
        if not old_pynvml:  # pynvml before the v2 memory call has no such constant
            self.nvmlMemory_v2 = pynvml.nvmlMemory_v2
        self.devices = devices
        self.v2 = v2
        self.init_error = init_error
        self.count_error: Exception | None = None
        self.initialized = False
        self.init_calls = 0
        self.shutdown_calls = 0
        self.calls: list[str] = []

    def _device(self, call: str, handle: int) -> FakeDevice:
        self.calls.append(call)
        device = self.devices[handle]
        error = device.errors.get(call)
        if error is not None:
            raise error
        return device

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1
        self.initialized = False

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        if not self.initialized:
            raise pynvml.NVMLError_Uninitialized()
        if self.count_error is not None:
            raise self.count_error
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._device("handle", index)
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._device("name", handle).name

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._device("uuid", handle).uuid

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> Any:
        if version is not None:
            device = self._device("memory_v2", handle)
            if not self.v2:
                raise pynvml.NVMLError_FunctionNotFound()
            return SimpleNamespace(
                version=version, total=device.total, reserved=device.reserved, free=device.free, used=device.used
            )
        device = self._device("memory", handle)
        # v1 counts the reserved memory as used
        return SimpleNamespace(total=device.total, free=device.free, used=device.used + device.reserved)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        device = self._device("utilization", handle)
        return SimpleNamespace(gpu=device.gpu_util, memory=device.mem_util)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._device("temperature", handle).temperature

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._device("power", handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._device("power_limit", handle).power_limit_mw

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        device = self._device("processes", handle)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in device.processes]
