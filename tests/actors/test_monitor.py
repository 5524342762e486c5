"""The monitor actor on the real runtime: sampling on the injected clock, subscribers, queries, hung probes."""

from __future__ import annotations

import io
import threading
from collections.abc import AsyncIterator

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from vramgate.actors import Actor, ActorSystem, Envelope, Recorder
from vramgate.actors.monitor import MonitorActor
from vramgate.clock import ManualClock, MonotonicClock
from vramgate.hardware import HostProbe, Probe, ProbeReading, SimulatedGpu, SimulatedProbe, detect
from vramgate.messages import LogRecord, Message, ResourceSample, decode_json, log_line_codec
from vramgate.messages.monitor import (
    FreeMemoryTrend,
    GetHistory,
    GetLatestSample,
    GetMonitorStatistics,
    GetTrend,
    History,
    LatestSample,
    MonitorStatistics,
    SampleNow,
    Subscribe,
    Unsubscribe,
)

pytestmark = pytest.mark.anyio


class Sink(Actor[Message]):
    """Forwards every ResourceSample it gets to a memory stream the test reads."""

    def __init__(self, send: MemoryObjectSendStream[ResourceSample]) -> None:
        self.send = send

    async def receive(self, message: Message, envelope: Envelope) -> None:
        assert isinstance(message, ResourceSample)
        self.send.send_nowait(message)


def _sink() -> tuple[Sink, MemoryObjectReceiveStream[ResourceSample]]:
    send, receive = anyio.create_memory_object_stream[ResourceSample](1000)
    return Sink(send), receive


async def _next(stream: MemoryObjectReceiveStream[ResourceSample]) -> ResourceSample:
    with anyio.fail_after(5):
        return await stream.receive()


async def _settle(clock: ManualClock, seconds: float, system: ActorSystem) -> None:
    clock.advance(seconds)
    await anyio.wait_all_tasks_blocked()
    await system.wait_idle()


async def test_samples_on_the_injected_clock_and_tracks_the_simulated_gpu() -> None:
    clock = ManualClock()
    gpu = SimulatedGpu("24GB", index=0, clock=clock, context_overhead_mb=0)
    sink, stream = _sink()
    system = ActorSystem(clock=clock)
    system.spawn(sink, name="sink")
    monitor = system.spawn(MonitorActor([SimulatedProbe([gpu])], interval_s=0.5, subscribers=["sink"]), name="monitor")
    with stream, sink.send:
        async with system:
            first = await _next(stream)
            assert first.at == 0.0
            assert first.devices[0].free_mb == 24576
            gpu.allocate("run", 4096)
            gpu.add_outside("other", 1024, until=1.2)
            for _ in range(4):
                await _settle(clock, 0.5, system)
            samples = [await _next(stream) for _ in range(4)]
            assert [sample.at for sample in samples] == [0.5, 1.0, 1.5, 2.0]
            assert [sample.devices[0].free_mb for sample in samples] == [24576 - 5120] * 2 + [24576 - 4096] * 2
            trend = await monitor.ask(GetTrend(device=0, window_s=1.0), timeout=5)
            assert trend == FreeMemoryTrend(
                device=0,
                window_s=1.0,
                samples=3,
                min_free_mb=24576 - 5120,
                mean_free_mb=(24576 - 5120 + 2 * (24576 - 4096)) / 3,
                last_free_mb=24576 - 4096,
            )
            history = await monitor.ask(GetHistory(device=0, window_s=100.0), timeout=5)
            assert isinstance(history, History)
            assert [point.at for point in history.points] == [0.0, 0.5, 1.0, 1.5, 2.0]
            latest = await monitor.ask(GetLatestSample(), timeout=5)
            assert latest == LatestSample(sample=samples[-1])
            stats = await monitor.ask(GetMonitorStatistics(), timeout=5)
            assert isinstance(stats, MonitorStatistics)
            assert (stats.samples, stats.subscribers, stats.probe_timeouts) == (5, ("sink",), 0)


async def test_subscribe_unsubscribe_and_sample_now() -> None:
    clock = ManualClock()
    gpu = SimulatedGpu("12GB", index=0, context_overhead_mb=0)
    sink, stream = _sink()
    system = ActorSystem(clock=clock)
    system.spawn(sink, name="sink")
    monitor = system.spawn(MonitorActor([SimulatedProbe([gpu])], interval_s=1.0), name="monitor")
    with stream, sink.send:
        async with system:
            await system.wait_idle()
            await monitor.tell(Subscribe(subscriber="sink"), sender="sink")
            first = await _next(stream)  # a new subscriber gets the latest sample at once
            assert first.at == 0.0
            gpu.allocate("run", 1000)
            reply = await monitor.ask(SampleNow(), timeout=5)
            assert isinstance(reply, LatestSample)
            assert reply.sample is not None
            assert reply.sample.devices[0].used_mb == 1000
            assert await _next(stream) == reply.sample
            stats = await monitor.ask(Unsubscribe(subscriber="sink"), timeout=5)
            assert isinstance(stats, MonitorStatistics)
            assert stats.subscribers == ()
            await _settle(clock, 1.0, system)
            assert stream.statistics().current_buffer_used == 0
            # a subscriber that does not exist is dropped, not a crash
            await monitor.tell(Subscribe(subscriber="nobody"))
            await _settle(clock, 1.0, system)
            stats = await monitor.ask(GetMonitorStatistics(), timeout=5)
            assert isinstance(stats, MonitorStatistics)
            assert stats.subscribers == ()
            assert stats.dropped == 1


