"""The cleanup actor on a real actor system: post-run cleanups (coalesced), on request, and proactive."""

from __future__ import annotations

import pytest

from vramgate.actors import Actor, ActorSystem, Envelope
from vramgate.actors.cleanup import CleanupActor
from vramgate.clock import ManualClock
from vramgate.messages import CleanupReport, CleanupRequest, DeviceSample, Message, ResourceSample, RunFinished

pytestmark = pytest.mark.anyio


class Sink(Actor[Message]):
    def __init__(self) -> None:
        self.reports: list[CleanupReport] = []

    async def receive(self, message: Message, envelope: Envelope) -> None:
        assert isinstance(message, CleanupReport)
        self.reports.append(message)


def _finished(rid: str) -> RunFinished:
    return RunFinished(request_id=rid, lease_id=f"lease-{rid}", outcome="ok")


async def test_post_run_cleanups_are_coalesced() -> None:
    clock = ManualClock()
    system = ActorSystem(clock=clock)
    sink = Sink()
    system.spawn(sink, name="gate")
    cleanup = system.spawn(CleanupActor(reports_to="gate", min_interval_s=1.0), name="cleanup")
    async with system:
        for rid in ("a", "b", "c"):
            await cleanup.tell(_finished(rid))
        await system.wait_idle()
        assert [r.request_id for r in sink.reports] == ["a"]
        assert sink.reports[0].trigger == "post_run"
        clock.advance(1.0)  # the deferred cleanup for b and c
        await system.wait_idle()
        for _ in range(100):
            if len(sink.reports) == 2:
                break
            await system.wait_idle()
        assert [r.request_id for r in sink.reports] == ["a", "c"]
        assert sink.reports[1].actions[0].startswith("gc.collect")


async def test_cleanup_on_request_answers_the_asker() -> None:
    system = ActorSystem(clock=ManualClock())
    system.spawn(Sink(), name="gate")
    cleanup = system.spawn(CleanupActor(reports_to="gate"), name="cleanup")
    async with system:
        report = await cleanup.ask(CleanupRequest(aggressive=True), timeout=10)
        assert isinstance(report, CleanupReport)
        assert report.aggressive
        assert report.trigger == "manual"
        assert report.actions[0].startswith("gc.collect x3")


def _sample(at: float, free_mb: int) -> ResourceSample:
    device = DeviceSample(
        index=0,
        name="H100-80GB",
        uuid="GPU-0",
        backend="nvml",
        total_mb=81_559,
        free_mb=free_mb,
        used_mb=81_559 - free_mb,
    )
    return ResourceSample(at=at, devices=(device,))


async def test_proactive_cleanup_when_a_device_stays_short_and_torch_holds_cache() -> None:
    unused = {0: 4096}
    system = ActorSystem(clock=ManualClock())
    sink = Sink()
    system.spawn(sink, name="gate")
    cleanup = system.spawn(
        CleanupActor(reports_to="gate", after_s=10.0, min_unused_mb=512, unused_probe=unused.get), name="cleanup"
    )
    async with system:
        await cleanup.tell(_sample(0.0, 1000))  # short of memory (< 5% free) ...
        await cleanup.tell(_sample(5.0, 1000))  # ... but not for long enough yet
        await system.wait_idle()
        assert sink.reports == []
        await cleanup.tell(_sample(10.5, 1000))
        await system.wait_idle()
        assert [r.trigger for r in sink.reports] == ["proactive"]
        assert sink.reports[0].device == 0
        unused[0] = 100  # torch holds little cache: nothing worth freeing
        await cleanup.tell(_sample(30.0, 1000))
        await system.wait_idle()
        assert len(sink.reports) == 1
        await cleanup.tell(_sample(31.0, 50_000))  # plenty free again
        await system.wait_idle()
        assert len(sink.reports) == 1
