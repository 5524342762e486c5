"""The NVML probe, through nvidia-ml-py (``import pynvml``).

Per device: name, UUID, total/free/used memory (``nvmlDeviceGetMemoryInfo`` v2, which reports the driver's
reserved memory separately, where the driver has it; v1 otherwise), utilization, temperature, power draw and limit,
and the memory used by each compute process. A field the device does not support is ``None``. Errors never escape
``sample``: a failing field is ``None`` with a warning, a device that fell off the bus (``NVMLError_GpuIsLost``) is
reported ``lost``, and a failing library is re-initialized on the next sample.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import psutil

from vramgate.errors import ProbeError
from vramgate.hardware.probe import ProbeReading, to_mb
from vramgate.messages.resources import DeviceSample, ProcessMemory


class NvmlUnavailable(ProbeError):
    """NVML cannot be used here (no nvidia-ml-py, no driver, or initialization failed)."""


class _Missing(Exception):
    """Stands in for an NVML error class that this version of pynvml does not define."""


class _Lost(Exception):
    """Internal: the device fell off the bus while being sampled."""


def load_nvml() -> Any:
    """Import pynvml, or raise :class:`NvmlUnavailable`."""
    try:
        import pynvml
    except ImportError as error:
        raise NvmlUnavailable(f"nvml: nvidia-ml-py (pynvml) is not installed: {error}") from error
    return pynvml


class NvmlProbe:
    """Samples every GPU NVML sees. ``lib`` is the pynvml module (a stand-in in tests); it is initialized here.

    Raises :class:`NvmlUnavailable` when NVML cannot be initialized.
    """

    name = "nvml"
    blocking = True

    def __init__(self, lib: Any | None = None, *, processes: bool = True) -> None:
        self._lib = lib if lib is not None else load_nvml()
        lib = self._lib
        self._error: type[Exception] = lib.NVMLError
        self._not_supported: tuple[type[Exception], ...] = tuple(
            getattr(lib, name, _Missing) for name in ("NVMLError_NotSupported", "NVMLError_NoData")
        )
        self._lost_error: type[Exception] = getattr(lib, "NVMLError_GpuIsLost", _Missing)
        self._v2_missing: tuple[type[Exception], ...] = tuple(
            getattr(lib, name, _Missing)
            for name in ("NVMLError_FunctionNotFound", "NVMLError_ArgumentVersionMismatch", "NVMLError_NotSupported")
        )
        self._processes = processes
        self._use_v2 = hasattr(lib, "nvmlMemory_v2")
        self._static: dict[int, tuple[str, str]] = {}
        self._last_total: dict[int, int] = {}
        self._pid_names: dict[int, str] = {}
        self._initialized = False
        self.driver_version = ""
        self._init()

    # ------------------------------------------------------------------ lifecycle

    def _init(self) -> None:
        try:
            self._lib.nvmlInit()
        except self._error as error:
            raise NvmlUnavailable(f"nvml: cannot initialize NVML: {error}") from error
        self._initialized = True
        try:
            self.driver_version = str(self._lib.nvmlSystemGetDriverVersion())
        except self._error:
            self.driver_version = ""

    def close(self) -> None:
        if self._initialized:
            self._initialized = False
            with contextlib.suppress(self._error):
                self._lib.nvmlShutdown()

    @property
    def uses_memory_v2(self) -> bool:
        """Whether memory is read with the v2 call (reserved memory reported separately)."""
        return self._use_v2

    # ------------------------------------------------------------------ sampling

    def sample(self) -> ProbeReading:
        warnings: list[str] = []
        if not self._initialized:
            try:
                self._init()
            except NvmlUnavailable as error:
                return ProbeReading(probe=self.name, warnings=(str(error),))
            warnings.append("nvml: re-initialized NVML after an error")
        try:
            count = int(self._lib.nvmlDeviceGetCount())
        except self._error as error:
            self.close()
            warnings.append(f"nvml: cannot count devices: {error}; will re-initialize")
            return ProbeReading(probe=self.name, warnings=tuple(warnings))
        devices: list[DeviceSample] = []
        for index in range(count):
            device = self._device(index, warnings)
            if device is not None:
                devices.append(device)
        mapping = "nvml: memory v2 (reserved separate)" if self._use_v2 else "nvml: memory v1"
        return ProbeReading(probe=self.name, devices=tuple(devices), warnings=tuple(warnings), mapping=mapping)

    def _lost_sample(self, index: int, warnings: list[str]) -> DeviceSample:
        name, uuid = self._static.get(index, (f"GPU {index}", ""))
        total = self._last_total.get(index, 0)
        warnings.append(f"nvml: GPU {index} ({name}) is lost (fell off the bus); its memory counts as unavailable")
        return DeviceSample(
            index=index, name=name, uuid=uuid, backend="nvml", total_mb=total, free_mb=0, used_mb=total, lost=True
        )

    def _call(self, what: str, index: int, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``; ``None`` when unsupported; :class:`_Lost` when the GPU is lost; other errors propagate."""
        try:
            return fn(*args)
        except self._lost_error as error:
            raise _Lost from error
        except self._not_supported:
            return None

    def _optional(self, what: str, index: int, warnings: list[str], fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return self._call(what, index, fn, *args)
        except _Lost:
            raise
        except self._error as error:
            warnings.append(f"nvml: GPU {index}: cannot read {what}: {error}")
            return None

    def _memory(self, handle: Any) -> tuple[int, int, int, int | None]:
        lib = self._lib
        if self._use_v2:
            try:
                info = lib.nvmlDeviceGetMemoryInfo(handle, version=lib.nvmlMemory_v2)
            except self._lost_error as error:
                raise _Lost from error
            except self._v2_missing:
                self._use_v2 = False
            else:
                return int(info.total), int(info.free), int(info.used), int(info.reserved)
        try:
            info = lib.nvmlDeviceGetMemoryInfo(handle)
        except self._lost_error as error:
            raise _Lost from error
        return int(info.total), int(info.free), int(info.used), None

    def _device(self, index: int, warnings: list[str]) -> DeviceSample | None:
        lib = self._lib
        try:
            handle = self._call("handle", index, lib.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                warnings.append(f"nvml: GPU {index}: no handle")
                return None
            static = self._static.get(index)
            if static is None:
                name = self._optional("name", index, warnings, lib.nvmlDeviceGetName, handle)
                uuid = self._optional("uuid", index, warnings, lib.nvmlDeviceGetUUID, handle)
                static = (_text(name) or f"GPU {index}", _text(uuid) or "")
                if name is not None and uuid is not None:
                    self._static[index] = static
            try:
                total, free, used, reserved = self._memory(handle)
            except self._not_supported:
                warnings.append(f"nvml: GPU {index} ({static[0]}): memory info is not supported; device left out")
                return None
            except self._error as error:
                warnings.append(f"nvml: GPU {index} ({static[0]}): cannot read memory: {error}; device left out")
                return None
            self._last_total[index] = to_mb(total)
            util = self._optional("utilization", index, warnings, lib.nvmlDeviceGetUtilizationRates, handle)
            temperature = None
            if hasattr(lib, "nvmlDeviceGetTemperature"):
                temperature = self._optional(
                    "temperature", index, warnings, lib.nvmlDeviceGetTemperature, handle, lib.NVML_TEMPERATURE_GPU
                )
            power = self._optional("power draw", index, warnings, lib.nvmlDeviceGetPowerUsage, handle)
            limit = self._optional("power limit", index, warnings, lib.nvmlDeviceGetEnforcedPowerLimit, handle)
            processes: tuple[ProcessMemory, ...] = ()
            if self._processes:
                running = self._optional("processes", index, warnings, lib.nvmlDeviceGetComputeRunningProcesses, handle)
                processes = tuple(self._process(proc) for proc in running or ())
        except _Lost:
            return self._lost_sample(index, warnings)
        return DeviceSample(
            index=index,
            name=static[0],
            uuid=static[1],
            backend="nvml",
            total_mb=to_mb(total),
            free_mb=to_mb(free),
            used_mb=to_mb(used),
            reserved_mb=to_mb(reserved) if reserved is not None else None,
            utilization_pct=float(util.gpu) if util is not None else None,
            memory_utilization_pct=float(util.memory) if util is not None else None,
            temperature_c=float(temperature) if temperature is not None else None,
            power_w=power / 1000.0 if power is not None else None,
            power_limit_w=limit / 1000.0 if limit is not None else None,
            processes=processes,
        )

    def _process(self, proc: Any) -> ProcessMemory:
        pid = int(proc.pid)
        used = getattr(proc, "usedGpuMemory", None)
        name = self._pid_names.get(pid)
        if name is None:
            try:
                name = psutil.Process(pid).name()
            except (psutil.Error, OSError):
                name = ""
            if len(self._pid_names) > 4096:
                self._pid_names.clear()
            self._pid_names[pid] = name
        return ProcessMemory(pid=pid, used_mb=to_mb(used) if isinstance(used, int) else None, name=name)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
