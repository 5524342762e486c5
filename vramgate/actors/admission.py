"""The admission actor: a :class:`~vramgate.actors.CoreActor` over the sans-io
:class:`~vramgate.policy.admission.AdmissionCore`.

It takes ``SubmitRequest``, ``ReleaseLease``, ``CancelRequest``, ``DeviceLost`` and the monitor's
``ResourceSample`` messages, and tells every lifecycle event the core decides (queued, admitted, rejected,
released, ended) to one actor, the gate's router. A periodic ``AdmissionTick`` from its own timer lets time pass
(waits expire, samples go stale) even when nothing else happens; the ticks are recorded like everything else,
so a replay decides the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from vramgate.actors.core import CoreActor, Output, Send
from vramgate.messages import LogHeader, Message
from vramgate.messages.admission import AdmissionTick
from vramgate.messages.log import CoreSpec
from vramgate.policy.admission import AdmissionConfig, AdmissionCore
from vramgate.policy.admission_config import upgrade
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG, GpuCatalog
from vramgate.policy.ledger import DeviceConfig
from vramgate.policy.registered import from_header
from vramgate.replay import register_core_kind

#: The core kind written into recorded log headers.
KIND = "admission"


class AdmissionShell:
    """Adapts :class:`AdmissionCore` (which returns events) to the runtime's core protocol (which routes them)."""

    def __init__(self, core: AdmissionCore, *, events_to: str) -> None:
        self.core = core
        self.events_to = events_to

    def handle(self, message: Message, now: float) -> Sequence[Output]:
        return [Send(self.events_to, event) for event in self.core.handle(message, now)]


class AdmissionActor(CoreActor):
    """Runs the admission core; ticks every ``tick_s`` seconds of the system's clock."""

    def __init__(self, shell: AdmissionShell, *, tick_s: float, config: Mapping[str, Any]) -> None:
        super().__init__(shell, kind=KIND, config=config)
        self.shell = shell
        self.tick_s = tick_s

    @property
    def admission(self) -> AdmissionCore:
        return self.shell.core

    async def on_start(self) -> None:
        self.context.send_every(self.tick_s, AdmissionTick())


def admission_actor(
    devices: Sequence[DeviceConfig],
    config: AdmissionConfig,
    *,
    events_to: str,
    tick_s: float = 0.5,
    time_scale: float = 1.0,
    min_run_s: float = 0.0,
    catalog: GpuCatalog = DEFAULT_GPU_CATALOG,
) -> AdmissionActor:
    """An admission actor for ``devices``; its recorded config (with the catalog entries the log header records,
    :mod:`vramgate.policy.registered`) rebuilds the same core for replay."""
    core = AdmissionCore(devices, config, time_scale=time_scale, min_run_s=min_run_s, catalog=catalog)
    shell = AdmissionShell(core, events_to=events_to)
    recorded = {
        "devices": [msgspec.to_builtins(d) for d in devices],
        "admission": msgspec.to_builtins(config),
        "time_scale": time_scale,
        "min_run_s": min_run_s,
        "events_to": events_to,
    }
    return AdmissionActor(shell, tick_s=tick_s, config=recorded)


def build_core(header: LogHeader, spec: CoreSpec) -> AdmissionShell:
    """Rebuild an admission core from its recorded config (for replay); a log written before ``aging`` was
    named ``aging_per_s`` (and the run timing left the admission config) replays with the values it recorded."""
    config = spec.config
    devices = msgspec.convert(config["devices"], tuple[DeviceConfig, ...])
    recorded, timing = upgrade(config["admission"])
    admission = msgspec.convert(recorded, AdmissionConfig)
    time_scale = float(config.get("time_scale", timing.get("time_scale", 1.0)))
    min_run_s = float(config.get("min_run_s", timing.get("min_run_s", 0.0)))
    _, gpus = from_header(header.config).catalogs()
    core = AdmissionCore(devices, admission, time_scale=time_scale, min_run_s=min_run_s, catalog=gpus)
    return AdmissionShell(core, events_to=str(config["events_to"]))


register_core_kind(KIND, build_core)
