"""Prometheus metrics of a gate: the exposition parses with prometheus_client's parser and matches statistics()."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vramgate.config import AdmissionSettings, DevicesConfig, GateConfig, MonitorConfig
from vramgate.errors import DoesNotFit
from vramgate.gate import open_gate
from vramgate.messages import GenerationRequest
from vramgate.messages.gate import GateStatistics
from vramgate.metrics import MIB, GateMetrics, Histogram
from vramgate.runners import SimulatedRun
from vramgate.server import ServerSettings, create_app

pytestmark = pytest.mark.anyio

CONFIG = GateConfig(
    devices=DevicesConfig(use_real_gpus=False, simulate=("RTX4090-24GB", "H100-80GB")),
    monitor=MonitorConfig(interval_s=0.02),
    admission=AdmissionSettings(ram_budget="256GiB"),
)
SMALL = GenerationRequest(model="ti2v-5B", width=832, height=480, frames=33, steps=10)
HUGE = GenerationRequest(model="t2v-A14B", width=1920, height=1088, frames=241, max_level="none")
JSON_BODY = {"content-type": "application/json"}


async def eventually(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while True:
            if predicate():
                return
            await anyio.sleep(0.01)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def check_matches(text: str, stats: GateStatistics, metrics: GateMetrics) -> None:
    values = samples(text)
    assert stats.devices
    for device in stats.devices:
        ledger = device.ledger
        labels = (("device", str(ledger.index)), ("gpu", ledger.gpu))
        for name in ("capacity", "free", "reserved", "others", "margin"):
            assert values[(f"vramgate_device_{name}_bytes", labels)] == getattr(ledger, f"{name}_mb") * MIB
        assert values[("vramgate_device_leases", labels)] == ledger.leases
        if device.measured_used_mb is not None:
            assert values[("vramgate_device_measured_used_bytes", labels)] == device.measured_used_mb * MIB
    assert values[("vramgate_queue_length", ())] == stats.queue_length
    assert values[("vramgate_queue_limit", ())] == stats.queue_limit
    assert values[("vramgate_running", ())] == stats.running
    assert values[("vramgate_requests_submitted_total", ())] == stats.submitted
    assert values[("vramgate_admissions_total", ())] == stats.admitted
    assert values[("vramgate_rejections_total", ())] == stats.rejected
    assert values[("vramgate_ooms_total", ())] == stats.ooms
    assert values[("vramgate_cleanups_total", ())] == stats.cleanups
    assert values[("vramgate_cleanup_freed_bytes_total", ())] == stats.cleanup_freed_mb * MIB
    for state in ("completed", "rejected", "failed", "cancelled", "timed_out"):
        assert values[("vramgate_requests_ended_total", (("state", state),))] == getattr(stats, state)
    assert values[("vramgate_wait_seconds_count", ())] == stats.admitted
    assert math.isclose(values[("vramgate_wait_seconds_sum", ())], stats.mean_wait_s * stats.admitted, abs_tol=1e-9)
    assert values[("vramgate_wait_seconds_bucket", (("le", "+Inf"),))] == stats.admitted
    assert values[("vramgate_estimate_ratio_count", ())] == metrics.estimate_ratio.count


async def test_exposition_matches_statistics_after_runs_and_a_rejection() -> None:
    async with open_gate(CONFIG) as gate:
        metrics = GateMetrics(gate)
        runner = SimulatedRun(gate.clock, time_scale=1e-4, min_seconds=0.01)
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(gate.run, SMALL, runner)
        with pytest.raises(DoesNotFit):
            await gate.run(HUGE, runner)
        await eventually(lambda: gate.statistics().completed == 4)
        stats = gate.statistics()
        text = metrics.render().decode()
        assert stats.completed == 4
        assert stats.rejected == 1
        check_matches(text, stats, metrics)
        ended = {labels: value for (name, labels), value in samples(text).items() if name.endswith("_ended_total")}
        assert ended == {
            (("state", "completed"),): 4,
            (("state", "rejected"),): 1,
            (("state", "failed"),): 0,
            (("state", "cancelled"),): 0,
            (("state", "timed_out"),): 0,
        }
        # Each simulated run peaks at 85-99% of its estimate (SimulatedRun's hidden truth).
        assert metrics.estimate_ratio.count == 4
        ratio = samples(text)
        assert ratio[("vramgate_estimate_ratio_bucket", (("le", "0.8"),))] == 0
        assert ratio[("vramgate_estimate_ratio_bucket", (("le", "1.0"),))] == 4
        assert stats.estimate_ratio_max is not None
        assert 0.85 <= stats.estimate_ratio_max <= 1.0
        assert metrics.content_type.startswith("text/plain")


async def test_server_metrics_endpoint_parses_and_matches() -> None:
    app = create_app(CONFIG, settings=ServerSettings(runner="simulated", time_scale=1e-4, min_run_s=0.01))
    async with app.router.lifespan_context(app):
        service = app.state.service
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            body = msgspec.json.encode(SMALL)
            ids = [
                (await client.post("/v1/generations", content=body, headers=JSON_BODY)).json()["request_id"]
                for _ in range(3)
            ]
            await eventually(lambda: all(service.lookup(rid).final is not None for rid in ids))
            response = await client.get("/metrics")
            assert response.status_code == 200
            stats = service.gate.statistics()
            assert stats.completed == 3
            check_matches(response.text, stats, app.state.metrics)


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram([1.0, 0.5, 2.0])
    for value in (0.1, 0.5, 0.7, 3.0, 100.0):
        histogram.observe(value)
    assert histogram.buckets() == [("0.5", 2.0), ("1.0", 3.0), ("2.0", 3.0), ("+Inf", 5.0)]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(104.3)


def test_metrics_of_two_gates_do_not_collide() -> None:
    async def main() -> list[Any]:
        texts = []
        async with open_gate(CONFIG) as first, open_gate(CONFIG) as second:
            for gate in (first, second):
                texts.append(GateMetrics(gate).render().decode())
        return texts

    texts = anyio.run(main)
    assert all("vramgate_device_capacity_bytes" in text for text in texts)
