"""The GPU catalog: memory, dense bf16 throughput, memory bandwidth, host link and interconnect of common GPUs.

Figures are from the vendor datasheets (NVIDIA product pages, datasheets and architecture whitepapers), for the
SXM form factor of data-center parts where the Wan2.2 figures were measured on SXM systems. ``memory_mib`` is
the total that NVML/nvidia-smi reports for the card (slightly below the nominal GB), which is what a budget can
use. ``bf16_tflops`` is dense tensor-core throughput (no sparsity) with fp32 accumulation; ``host_link_gbps`` is
the one-direction PCIe bandwidth in GB/s (what weight offloading streams over); ``interconnect`` names the
GPU-to-GPU link (an NVLink generation, or PCIe where a card has none) and ``interconnect_gbps`` is its bandwidth per
GPU in one direction (half the "total" NVLink figure the datasheets quote), what multi-GPU collectives run over.
A GPU without an ``interconnect_gbps`` talks to its peers over its host link.
"""

from __future__ import annotations

import math
from typing import Annotated

import msgspec

from vramgate.errors import InvalidParameter, UnknownGPU


class GpuSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One GPU model."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    memory_mib: Annotated[int, msgspec.Meta(gt=0)]
    bf16_tflops: Annotated[float, msgspec.Meta(gt=0.0)]
    memory_bandwidth_gbps: Annotated[float, msgspec.Meta(gt=0.0)]
    host_link_gbps: Annotated[float, msgspec.Meta(gt=0.0)]
    interconnect: str = "PCIe"
    interconnect_gbps: Annotated[float, msgspec.Meta(gt=0.0)] | None = None
    architecture: str = ""
    source: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def peer_link_gbps(self) -> float:
        """GB/s one way to another GPU of a multi-GPU run: the interconnect's, else the host link's."""
        return self.interconnect_gbps if self.interconnect_gbps is not None else self.host_link_gbps


_PCIE4 = 32.0  # PCIe 4.0 x16, GB/s per direction
_PCIE5 = 64.0  # PCIe 5.0 x16, GB/s per direction
_NVLINK3 = 300.0  # NVLink 3 (A100 SXM4): 600 GB/s total per GPU, GB/s per direction
_NVLINK4 = 450.0  # NVLink 4 (H100/H200/H20 SXM): 900 GB/s total per GPU, GB/s per direction