class Hanging:
    """A blocking probe whose call hangs until ``release`` is set."""

    name = "hanging"
    blocking = True

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def sample(self) -> ProbeReading:
        self.calls += 1
        self.release.wait(timeout=30)
        return ProbeReading(probe=self.name, warnings=("hanging: answered",))

    def close(self) -> None:
        self.release.set()


class Failing:
    name = "failing"
    blocking = True

    def sample(self) -> ProbeReading:
        raise OSError("NVML: Unknown Error")

    def close(self) -> None:
        return None


@pytest.fixture
async def hanging() -> AsyncIterator[Hanging]:
    probe = Hanging()
    yield probe
    probe.release.set()


async def test_a_hung_probe_does_not_stop_the_others(hanging: Hanging, tmp_path: object) -> None:
    gpu = SimulatedGpu("24GB", index=0, context_overhead_mb=0)
    probes: list[Probe] = [hanging, Failing(), HostProbe(str(tmp_path)), SimulatedProbe([gpu])]
    sink, stream = _sink()
    system = ActorSystem(clock=MonotonicClock())
    system.spawn(sink, name="sink")
    monitor = system.spawn(
        MonitorActor(probes, interval_s=0.05, probe_timeout_s=0.1, subscribers=["sink"]), name="monitor"
    )
    with stream, sink.send:
        async with system:
            samples = [await _next(stream) for _ in range(4)]
            for sample in samples:
                assert sample.host is not None  # the other probes keep answering
                assert [device.free_mb for device in sample.devices] == [24576]
                assert any("failing: probe failed: OSError" in warning for warning in sample.warnings)
            assert any("did not answer within 0.1 s" in warning for warning in samples[0].warnings)
            assert all(any("still hung" in warning for warning in sample.warnings) for sample in samples[1:])
            assert samples[-1].at - samples[0].at < 1.0  # no stall of probe_timeout_s per sample
            stats = await monitor.ask(GetMonitorStatistics(), timeout=5)
            assert isinstance(stats, MonitorStatistics)
            assert stats.probe_timeouts == 1
            assert stats.hung_probes == ("hanging",)
            assert hanging.calls == 1  # not called again while hung
            hanging.release.set()
            with anyio.fail_after(5):
                while True:
                    sample = await stream.receive()
                    if any("answered again" in warning for warning in sample.warnings):
                        break
            await system.stop()


async def test_samples_are_recorded_as_messages() -> None:
    clock = ManualClock()
    buffer = io.BytesIO()
    recorder = Recorder(buffer)
    gpu = SimulatedGpu("L4", index=0, context_overhead_mb=0)
    sink, stream = _sink()
    system = ActorSystem(clock=clock, recorder=recorder)
    system.spawn(sink, name="sink")
    system.spawn(MonitorActor([SimulatedProbe([gpu])], interval_s=1.0, subscribers=["sink"]), name="monitor")
    with stream, sink.send:
        async with system:
            sent = await _next(stream)
            await system.wait_idle()
            recorder.flush()
    lines = buffer.getvalue().splitlines()[1:]  # after the header
    records = [decode_json(line, log_line_codec().type) for line in lines]
    published = [
        record
        for record in records
        if isinstance(record, LogRecord) and isinstance(record.message, ResourceSample) and record.recipient == "sink"
    ]
    assert published
    assert published[0].message == sent


async def test_monitor_over_detected_devices_carries_detection_warnings(tmp_path: object) -> None:
    sink, stream = _sink()
    devices = detect(["H100-80GB"], nvml=False, torch=False, disk_path=str(tmp_path))
    system = ActorSystem(clock=MonotonicClock())
    system.spawn(sink, name="sink")
    system.spawn(MonitorActor(devices, interval_s=0.05, subscribers=["sink"]), name="monitor")
    with stream, sink.send:
        async with system:
            sample = await _next(stream)
            await system.stop()
    devices.close()
    assert "nvml: disabled" in sample.warnings
    assert sample.host is not None
    assert sample.devices[0].name == "H100-80GB"
