"""Hardware probes: NVML, ``torch.cuda``, the host (psutil) and simulated GPUs, behind one interface."""

from vramgate.hardware.cuda import TorchProbe, TorchUnavailable, map_ordinal, visible_devices
from vramgate.hardware.detect import DeviceSet, detect, detected, read_probe
from vramgate.hardware.history import DeviceHistory, SampleHistory
from vramgate.hardware.host import HostProbe, cgroup_memory
from vramgate.hardware.nvml import NvmlProbe, NvmlUnavailable
from vramgate.hardware.probe import MIB, CudaMemory, Probe, ProbeReading, combine, to_mb
from vramgate.hardware.simulated import (
    DEFAULT_CONTEXT_OVERHEAD_MB,
    SimulatedDeviceLost,
    SimulatedGpu,
    SimulatedOutOfMemory,
    SimulatedProbe,
)

__all__ = [
    "DEFAULT_CONTEXT_OVERHEAD_MB",
    "MIB",
    "CudaMemory",
    "DeviceHistory",
    "DeviceSet",
    "HostProbe",
    "NvmlProbe",
    "NvmlUnavailable",
    "Probe",
    "ProbeReading",
    "SampleHistory",
    "SimulatedDeviceLost",
    "SimulatedGpu",
    "SimulatedOutOfMemory",
    "SimulatedProbe",
    "TorchProbe",
    "TorchUnavailable",
    "cgroup_memory",
    "combine",
    "detect",
    "detected",
    "read_probe",
    "map_ordinal",
    "to_mb",
    "visible_devices",
]