BUILTIN_GPUS: tuple[GpuSpec, ...] = (
    GpuSpec(
        name="H100-80GB",
        memory_mib=81559,
        bf16_tflops=989.0,
        memory_bandwidth_gbps=3350.0,
        host_link_gbps=_PCIE5,
        interconnect="NVLink 4",
        interconnect_gbps=_NVLINK4,
        architecture="hopper",
        source=(
            "NVIDIA H100 Tensor Core GPU datasheet (SXM5): 80 GB HBM3, 3.35 TB/s, BF16 1,979 TFLOPS with sparsity; "
            "NVLink 4: 900 GB/s per GPU (18 links)"
        ),
        aliases=("H100", "NVIDIA H100 80GB HBM3", "H100-SXM"),
    ),
    GpuSpec(
        name="H200-141GB",
        memory_mib=143771,
        bf16_tflops=989.0,
        memory_bandwidth_gbps=4800.0,
        host_link_gbps=_PCIE5,
        interconnect="NVLink 4",
        interconnect_gbps=_NVLINK4,
        architecture="hopper",
        source=(
            "NVIDIA H200 datasheet (SXM): 141 GB HBM3e, 4.8 TB/s, BF16 1,979 TFLOPS with sparsity; "
            "NVLink 4: 900 GB/s per GPU"
        ),
        aliases=("H200", "NVIDIA H200"),
    ),
    GpuSpec(
        name="H20-96GB",
        memory_mib=97871,
        bf16_tflops=148.0,
        memory_bandwidth_gbps=4000.0,
        host_link_gbps=_PCIE5,
        interconnect="NVLink 4",
        interconnect_gbps=_NVLINK4,
        architecture="hopper",
        source="NVIDIA H20 product brief: 96 GB HBM3, 4.0 TB/s, BF16 148 TFLOPS dense; NVLink: 900 GB/s per GPU",
        aliases=("H20", "NVIDIA H20"),
    ),
    GpuSpec(
        name="A100-40GB",
        memory_mib=40960,
        bf16_tflops=312.0,
        memory_bandwidth_gbps=1555.0,
        host_link_gbps=_PCIE4,
        interconnect="NVLink 3",
        interconnect_gbps=_NVLINK3,
        architecture="ampere",
        source=(
            "NVIDIA A100 Tensor Core GPU datasheet (SXM4 40GB): 1,555 GB/s, BF16 312 TFLOPS dense; "
            "NVLink 3: 600 GB/s per GPU (12 links)"
        ),
        aliases=("A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB"),
    ),
    GpuSpec(
        name="A100-80GB",
        memory_mib=81920,
        bf16_tflops=312.0,
        memory_bandwidth_gbps=2039.0,
        host_link_gbps=_PCIE4,
        interconnect="NVLink 3",
        interconnect_gbps=_NVLINK3,
        architecture="ampere",
        source=(
            "NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB): 2,039 GB/s, BF16 312 TFLOPS dense; "
            "NVLink 3: 600 GB/s per GPU (12 links)"
        ),
        aliases=("A100", "A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"),
    ),
    GpuSpec(
        name="L40S-48GB",
        memory_mib=46068,
        bf16_tflops=362.0,
        memory_bandwidth_gbps=864.0,
        host_link_gbps=_PCIE4,
        interconnect="PCIe 4.0 x16",
        interconnect_gbps=_PCIE4,
        architecture="ada",
        source=(
            "NVIDIA L40S datasheet: 48 GB GDDR6, 864 GB/s, BF16 362.05 TFLOPS dense (733 with sparsity); "
            "no NVLink, PCIe Gen4 x16 64 GB/s bidirectional"
        ),
        aliases=("L40S", "NVIDIA L40S"),
    ),
    GpuSpec(
        name="A10G-24GB",
        memory_mib=23028,
        bf16_tflops=70.0,
        memory_bandwidth_gbps=600.0,
        host_link_gbps=_PCIE4,
        interconnect="PCIe 4.0 x16",
        interconnect_gbps=_PCIE4,
        architecture="ampere",
        source=(
            "NVIDIA A10 datasheet (24 GB GDDR6, 600 GB/s); A10G is the AWS variant, about 70 TFLOPS BF16 dense; "
            "no NVLink, PCIe Gen4 x16 64 GB/s bidirectional"
        ),
        aliases=("A10G", "NVIDIA A10G"),
    ),
    GpuSpec(
        name="L4-24GB",
        memory_mib=23034,
        bf16_tflops=121.0,
        memory_bandwidth_gbps=300.0,
        host_link_gbps=_PCIE4,
        interconnect="PCIe 4.0 x16",
        interconnect_gbps=_PCIE4,
        architecture="ada",
        source=(
            "NVIDIA L4 datasheet: 24 GB GDDR6, 300 GB/s, BF16 242 TFLOPS with sparsity; "
            "no NVLink, PCIe Gen4 x16 64 GB/s bidirectional"
        ),
        aliases=("L4", "NVIDIA L4"),
    ),
    GpuSpec(
        name="RTX4090-24GB",
        memory_mib=24564,
        bf16_tflops=165.2,
        memory_bandwidth_gbps=1008.0,
        host_link_gbps=_PCIE4,
        interconnect="PCIe 4.0 x16",
        interconnect_gbps=_PCIE4,
        architecture="ada",
        source=(
            "NVIDIA Ada GPU architecture whitepaper: RTX 4090 BF16 tensor 165.2 TFLOPS (FP32 acc.), 1,008 GB/s; "
            "no NVLink (Ada GeForce has no NVLink connector), PCIe 4.0 x16"
        ),
        aliases=("RTX4090", "NVIDIA GeForce RTX 4090"),
    ),
    GpuSpec(
        name="RTX3090-24GB",
        memory_mib=24576,
        bf16_tflops=71.0,
        memory_bandwidth_gbps=936.0,
        host_link_gbps=_PCIE4,
        interconnect="PCIe 4.0 x16",
        interconnect_gbps=_PCIE4,
        architecture="ampere",
        source=(
            "NVIDIA Ampere GA102 whitepaper: RTX 3090 BF16 tensor 71 TFLOPS (FP32 accumulate), 936 GB/s; "
            "PCIe 4.0 x16 (its NVLink bridge pairs only two cards)"
        ),
        aliases=("RTX3090", "NVIDIA GeForce RTX 3090"),
    ),
    GpuSpec(
        name="RTX5090-32GB",
        memory_mib=32607,
        bf16_tflops=209.5,
        memory_bandwidth_gbps=1792.0,
        host_link_gbps=_PCIE5,
        interconnect="PCIe 5.0 x16",
        interconnect_gbps=_PCIE5,
        architecture="blackwell",
        source=(
            "NVIDIA RTX Blackwell GPU architecture whitepaper: RTX 5090 BF16 tensor 209.5 TFLOPS dense, 1,792 GB/s; "
            "no NVLink, PCIe 5.0 x16"
        ),
        aliases=("RTX5090", "NVIDIA GeForce RTX 5090"),
    ),
    GpuSpec(
        name="RTX3060-12GB",
        memory_mib=12288,
        bf16_tflops=25.6,
        memory_bandwidth_gbps=360.0,
        host_link_gbps=_PCIE4,
        interconnect="PCIe 4.0 x16",
        interconnect_gbps=_PCIE4,
        architecture="ampere",
        source=(
            "NVIDIA Ampere GA102/GA106 specifications: RTX 3060 BF16 tensor 25.6 TFLOPS (FP32 accumulate), 360 GB/s; "
            "no NVLink, PCIe 4.0 x16"
        ),
        aliases=("RTX3060", "NVIDIA GeForce RTX 3060"),
    ),
)


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


