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
from vramgate.messages import LeaseReleased, LogHeader, Message
from vramgate.messages.admission import AdmissionTick
from vramgate.messages.log import CoreSpec
from vramgate.policy.admission import AdmissionConfig, AdmissionCore
from vramgate.policy.ledger import DeviceConfig
from vramgate.replay import register_core_kind

#: The core kind written into recorded log headers.
KIND = "admission"


class AdmissionShell:
    """Adapts :class:`AdmissionCore` (which returns events) to the runtime's core protocol (which routes them).

    Without ``release_events``, ``LeaseReleased`` is not sent: the ``RequestEnded`` that follows a release says it
    to a recipient that knows the lease (the gate)."""

    def __init__(self, core: AdmissionCore, *, events_to: str, release_events: bool = True) -> None:
        self.core = core
        self.events_to = events_to
        self.release_events = release_events

    def handle(self, message: Message, now: float) -> Sequence[Output]:
        events = self.core.handle(message, now)
        if not self.release_events:
            events = [event for event in events if type(event) is not LeaseReleased]
        return [Send(self.events_to, event) for event in events]


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
    release_events: bool = True,
) -> AdmissionActor:
    """An admission actor for ``devices``; its recorded config rebuilds the same core for replay."""
    shell = AdmissionShell(AdmissionCore(devices, config), events_to=events_to, release_events=release_events)
    recorded = {
        "devices": [msgspec.to_builtins(d) for d in devices],
        "admission": msgspec.to_builtins(config),
        "events_to": events_to,
        "release_events": release_events,
    }
    return AdmissionActor(shell, tick_s=tick_s, config=recorded)


def build_core(header: LogHeader, spec: CoreSpec) -> AdmissionShell:
    """Rebuild an admission core from its recorded config (for replay)."""
    config = spec.config
    devices = msgspec.convert(config["devices"], tuple[DeviceConfig, ...])
    admission = msgspec.convert(config["admission"], AdmissionConfig)
    release_events = bool(config.get("release_events", True))
    return AdmissionShell(
        AdmissionCore(devices, admission), events_to=str(config["events_to"]), release_events=release_events
    )


register_core_kind(KIND, build_core)
