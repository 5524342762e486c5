"""The probe interface, and how the readings of several probes become one :class:`ResourceSample`.

A probe measures one kind of hardware (NVML, ``torch.cuda``, the host, simulated GPUs). ``sample`` is a plain,
synchronous call that returns a :class:`ProbeReading`; what the probe cannot measure goes into the reading's
``warnings`` instead of raising. A probe whose call may block (NVML can, on a sick GPU) says so with
``blocking = True``, and the monitor then runs it in a worker thread with a timeout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import msgspec

from vramgate.messages.resources import DeviceSample, HostSample, ResourceSample, TorchMemory

#: Bytes in one MiB. vramgate reports memory in whole MiB, rounded down (as nvidia-smi does).
MIB = 1 << 20


def to_mb(nbytes: int | float) -> int:
    """Whole MiB in ``nbytes`` (rounded down, never negative)."""
    return max(0, int(nbytes) // MIB)


@dataclass(frozen=True, slots=True)
class CudaMemory:
    """This process's torch figures for one CUDA device, and which NVML device it is.

    ``uuid`` is the device's UUID (or a UUID prefix from ``CUDA_VISIBLE_DEVICES``); where no UUID is known it is
    ``""`` and ``nvml_index`` names the NVML device instead.
    """

    cuda_index: int
    uuid: str
    nvml_index: int | None
    torch: TorchMemory


@dataclass(frozen=True, slots=True)
class ProbeReading:
    """What one probe measured in one call.

    ``cuda`` carries torch figures to attach to the devices other probes list (see :func:`combine`).
    """

    probe: str
    devices: tuple[DeviceSample, ...] = ()
    host: HostSample | None = None
    warnings: tuple[str, ...] = ()
    mapping: str = ""
    cuda: tuple[CudaMemory, ...] = ()


@runtime_checkable
class Probe(Protocol):
    """One source of measurements. ``sample`` never raises for a hardware fault; it reports it as a warning."""

    #: a short name (``"nvml"``, ``"torch"``, ``"host"``, ``"simulated"``) used in warnings and statistics
    name: str
    #: ``True`` when ``sample`` may block for long (driver calls); such probes run in a worker thread
    blocking: bool

    def sample(self) -> ProbeReading: ...

    def close(self) -> None: ...


def _match(devices: list[DeviceSample], uuid: str, nvml_index: int | None) -> int | None:
    """The position of the real device with this UUID (or UUID prefix), else with this NVML index."""
    if uuid:
        for position, device in enumerate(devices):
            if not device.simulated and device.uuid and device.uuid.startswith(uuid):
                return position
        return None
    for position, device in enumerate(devices):
        if not device.simulated and device.index == nvml_index:
            return position
    return None


def combine(readings: Iterable[ProbeReading], *, at: float, warnings: Iterable[str] = ()) -> ResourceSample:
    """Merge the readings of several probes into one sample taken at ``at``.

    NVML and simulated devices are listed as they are. Torch figures (``ProbeReading.cuda``) are attached, with
    the CUDA ordinal, to the device with the same UUID. A ``torch`` device that matches no listed device (no NVML,
    or NVML failed) is listed on its own with backend ``"torch"``. The host comes from the first reading that has
    one. Devices are ordered real first, then simulated, each by index.
    """
    readings = list(readings)
    devices: list[DeviceSample] = []
    host: HostSample | None = None
    all_warnings: list[str] = list(warnings)
    mappings: list[str] = []
    for reading in readings:
        devices.extend(device for device in reading.devices if device.backend != "torch")
        if host is None and reading.host is not None:
            host = reading.host
        all_warnings.extend(reading.warnings)
        if reading.mapping:
            mappings.append(reading.mapping)
    for reading in readings:
        torch_devices = {device.cuda_index: device for device in reading.devices if device.backend == "torch"}
        for cuda in reading.cuda:
            position = _match(devices, cuda.uuid, cuda.nvml_index)
            if position is not None:
                devices[position] = msgspec.structs.replace(
                    devices[position], torch=cuda.torch, cuda_index=cuda.cuda_index
                )
            elif cuda.cuda_index in torch_devices:
                devices.append(torch_devices[cuda.cuda_index])
    devices.sort(key=lambda device: (device.simulated, device.index))
    return ResourceSample(
        at=max(0.0, at), devices=tuple(devices), host=host, warnings=tuple(all_warnings), mapping="; ".join(mappings)
    )