class GpuCatalog:
    """Look GPUs up by name, alias or the name NVML reports; custom sizes are ``"24GB"``-style names."""

    def __init__(self, gpus: tuple[GpuSpec, ...] = BUILTIN_GPUS) -> None:
        self._gpus: dict[str, GpuSpec] = {}
        self._index: dict[str, str] = {}
        for gpu in gpus:
            self.register(gpu)

    def register(self, gpu: GpuSpec) -> None:
        self._gpus[gpu.name] = gpu
        for alias in (gpu.name, *gpu.aliases):
            self._index[_key(alias)] = gpu.name

    def names(self) -> list[str]:
        return list(self._gpus)

    def all(self) -> tuple[GpuSpec, ...]:
        return tuple(self._gpus.values())

    def find(self, name: str) -> GpuSpec | None:
        """The GPU for ``name`` (catalog name, alias or NVML name), or ``None``."""
        found = self._index.get(_key(name))
        return self._gpus[found] if found is not None else None

    def get(self, name: str) -> GpuSpec:
        """The GPU for ``name``; a bare size such as ``"24GB"`` or ``"24576MiB"`` makes a generic GPU of that size.

        Raises :class:`~vramgate.errors.UnknownGPU` naming the catalog otherwise.
        """
        found = self.find(name)
        if found is not None:
            return found
        generic = generic_gpu(name)
        if generic is not None:
            return generic
        raise UnknownGPU(name, self.names())

    def smallest_fitting(self, vram_mb: int) -> GpuSpec | None:
        """The catalog GPU with the least memory that still holds ``vram_mb``."""
        fitting = [gpu for gpu in self._gpus.values() if gpu.memory_mib >= vram_mb]
        return min(fitting, key=lambda gpu: (gpu.memory_mib, gpu.name)) if fitting else None


def generic_gpu(name: str) -> GpuSpec | None:
    """A generic GPU for a size-only name (``24GB``, ``24GiB``, ``24576MiB``, ``24576MB``), else ``None``.

    Throughput figures of a generic GPU are those of an RTX 4090 (a mid-range assumption for time estimates).
    Raises :class:`~vramgate.errors.InvalidParameter` for a size that is not a finite number of at least 1 MiB
    (``nanGB``, ``infGB``, ``-1GB``, ``0.5MiB``).
    """
    text = name.strip().lower().replace(" ", "")
    for suffix, factor in (("gib", 1024), ("gb", 1024), ("mib", 1), ("mb", 1)):
        if text.endswith(suffix):
            number = text[: -len(suffix)]
            try:
                value = float(number)
            except ValueError:
                return None
            if not math.isfinite(value) or value * factor < 1:
                raise InvalidParameter(
                    "gpu", name, "a GPU size is a finite number of at least 1 MiB", valid="e.g. 24GB or 24576MiB"
                )
            return GpuSpec(
                name=name.strip(),
                memory_mib=int(value * factor),
                bf16_tflops=165.2,
                memory_bandwidth_gbps=1008.0,
                host_link_gbps=_PCIE4,
                interconnect="PCIe 4.0 x16",
                interconnect_gbps=_PCIE4,
                architecture="generic",
                source="generic device of a given size; throughput assumed as an RTX 4090",
            )
    return None


DEFAULT_GPU_CATALOG = GpuCatalog()
