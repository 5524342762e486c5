"""The admission actor: a :class:`~vramgate.actors.CoreActor` over the sans-io
:class:`~vramgate.policy.admission.AdmissionCore`.

It takes ``SubmitRequest``, ``ReleaseLease``, ``CancelRequest``, ``DeviceLost`` and the monitor's
``ResourceSample`` messages, and tells every lifecycle event the core decides (queued, admitted, rejected,
released, ended) to one actor, the gate's router. A periodic ``AdmissionTick`` from its own timer lets time pass
(waits expire, samples go stale) even when nothing else happens; the ticks are recorded like everything else,
so a replay decides the same.

A core that raises may have been part-way through an update. The shell keeps what the core has told the world (its
live leases, its waiting requests, the devices lost, the latest sample), updated only after a message was handled
in full; on a crash it rebuilds a new core from that (:meth:`AdmissionCore.restore`), and the events the rebuild
causes go out ahead of those of the message the supervisor offers again. A replay does the same, so it decides
the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from vramgate.actors.core import CoreActor, Output, Send
from vramgate.messages import (
    LeaseReleased,
    LogHeader,
    Message,
    RequestAdmitted,
    RequestEnded,
    RequestRejected,
    ResourceSample,
)
from vramgate.messages.admission import (
    AdmissionSnapshot,
    AdmissionTick,
    CancelRequest,
    DeviceLost,
    LeaseSnapshot,
    SubmitRequest,
)
from vramgate.messages.log import CoreSpec
from vramgate.policy.admission import AdmissionConfig, AdmissionCore
from vramgate.policy.admission_config import upgrade
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG, GpuCatalog
from vramgate.policy.ledger import DeviceConfig
from vramgate.policy.registered import from_header
from vramgate.replay import register_core_kind

#: The core kind written into recorded log headers.
KIND = "admission"


class _Held:
    """A lease the core told of: its admission, when, and whether its request was cancelled since."""

    __slots__ = ("admitted", "at", "cancel_requested")

    def __init__(self, admitted: RequestAdmitted, at: float) -> None:
        self.admitted = admitted
        self.at = at
        self.cancel_requested = False

    def snapshot(self) -> LeaseSnapshot:
        event = self.admitted
        return LeaseSnapshot(
            lease_id=event.lease_id,
            request_id=event.request_id,
            devices=event.devices,
            reservation_mb=event.reservation_mb,
            plan=event.plan,
            admitted_at=self.at,
            cancel_requested=self.cancel_requested,
        )


def _waiting_snapshot(message: SubmitRequest, arrival: float) -> SubmitRequest:
    return message if message.arrival == arrival else msgspec.structs.replace(message, arrival=arrival)


class AdmissionShell:
    """Adapts :class:`AdmissionCore` (which returns events) to the runtime's core protocol (which routes them),
    and rebuilds the core with ``rebuild`` (a new, empty core) after it raised.

    Without ``release_events``, ``LeaseReleased`` is not sent: the ``RequestEnded`` that follows a release says it
    to a recipient that knows the lease (the gate)."""

    def __init__(
        self,
        core: AdmissionCore,
        *,
        events_to: str,
        rebuild: Callable[[], AdmissionCore] | None = None,
        release_events: bool = True,
    ) -> None:
        self.core = core
        self.events_to = events_to
        self.release_events = release_events
        self.rebuild = rebuild
        self.rebuilds = 0
        self._now = float("-inf")
        # What the snapshot is made of, made into messages only when one is taken.
        self._leases: dict[str, _Held] = {}
        self._lease_of: dict[str, str] = {}
        self._waiting: dict[str, tuple[SubmitRequest, float]] = {}
        self._counter = 0
        self._lost: list[DeviceLost] = []
        self._sample: ResourceSample | None = None
        self._owed: list[Message] = []

    def handle(self, message: Message, now: float) -> Sequence[Output]:
        try:
            events = self.core.handle(message, now)
        except Exception:
            if self.rebuild is not None:
                self._rebuild(now)
            raise
        self._track(message, events, self._now if self._now > now else now)
        if self._owed:
            events = [*self._owed, *events]
            self._owed = []
        to = self.events_to
        if self.release_events:
            return [Send(to, event) for event in events]
        return [Send(to, event) for event in events if type(event) is not LeaseReleased]

    def snapshot(self) -> AdmissionSnapshot:
        """The core's state as its events told it: what a rebuilt core starts from."""
        return AdmissionSnapshot(
            leases=tuple(held.snapshot() for held in self._leases.values()),
            waiting=tuple(_waiting_snapshot(message, arrival) for message, arrival in self._waiting.values()),
            lease_counter=self._counter,
        )

    # ------------------------------------------------------------------ internals

    def _track(self, message: Message, events: Sequence[Message], now: float) -> None:
        """Mirror a message handled in full: its input, then the events it caused, in order."""
        self._now = now
        kind = type(message)
        if kind is SubmitRequest:
            assert isinstance(message, SubmitRequest)
            self._waiting[message.request_id] = (message, message.arrival if message.arrival is not None else now)
        elif kind is ResourceSample:
            assert isinstance(message, ResourceSample)
            self._sample = message
        elif kind is CancelRequest:
            assert isinstance(message, CancelRequest)
            lease_id = self._lease_of.get(message.request_id)
            if lease_id is not None:
                self._leases[lease_id].cancel_requested = True
        elif kind is DeviceLost:
            assert isinstance(message, DeviceLost)
            self._lost.append(message)
        waiting, leases, lease_of = self._waiting, self._leases, self._lease_of
        for event in events:
            kind = type(event)
            if kind is RequestAdmitted:
                assert isinstance(event, RequestAdmitted)
                waiting.pop(event.request_id, None)
                leases[event.lease_id] = _Held(event, max(0.0, now))
                lease_of[event.request_id] = event.lease_id
                number = event.lease_id.rpartition("-")[2]
                if number.isdigit():
                    self._counter = max(self._counter, int(number))
            elif kind is LeaseReleased:
                assert isinstance(event, LeaseReleased)
                leases.pop(event.lease_id, None)
                lease_of.pop(event.request_id, None)
            elif kind is RequestEnded or kind is RequestRejected:
                assert isinstance(event, RequestEnded | RequestRejected)
                waiting.pop(event.request_id, None)
                lease_id = lease_of.pop(event.request_id, None)
                if lease_id is not None:
                    leases.pop(lease_id, None)

    def _rebuild(self, now: float) -> None:
        """Replace the core that raised with one restored from the last consistent state."""
        assert self.rebuild is not None
        now = max(now, self._now)
        core = self.rebuild()
        owed: list[Message] = []
        for lost in self._lost:
            owed.extend(core.handle(lost, now))
        owed.extend(core.restore(self.snapshot(), now))
        if self._sample is not None:
            owed.extend(core.handle(self._sample, now))
        self.core = core
        self.rebuilds += 1
        self._owed.extend(owed)
        self._track(AdmissionTick(), owed, now)


