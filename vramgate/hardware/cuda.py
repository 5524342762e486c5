"""The ``torch.cuda`` probe: free/total memory per CUDA device, and this process's caching-allocator figures.

CUDA ordinals are not NVML indices: ``CUDA_VISIBLE_DEVICES`` renumbers and filters devices, and CUDA's default
order (fastest first) can differ from NVML's (PCI bus). Each CUDA device is therefore tied to its NVML device by
UUID (``torch.cuda.get_device_properties(i).uuid``); where torch cannot tell the UUID, ``CUDA_VISIBLE_DEVICES`` is
parsed, and failing that the ordinal is assumed to be the NVML index (with a warning unless
``CUDA_DEVICE_ORDER=PCI_BUS_ID``). The reading's ``mapping`` says which rule was used.

``torch.cuda.mem_get_info`` creates a CUDA context (hundreds of MiB) on a device that has none, so it is only
called when ``mem_info`` is set (the default when NVML is not available). Without it the probe only contributes
this process's allocator figures, which are attached to the NVML device of the same UUID. Note that the total
``mem_get_info`` reports leaves out the memory the driver reserves (480 MiB on an H100 with driver 580), so a
torch-measured device shows that much less total memory than NVML does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from vramgate.errors import ProbeError
from vramgate.hardware.probe import CudaMemory, ProbeReading, to_mb
from vramgate.messages.resources import DeviceSample, TorchMemory


class TorchUnavailable(ProbeError):
    """torch is not installed, or it has no CUDA device."""


def load_torch() -> Any:
    """Import torch and check that CUDA is available, or raise :class:`TorchUnavailable`."""
    if "torch" not in sys.modules and sys.stderr is not None and sys.stderr.isatty():
        sys.stderr.write("loading torch for CUDA figures...\n")  # it takes seconds; say why the wait
        sys.stderr.flush()
    try:
        import torch
    except ImportError as error:
        raise TorchUnavailable(f"torch: not installed ({error})") from error
    try:
        available = bool(torch.cuda.is_available())
    except Exception as error:  # a broken CUDA install raises all sorts of errors here
        raise TorchUnavailable(f"torch: CUDA check failed: {error}") from error
    if not available:
        raise TorchUnavailable(f"torch: CUDA is not available (torch {torch.__version__})")
    return torch


def visible_devices(env: Mapping[str, str]) -> list[str] | None:
    """The entries of ``CUDA_VISIBLE_DEVICES`` up to the first invalid one (as CUDA reads it); ``None`` if unset."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        entries.append(entry)
    return entries


def map_ordinal(ordinal: int, torch_uuid: str | None, env: Mapping[str, str]) -> tuple[str, int | None, str]:
    """Tie CUDA ordinal ``ordinal`` to an NVML device: ``(uuid or uuid prefix, nvml index, rule)``.

    ``rule`` is ``"uuid"``, ``"CUDA_VISIBLE_DEVICES"`` or ``"ordinal"``.
    """
    if torch_uuid:
        uuid = torch_uuid if torch_uuid.startswith(("GPU-", "MIG-")) else f"GPU-{torch_uuid}"
        return uuid, None, "uuid"
    visible = visible_devices(env)
    if visible is not None and ordinal < len(visible):
        entry = visible[ordinal]
        if entry.isdigit():
            return "", int(entry), "CUDA_VISIBLE_DEVICES"
        return entry, None, "CUDA_VISIBLE_DEVICES"
    return "", ordinal, "ordinal"


class TorchProbe:
    """Samples every CUDA device torch sees. ``torch`` is the torch module (imported and checked when ``None``).

    Raises :class:`TorchUnavailable` when torch or CUDA is missing.
    """

    name = "torch"
    blocking = True

    def __init__(self, torch: Any | None = None, *, mem_info: bool = True, env: Mapping[str, str] | None = None):
        self._torch = torch if torch is not None else load_torch()
        self.mem_info = mem_info
        self._env = env if env is not None else os.environ
        self._static: dict[int, tuple[str, str, int | None, str, int]] = {}

    def close(self) -> None:
        return None

    def _properties(self, ordinal: int) -> tuple[str, str, int | None, str, int]:
        static = self._static.get(ordinal)
        if static is None:
            props = self._torch.cuda.get_device_properties(ordinal)
            raw_uuid = getattr(props, "uuid", None)
            uuid, nvml_index, rule = map_ordinal(ordinal, str(raw_uuid) if raw_uuid else None, self._env)
            static = (str(props.name), uuid, nvml_index, rule, int(props.total_memory))
            self._static[ordinal] = static
        return static

    def sample(self) -> ProbeReading:
        cuda = self._torch.cuda
        warnings: list[str] = []
        try:
            count = int(cuda.device_count())
        except Exception as error:
            return ProbeReading(probe=self.name, warnings=(f"torch: cannot count CUDA devices: {error}",))
        devices: list[DeviceSample] = []
        attached: list[CudaMemory] = []
        rules: set[str] = set()
        for ordinal in range(count):
            try:
                name, uuid, nvml_index, rule, total = self._properties(ordinal)
                stats = cuda.memory_stats(ordinal)
                memory = TorchMemory(
                    allocated_mb=to_mb(stats.get("allocated_bytes.all.current", 0)),
                    reserved_mb=to_mb(stats.get("reserved_bytes.all.current", 0)),
                    active_mb=to_mb(stats.get("active_bytes.all.current", 0)),
                    peak_allocated_mb=to_mb(stats.get("allocated_bytes.all.peak", 0)),
                    peak_reserved_mb=to_mb(stats.get("reserved_bytes.all.peak", 0)),
                )
                rules.add(rule)
                attached.append(CudaMemory(cuda_index=ordinal, uuid=uuid, nvml_index=nvml_index, torch=memory))
                if self.mem_info:
                    free, total = cuda.mem_get_info(ordinal)
                    devices.append(
                        DeviceSample(
                            index=nvml_index if nvml_index is not None else ordinal,
                            name=name,
                            uuid=uuid,
                            backend="torch",
                            total_mb=to_mb(total),
                            free_mb=to_mb(free),
                            used_mb=to_mb(total - free),
                            torch=memory,
                            cuda_index=ordinal,
                        )
                    )
            except Exception as error:  # CUDA errors surface as RuntimeError or torch-specific types
                warnings.append(f"torch: CUDA device {ordinal}: {error}")
        if "ordinal" in rules and self._env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" and count > 1:
            warnings.append(
                "torch: CUDA ordinals assumed equal to NVML indices without UUIDs; set CUDA_DEVICE_ORDER=PCI_BUS_ID"
            )
        mapping = "cuda->nvml by " + ", ".join(sorted(rules)) if rules else ""
        return ProbeReading(
            probe=self.name, devices=tuple(devices), cuda=tuple(attached), warnings=tuple(warnings), mapping=mapping
        )
