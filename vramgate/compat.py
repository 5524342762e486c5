"""The calls and records users of the replaced resource manager know, as thin calls over vramgate's cores.

For scripts that want one process-wide, synchronous instance::

    from vramgate.compat import get_resource_manager

    rm = get_resource_manager()
    ok, why = rm.check_vram_availability(20_000)
    requirement = rm.estimate_resource_requirements("t2v-A14B", "720p", steps=40, duration=5.0)
    params, suggestions = rm.optimize_parameters_for_resources({"model": "t2v-A14B", "width": 1280, "height": 720})
    report = rm.cleanup_memory(aggressive=True)

Servers should use :func:`vramgate.open_gate` instead: it reserves memory, where these calls only look. The same
calls on a running gate (:func:`check_vram_availability`, :func:`estimate_resource_requirements`,
:func:`optimize_parameters_for_resources`; ``Gate`` has them as methods, and ``await gate.cleanup_memory()``) read
its ledgers and plan for its devices.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import msgspec

from vramgate.cleanup import cleanup_memory
from vramgate.errors import DoesNotFit, InvalidParameter
from vramgate.hardware import DeviceSet, detect
from vramgate.messages import (
    CleanupReport,
    GenerationRequest,
    LoraSpec,
    OptimizationSuggestion,
    ResourceRequirement,
    RunParams,
    SystemResourceInfo,
    VRAMInfo,
)
from vramgate.policy.estimate import Estimator
from vramgate.policy.models import ModelProfile, parse_size
from vramgate.policy.optimize import Optimizer, default_margin_mb

if TYPE_CHECKING:
    from vramgate._facade import ReadGate

#: The short side of each named resolution.
RESOLUTIONS = {"480p": 480, "540p": 540, "576p": 576, "704p": 704, "720p": 720, "1080p": 1080}


def resolution_size(profile: ModelProfile, resolution: str) -> tuple[int, int]:
    """``(width, height)`` for ``"720p"``-style names (the model's closest supported landscape size) or ``"WxH"``.

    A named resolution the model does not list maps to the 16:9 size with that short side, rounded to the
    model's spatial multiple (``1080p`` on Wan: 1920x1088).
    """
    text = resolution.strip().lower()
    if "x" in text or "*" in text:
        try:
            return parse_size(text.replace("x", "*"))
        except ValueError as exc:
            raise InvalidParameter("resolution", resolution, str(exc), valid="480p, 720p or WxH") from None
    short = RESOLUTIONS.get(text)
    if short is None:
        raise InvalidParameter("resolution", resolution, "unknown resolution", valid=", ".join([*RESOLUTIONS, "WxH"]))
    landscape = [parse_size(size) for size in profile.sizes]
    landscape = [(w, h) for w, h in landscape if w >= h]
    for width, height in landscape:
        if abs(height - short) <= 16:
            return width, height
    multiple = profile.spatial_multiple
    height = -(-short // multiple) * multiple
    width = -(-(short * 16 // 9) // multiple) * multiple
    return width, height


def request_from_legacy(
    estimator: Estimator,
    model_type: str,
    resolution: str,
    steps: int | None = None,
    duration: float | None = None,
    lora_count: int = 0,
) -> GenerationRequest:
    """The request the replaced manager's ``(model_type, resolution, steps, duration, lora_count)`` describes."""
    profile = estimator.profile(model_type)
    width, height = resolution_size(profile, resolution)
    if lora_count < 0:
        raise InvalidParameter("lora_count", lora_count, "must not be negative")
    return GenerationRequest(
        model=profile.name,
        width=width,
        height=height,
        steps=steps,
        duration_s=duration,
        lora=tuple(LoraSpec(name=f"lora-{i + 1}") for i in range(lora_count)),
    )


class ResourceManager:
    """A synchronous facade for scripts: look at the hardware, estimate, optimize and clean up.

    It reserves nothing (only a gate does); ``check_vram_availability`` looks at what the devices have free now,
    less the safety margin.
    """

    def __init__(self, *, devices: DeviceSet | None = None, estimator: Estimator | None = None) -> None:
        self.devices = devices if devices is not None else detect()
        self.estimator = estimator if estimator is not None else Estimator()
        self.optimizer = Optimizer(self.estimator)

    def get_vram_info(self) -> list[VRAMInfo]:
        """Per-device total, allocated (by this process, when torch knows), cached and free memory."""
        sample = self.devices.sample()
        infos: list[VRAMInfo] = []
        for device in sample.devices:
            torch = device.torch
            infos.append(
                VRAMInfo(
                    device=device.index,
                    total_mb=device.total_mb,
                    allocated_mb=torch.allocated_mb if torch is not None else device.used_mb,
                    cached_mb=torch.reserved_mb if torch is not None else 0,
                    free_mb=device.free_mb,
                )
            )
        return infos

    def get_system_resources(self) -> SystemResourceInfo:
        """VRAM, RAM, CPU and disk in one record."""
        sample = self.devices.sample()
        host = sample.host
        return SystemResourceInfo(
            vram=tuple(self.get_vram_info()),
            ram_total_mb=host.ram_total_mb if host is not None else 0,
            ram_available_mb=host.ram_available_mb if host is not None else 0,
            cpu_percent=host.cpu_percent if host is not None else None,
            disk_free_mb=host.disk_free_mb if host is not None else None,
        )

    def check_vram_availability(self, required_mb: int) -> tuple[bool, str]:
        """Whether ``required_mb`` fits on some device now (free memory less the safety margin), and why."""
        devices = self.devices.sample().devices
        if not devices:
            return False, "no GPU is visible (no NVML, no CUDA, no simulated device)"
        best = max(devices, key=lambda d: d.free_mb - default_margin_mb(d.total_mb))
        usable = best.free_mb - default_margin_mb(best.total_mb)
        if usable >= required_mb:
            return True, f"{required_mb} MiB fits on device {best.index} ({usable} MiB usable)"
        return False, f"{required_mb} MiB does not fit: at most {max(0, usable)} MiB usable (device {best.index})"

    def estimate_resource_requirements(
        self,
        model_type: str,
        resolution: str,
        steps: int | None = None,
        duration: float | None = None,
        lora_count: int = 0,
        *,
        gpu: str = "H100-80GB",
    ) -> ResourceRequirement:
        """The requirement of a run on ``gpu``, as given (no optimization)."""
        request = request_from_legacy(self.estimator, model_type, resolution, steps, duration, lora_count)
        return self.estimator.estimate(self.estimator.resolve(request), gpu)

    def optimize_parameters_for_resources(
        self,
        params: GenerationRequest | dict[str, Any],
        *,
        gpu: str | None = None,
        vram_mb: int | None = None,
        ram_mb: int | None = None,
    ) -> tuple[RunParams, list[OptimizationSuggestion]]:
        """The parameters with the least quality loss that fit (the largest visible device by default)."""
        request = params if isinstance(params, GenerationRequest) else msgspec.convert(params, GenerationRequest)
        target, budget = self._budget(gpu, vram_mb)
        plan = self.optimizer.optimize(
            request, gpu=target, budget_mb=budget, ram_budget_mb=ram_mb, max_level=request.max_level
        )
        return plan.params, list(plan.suggestions)

    def cleanup_memory(self, aggressive: bool = False) -> CleanupReport:
        """gc and the torch CUDA cache; reports what was freed and what could not be done."""
        return cleanup_memory(aggressive)

    def _budget(self, gpu: str | None, vram_mb: int | None) -> tuple[str, int]:
        if gpu is not None:
            spec = self.estimator.gpus.get(gpu)
            return spec.name, vram_mb if vram_mb is not None else spec.memory_mib - default_margin_mb(spec.memory_mib)
        devices = self.devices.sample().devices
        if not devices:
            raise InvalidParameter("gpu", None, "no GPU is visible; name one (gpu=...) to optimize for")
        best = max(devices, key=lambda d: d.total_mb)
        known = self.estimator.gpus.find(best.name)
        name = known.name if known is not None else f"{best.total_mb}MiB"
        return name, vram_mb if vram_mb is not None else best.total_mb - default_margin_mb(best.total_mb)


# ---------------------------------------------------------------------- the same calls on a running gate


def check_vram_availability(gate: ReadGate, required_mb: int, *, device: int | None = None) -> tuple[bool, str]:
    """Whether ``required_mb`` fits now on ``device`` (or on any device) of ``gate``, with a sentence saying why."""
    stats = gate.statistics()
    rows = [d.ledger for d in stats.devices if device is None or d.ledger.index == device]
    if not rows:
        return False, f"no device {device}" if device is not None else "no GPU is managed"
    best = max(rows, key=lambda r: r.free_mb)
    if best.free_mb >= required_mb:
        return True, f"{required_mb} MiB fits on device {best.index} ({best.free_mb} MiB free for admission)"
    return False, (
        f"{required_mb} MiB does not fit: at most {best.free_mb} MiB is free for admission "
        f"(device {best.index}: capacity {best.capacity_mb}, margin {best.margin_mb}, "
        f"others {best.others_mb}, reserved {best.reserved_mb} MiB)"
    )


def estimate_resource_requirements(
    gate: ReadGate,
    model_type: str,
    resolution: str,
    steps: int | None = None,
    duration: float | None = None,
    lora_count: int = 0,
    *,
    gpu: str | None = None,
) -> ResourceRequirement:
    """The requirement of a run given the seed's way (model, ``"720p"``-style resolution, steps, seconds), on
    ``gpu`` or the gate's first device."""
    estimator = gate.estimator
    request = request_from_legacy(estimator, model_type, resolution, steps, duration, lora_count)
    configs = gate.device_configs
    target = gpu or (configs[0].gpu if configs else "H100-80GB")
    return estimator.estimate(estimator.resolve(request), target)


def optimize_parameters_for_resources(
    gate: ReadGate, params: GenerationRequest | dict[str, Any]
) -> tuple[RunParams, list[OptimizationSuggestion]]:
    """The parameters that fit the gate's largest device now, and the changes made."""
    request = params if isinstance(params, GenerationRequest) else msgspec.convert(params, GenerationRequest)
    budgets = gate.plan_budgets()
    if not budgets:
        raise DoesNotFit("the gate manages no usable GPU")
    gpu, budget = max(budgets.items(), key=lambda item: (item[1], item[0]))
    plan = Optimizer(gate.estimator).optimize(
        request, gpu=gpu, budget_mb=budget, ram_budget_mb=gate.ram_budget_mb, max_level=request.max_level
    )
    return plan.params, list(plan.suggestions)


_MANAGER: ResourceManager | None = None
_LOCK = threading.Lock()


def get_resource_manager() -> ResourceManager:
    """The process-wide :class:`ResourceManager` (created on first use)."""
    global _MANAGER
    with _LOCK:
        if _MANAGER is None:
            _MANAGER = ResourceManager()
        return _MANAGER
