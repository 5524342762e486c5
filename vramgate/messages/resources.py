"""Resource samples: what the monitor measured, device by device, and on the host."""

from __future__ import annotations

from typing import Literal

from vramgate.messages._base import MB, Message, Seconds

Backend = Literal["nvml", "torch", "simulated", "none"]


class ProcessMemory(Message, frozen=True):
    """GPU memory used by one process, as NVML reports it (``used_mb`` is ``None`` where the driver hides it)."""

    pid: int
    used_mb: MB | None = None
    name: str = ""


class TorchMemory(Message, frozen=True):
    """This process's CUDA caching-allocator figures from ``torch.cuda``."""

    allocated_mb: MB
    reserved_mb: MB
    active_mb: MB
    peak_allocated_mb: MB
    peak_reserved_mb: MB


class DeviceSample(Message, frozen=True):
    """One GPU at one instant. A field the device or backend cannot report is ``None``, never a guess."""

    index: int
    name: str
    uuid: str
    backend: Backend
    total_mb: MB
    free_mb: MB
    used_mb: MB
    reserved_mb: MB | None = None
    utilization_pct: float | None = None
    memory_utilization_pct: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    processes: tuple[ProcessMemory, ...] = ()
    torch: TorchMemory | None = None
    cuda_index: int | None = None
    simulated: bool = False
    lost: bool = False


class HostSample(Message, frozen=True):
    """The host: RAM (bounded by the container's cgroup limit when it is lower), swap, CPU and disk.

    ``process_rss_mb`` is the resident set of the process that took the sample (the one that runs the leases):
    the host RAM ledger tells its own runs' memory from others' with it, as a device's does with ``torch``.
    """

    ram_total_mb: MB
    ram_available_mb: MB
    ram_used_mb: MB
    swap_total_mb: MB
    swap_used_mb: MB
    cpu_count: int
    cpu_percent: float | None = None
    cgroup_limit_mb: MB | None = None
    disk_path: str = ""
    disk_free_mb: MB | None = None
    disk_total_mb: MB | None = None
    process_rss_mb: MB | None = None


class ResourceSample(Message, frozen=True):
    """One tick of the monitor: every device it can see, the host, and what it could not measure."""

    at: Seconds
    devices: tuple[DeviceSample, ...] = ()
    host: HostSample | None = None
    warnings: tuple[str, ...] = ()
    mapping: str = ""


class VRAMInfo(Message, frozen=True):
    """Per-device VRAM in the shape users of the replaced resource manager know."""

    device: int
    total_mb: MB
    allocated_mb: MB
    cached_mb: MB
    free_mb: MB


class SystemResourceInfo(Message, frozen=True):
    """VRAM, RAM, CPU and disk in the shape users of the replaced resource manager know."""

    vram: tuple[VRAMInfo, ...]
    ram_total_mb: MB
    ram_available_mb: MB
    cpu_percent: float | None
    disk_free_mb: MB | None