class AdmissionActor(CoreActor):
    """Runs the admission core; ticks every ``tick_s`` seconds of the system's clock."""

    def __init__(self, shell: AdmissionShell, *, tick_s: float, config: Mapping[str, Any]) -> None:
        super().__init__(shell, kind=KIND, config=config)
        self.shell = shell
        self.tick_s = tick_s

    @property
    def admission(self) -> AdmissionCore:
        """The admission core now running (a new one after a crash)."""
        return self.shell.core

    async def on_start(self) -> None:
        self.context.send_every(self.tick_s, AdmissionTick())


def _shell(
    devices: Sequence[DeviceConfig],
    config: AdmissionConfig,
    events_to: str,
    *,
    time_scale: float,
    min_run_s: float,
    catalog: GpuCatalog,
    host_ledger: bool = True,
    release_events: bool = True,
) -> AdmissionShell:
    def make() -> AdmissionCore:
        return AdmissionCore(
            devices, config, time_scale=time_scale, min_run_s=min_run_s, catalog=catalog, host_ledger=host_ledger
        )

    return AdmissionShell(make(), events_to=events_to, rebuild=make, release_events=release_events)


def admission_actor(
    devices: Sequence[DeviceConfig],
    config: AdmissionConfig,
    *,
    events_to: str,
    tick_s: float = 0.5,
    time_scale: float = 1.0,
    min_run_s: float = 0.0,
    catalog: GpuCatalog = DEFAULT_GPU_CATALOG,
    release_events: bool = True,
) -> AdmissionActor:
    """An admission actor for ``devices``; its recorded config (with the catalog entries the log header records,
    :mod:`vramgate.policy.registered`) rebuilds the same core for replay."""
    shell = _shell(
        devices,
        config,
        events_to,
        time_scale=time_scale,
        min_run_s=min_run_s,
        catalog=catalog,
        release_events=release_events,
    )
    recorded = {
        "devices": [msgspec.to_builtins(d) for d in devices],
        "admission": msgspec.to_builtins(config),
        "time_scale": time_scale,
        "min_run_s": min_run_s,
        "events_to": events_to,
        "host_ledger": True,
        "release_events": release_events,
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
    # a log without ``host_ledger`` was recorded before host RAM was reserved
    host_ledger = bool(config.get("host_ledger", False))
    events_to = str(config["events_to"])
    release_events = bool(config.get("release_events", True))
    return _shell(
        devices,
        admission,
        events_to,
        time_scale=time_scale,
        min_run_s=min_run_s,
        catalog=gpus,
        host_ledger=host_ledger,
        release_events=release_events,
    )


register_core_kind(KIND, build_core)
