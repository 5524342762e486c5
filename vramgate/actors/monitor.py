"""The monitor actor: samples every probe on a timer and publishes ``ResourceSample`` messages to subscribers.

Probes that may block (NVML, torch, psutil) run in a worker thread under a real-time timeout; a probe that does
not answer in time is abandoned (its thread is left to finish on its own), reported in the sample's warnings,
and skipped until its call returns, so a hung driver never stalls the actor system. Samples are ordinary messages
sent through the runtime, so they are recorded and replayed like the rest.

The monitor keeps a bounded history ring per device and answers :class:`~vramgate.messages.monitor.GetLatestSample`,
:class:`~vramgate.messages.monitor.GetHistory`, :class:`~vramgate.messages.monitor.GetTrend` and
:class:`~vramgate.messages.monitor.GetMonitorStatistics` asks. Subscribers are actor names, given at
construction or added with :class:`~vramgate.messages.monitor.Subscribe`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import anyio
import anyio.to_thread
import msgspec

from vramgate.actors.actor import Actor
from vramgate.actors.envelope import Envelope
from vramgate.errors import ActorStopped, InvalidParameter, MailboxFull
from vramgate.hardware.detect import DeviceSet, read_probe
from vramgate.hardware.history import SampleHistory
from vramgate.hardware.probe import Probe, ProbeReading, combine
from vramgate.messages import HostSample, Message, ResourceSample
from vramgate.messages.monitor import (
    GetHistory,
    GetLatestSample,
    GetMonitorStatistics,
    GetTrend,
    History,
    LatestSample,
    MonitorStatistics,
    SampleNow,
    SampleTick,
    Subscribe,
    Unsubscribe,
)

#: The default sampling interval (2 Hz).
DEFAULT_INTERVAL_S = 0.5
#: The default history kept per device (10 minutes).
DEFAULT_HISTORY_S = 600.0


class _Call:
    """One probe call in a worker thread; ``done`` is set when it returns, even after it was abandoned."""

    __slots__ = ("done", "probe", "started")

    def __init__(self, probe: Probe, started: float) -> None:
        self.probe = probe
        self.started = started
        self.done = threading.Event()

    def __call__(self) -> ProbeReading:
        try:
            return read_probe(self.probe)
        finally:
            self.done.set()


def memory_view(sample: ResourceSample) -> ResourceSample:
    """The sample as admission and cleanup read it: each device's identity and memory figures, and the time.

    Temperatures, power, utilization, per-process lists, the host's CPU and disk, and warnings are left out
    (they change at every tick on a real machine and decide nothing there); the host's RAM is kept, its use
    rounded up and this process's share down to 64 MiB (the host RAM ledger reads them; a safe side each).
    """
    devices = tuple(
        msgspec.structs.replace(
            device,
            utilization_pct=None,
            memory_utilization_pct=None,
            temperature_c=None,
            power_w=None,
            power_limit_w=None,
            processes=(),
        )
        for device in sample.devices
    )
    host = sample.host
    ram = None
    if host is not None:
        used = min(host.ram_total_mb, -(-host.ram_used_mb // _RAM_STEP_MB) * _RAM_STEP_MB)
        rss = host.process_rss_mb
        ram = HostSample(
            ram_total_mb=host.ram_total_mb,
            ram_available_mb=host.ram_total_mb - used,
            ram_used_mb=used,
            swap_total_mb=0,
            swap_used_mb=0,
            cpu_count=host.cpu_count,
            cgroup_limit_mb=host.cgroup_limit_mb,
            process_rss_mb=None if rss is None else rss // _RAM_STEP_MB * _RAM_STEP_MB,
        )
    return ResourceSample(at=sample.at, devices=devices, host=ram, mapping=sample.mapping)


#: The step host RAM figures are rounded to in :func:`memory_view`.
_RAM_STEP_MB = 64


class MonitorActor(Actor[Message]):
    """Samples ``devices`` (a :class:`DeviceSet` or probes) every ``interval_s`` seconds of the injected clock.

    ``probe_timeout_s`` is the real time a blocking probe may take. ``max_duty`` bounds the share of time spent
    sampling: when one sample costs more than ``max_duty * interval_s`` (on the injected clock), ticks are skipped
    so that sampling takes at most that share. ``history_s`` is how much history each device keeps.
    ``memory_only`` names subscribers that read only devices' memory: they get :func:`memory_view` of each
    sample, so that what they receive (and what the log records for them) changes only when memory does.
    """

    def __init__(
        self,
        devices: DeviceSet | Sequence[Probe],
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        history_s: float = DEFAULT_HISTORY_S,
        probe_timeout_s: float = 2.0,
        subscribers: Sequence[str] = (),
        max_duty: float = 0.5,
        warnings: Sequence[str] = (),
        memory_only: Sequence[str] = (),
    ) -> None:
        if not interval_s > 0:
            raise InvalidParameter("interval_s", interval_s, "must be positive")
        if not probe_timeout_s > 0:
            raise InvalidParameter("probe_timeout_s", probe_timeout_s, "must be positive")
        if not 0 < max_duty <= 1:
            raise InvalidParameter("max_duty", max_duty, "must be in (0, 1]")
        if isinstance(devices, DeviceSet):
            self.probes: tuple[Probe, ...] = devices.probes
            self._detect_warnings = (*devices.warnings, *warnings)
        else:
            self.probes = tuple(devices)
            self._detect_warnings = tuple(warnings)
        self.interval_s = interval_s
        self.probe_timeout_s = probe_timeout_s
        self.max_duty = max_duty
        self._subscribers: list[str] = list(dict.fromkeys(subscribers))
        self._memory_only = frozenset(memory_only)
        max_points = min(1_000_000, math.ceil(history_s / interval_s) + 1)
        self._history = SampleHistory(max_age_s=history_s, max_points=max_points)
        self._latest: ResourceSample | None = None
        self._hung: dict[str, _Call] = {}
        self._samples = 0
        self._timeouts = 0
        self._dropped = 0
        self._last_cost = 0.0
        self._next_due = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        self.context.send_every(self.interval_s, SampleTick(), first_after_s=0.0)

    # ------------------------------------------------------------------ messages

    async def receive(self, message: Message, envelope: Envelope) -> None:
        asked = envelope.correlation_id is not None
        if isinstance(message, SampleTick):
            if self.context.clock.now() >= self._next_due:
                await self._publish(await self.sample())
        elif isinstance(message, SampleNow):
            sample = await self.sample()
            await self._publish(sample)
            if asked:
                await self.context.reply(envelope, LatestSample(sample=sample))
        elif isinstance(message, Subscribe):
            if message.subscriber not in self._subscribers:
                self._subscribers.append(message.subscriber)
            if asked:
                await self.context.reply(envelope, LatestSample(sample=self._latest))
            elif self._latest is not None:
                self._deliver(message.subscriber, self._latest)
        elif isinstance(message, Unsubscribe):
            if message.subscriber in self._subscribers:
                self._subscribers.remove(message.subscriber)
            if asked:
                await self.context.reply(envelope, self.statistics())
        elif isinstance(message, GetLatestSample):
            await self.context.reply(envelope, LatestSample(sample=self._latest))
        elif isinstance(message, GetTrend):
            now = self._latest.at if self._latest is not None else None
            await self.context.reply(envelope, self._history.trend(message.device, message.window_s, now))
        elif isinstance(message, GetHistory):
            now = self._latest.at if self._latest is not None else None
            points = self._history.window(message.device, message.window_s, now)
            await self.context.reply(envelope, History(device=message.device, window_s=message.window_s, points=points))
        elif isinstance(message, GetMonitorStatistics):
            await self.context.reply(envelope, self.statistics())
        else:
            raise InvalidParameter("message", type(message).__name__, "not a message the monitor handles")

    def statistics(self) -> MonitorStatistics:
        return MonitorStatistics(
            samples=self._samples,
            interval_s=self.interval_s,
            subscribers=tuple(self._subscribers),
            probe_timeouts=self._timeouts,
            hung_probes=tuple(sorted(self._hung)),
            last_sample_cost_s=self._last_cost,
            dropped=self._dropped,
        )

    # ------------------------------------------------------------------ sampling

    async def _read(self, probe: Probe, warnings: list[str]) -> ProbeReading | None:
        clock = self.context.clock
        hung = self._hung.get(probe.name)
        if hung is not None:
            if not hung.done.is_set():
                waited = clock.now() - hung.started
                warnings.append(f"{probe.name}: probe still hung ({waited:.1f} s); skipped, other probes continue")
                return None
            del self._hung[probe.name]
            warnings.append(f"{probe.name}: probe answered again after a hang")
        call = _Call(probe, clock.now())
        reading: ProbeReading | None = None
        with anyio.move_on_after(self.probe_timeout_s):
            reading = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        if reading is None:
            self._timeouts += 1
            self._hung[probe.name] = call
            warnings.append(f"{probe.name}: probe did not answer within {self.probe_timeout_s:g} s; abandoned")
        return reading

    async def sample(self) -> ResourceSample:
        """Sample every probe now (blocking ones in worker threads) and record the sample in the history."""
        clock = self.context.clock
        start = clock.now()
        warnings: list[str] = []
        readings: list[ProbeReading] = []
        for probe in self.probes:
            reading = read_probe(probe) if not probe.blocking else await self._read(probe, warnings)
            if reading is not None:
                readings.append(reading)
        end = clock.now()
        sample = combine(readings, at=end, warnings=(*self._detect_warnings, *warnings))
        self._last_cost = max(0.0, end - start)
        self._next_due = start + max(self.interval_s, self._last_cost / self.max_duty) - self.interval_s * 0.5
        self._samples += 1
        self._latest = sample
        self._history.add(sample)
        return sample

    async def _publish(self, sample: ResourceSample) -> None:
        view: ResourceSample | None = None
        for name in list(self._subscribers):
            if name in self._memory_only:
                view = view if view is not None else memory_view(sample)
                self._deliver(name, view)
            else:
                self._deliver(name, sample)

    def _deliver(self, name: str, sample: ResourceSample) -> None:
        """Tell ``name`` the sample without waiting: a full mailbox drops it (the next one follows)."""
        try:
            self.context.send_nowait(name, sample)
        except MailboxFull:
            self._dropped += 1
        except ActorStopped:  # gone, or never spawned (UnknownActor): forget it
            self._dropped += 1
            self._subscribers.remove(name)
