"""Detection: pick the probes that work here, and say what could not be seen.

GPUs are measured by NVML, else by ``torch.cuda``, else not at all; torch's per-process figures are added to
NVML's devices when torch is in use. The host is always measured. Simulated GPUs declared by name or passed in
are added after the real ones. Nothing here raises for missing hardware: each gap becomes a warning that every
sample carries.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from vramgate.hardware.cuda import TorchProbe, TorchUnavailable
from vramgate.hardware.host import HostProbe
from vramgate.hardware.nvml import NvmlProbe, NvmlUnavailable
from vramgate.hardware.probe import Probe, ProbeReading, combine
from vramgate.hardware.simulated import Now, SimulatedGpu, SimulatedProbe
from vramgate.messages.resources import ResourceSample
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG, GpuCatalog, GpuSpec


@dataclass
class DeviceSet:
    """The probes chosen by :func:`detect`, the simulated GPUs, and what detection could not see."""

    probes: tuple[Probe, ...]
    simulated: tuple[SimulatedGpu, ...] = ()
    warnings: tuple[str, ...] = ()
    #: the backend that measures real GPUs: ``"nvml"``, ``"torch"`` or ``"none"``
    gpu_backend: Literal["nvml", "torch", "none"] = "none"
    _closed: bool = field(default=False, repr=False)

    def sample(self, at: float = 0.0) -> ResourceSample:
        """Call every probe in turn (blocking) and combine their readings into one sample stamped ``at``."""
        return combine((read_probe(probe) for probe in self.probes), at=at, warnings=self.warnings)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for probe in self.probes:
                probe.close()

    def __enter__(self) -> DeviceSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_probe(probe: Probe) -> ProbeReading:
    """``probe.sample()``, with any exception it lets escape turned into a warning."""
    try:
        return probe.sample()
    except Exception as error:  # the boundary: a probe bug or driver fault must not stop the monitor
        return ProbeReading(
            probe=probe.name, warnings=(f"{probe.name}: probe failed: {type(error).__name__}: {error}",)
        )


#: Device nodes of GPUs that torch.cuda can open: NVIDIA, AMD ROCm, and WSL's GPU paravirtualization.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def gpu_device_node() -> bool:
    """Whether a GPU device node exists here: without one (and without NVML) importing torch finds no GPU."""
    return any(os.path.exists(path) for path in GPU_DEVICE_NODES)


def _count(probe: Probe) -> int:
    reading = read_probe(probe)
    return max((device.index + 1 for device in reading.devices), default=0)


def detect(
    simulated: Sequence[str | GpuSpec | SimulatedGpu] = (),
    *,
    disk_path: str | os.PathLike[str] = ".",
    nvml: bool | Any = True,
    torch: bool | Literal["auto"] | Any = "auto",
    host: bool = True,
    clock: Now | None = None,
    catalog: GpuCatalog = DEFAULT_GPU_CATALOG,
    context_overhead_mb: int | None = None,
) -> DeviceSet:
    """Choose probes for this machine.

    ``nvml``/``torch``: ``True`` to try the backend, ``False`` to skip it, or the pynvml/torch module to use.
    ``torch="auto"`` (the default) uses torch when it is already imported by this process (then its allocator
    figures are attached to NVML's devices; ``mem_get_info`` is only called without NVML, since it creates a CUDA
    context), or when NVML is not available but a GPU device node is (a ROCm machine, say). Otherwise torch is
    not imported: it takes seconds, and would find no GPU. Simulated GPUs given by name (or spec) are created with
    ``clock`` and numbered after the real GPUs; :class:`SimulatedGpu` objects are used as they are.
    """
    probes: list[Probe] = []
    warnings: list[str] = []
    backend: Literal["nvml", "torch", "none"] = "none"
    nvml_probe: NvmlProbe | None = None
    if nvml is False:
        warnings.append("nvml: disabled")
    else:
        try:
            nvml_probe = NvmlProbe(None if nvml is True else nvml)
        except NvmlUnavailable as error:
            warnings.append(str(error))
        else:
            probes.append(nvml_probe)
            backend = "nvml"
    use_torch = torch is not False and (
        torch != "auto" or "torch" in sys.modules or (nvml_probe is None and gpu_device_node())
    )
    if torch == "auto" and not use_torch and nvml_probe is None:
        warnings.append("torch: not loaded (no NVML and no GPU device here, so torch.cuda would find none)")
    torch_probe: TorchProbe | None = None
    if use_torch:
        try:
            module = None if torch in (True, "auto") else torch
            torch_probe = TorchProbe(module, mem_info=nvml_probe is None)
        except TorchUnavailable as error:
            if nvml_probe is None or torch != "auto":  # with NVML, torch is optional unless asked for
                warnings.append(str(error))
        else:
            probes.append(torch_probe)
            if backend == "none":
                backend = "torch"
    elif torch is False:
        warnings.append("torch: disabled")
    if backend == "none":
        warnings.append("no GPU backend: real GPUs (if any) are not measured")
    if host:
        probes.append(HostProbe(disk_path))
    if simulated:
        real = nvml_probe or torch_probe
        base = _count(real) if real is not None else 0
        devices: list[SimulatedGpu] = []
        for position, entry in enumerate(simulated):
            if isinstance(entry, SimulatedGpu):
                devices.append(entry)
                continue
            options: dict[str, Any] = {"clock": clock, "catalog": catalog}
            if context_overhead_mb is not None:
                options["context_overhead_mb"] = context_overhead_mb
            devices.append(SimulatedGpu(entry, index=base + position, **options))
        probes.append(SimulatedProbe(devices))
        sims = tuple(devices)
    else:
        sims = ()
    return DeviceSet(probes=tuple(probes), simulated=sims, warnings=tuple(warnings), gpu_backend=backend)


@contextmanager
def detected(*args: Any, **kwargs: Any) -> Iterator[DeviceSet]:
    """:func:`detect` as a context manager that closes the probes (NVML shutdown) on exit."""
    devices = detect(*args, **kwargs)
    try:
        yield devices
    finally:
        devices.close()
