"""The gate's resident models and host RAM, end to end: real actors and admission core, simulated GPUs, the real
host sampled with psutil, on asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import msgspec
import psutil
import pytest

from vramgate.clock import ManualClock
from vramgate.config import AdmissionSettings, CleanupConfig, DevicesConfig, GateConfig, MonitorConfig
from vramgate.errors import DecodeError, HostRamDoesNotFit, InvalidParameter, UnknownModel
from vramgate.gate import Gate, open_gate
from vramgate.hardware import SimulatedGpu, detect
from vramgate.messages import EvictModel, GenerationRequest
from vramgate.policy._resident import weights_mb
from vramgate.policy.ledger import default_margin_mb

pytestmark = pytest.mark.anyio

SMALL = GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=121, steps=50)


def _config(ram_budget: str = "256GiB") -> GateConfig:
    return GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=0.05),
        admission=AdmissionSettings(ram_budget=ram_budget),
        cleanup=CleanupConfig(after_run=False),
    )


@asynccontextmanager
async def _gate(
    gpus: tuple[str, ...] = ("H100-80GB",),
    *,
    ram_budget: str = "256GiB",
    on_evict: Callable[[EvictModel], None] | None = None,
) -> AsyncIterator[tuple[Gate, list[SimulatedGpu], ManualClock]]:
    clock = ManualClock()
    devices = detect(gpus, nvml=False, torch=False, clock=clock)
    async with open_gate(_config(ram_budget), clock=clock, devices=devices, on_evict=on_evict) as gate:
        yield gate, list(devices.simulated), clock


async def _until(clock: ManualClock, condition: Callable[[], object]) -> None:
    """Let time pass (the monitor samples) until ``condition()`` holds (at most 5 s of real time)."""
    with anyio.fail_after(5):
        while not condition():
            clock.advance(0.05)
            await anyio.sleep(0.001)


async def test_two_runs_of_a_declared_model_share_its_weights_and_run_together() -> None:
    async with _gate() as (gate, (gpu,), clock):
        plan_weights = 9536 + 10834 + 2690  # ti2v-5B's DiT, text encoder and VAE as the estimator prices them
        gpu.allocate("pipeline", plan_weights)  # the server loaded the model
        await gate.declare_loaded(
            "TI2V-5B", device=0, vram_mb=plan_weights, components=("transformer", "text_encoder", "vae")
        )
        await _until(clock, lambda: gate.statistics().devices[0].ledger.resident_mb == plan_weights)
        first_ticket = await gate.submit(SMALL)
        second_ticket = await gate.submit(SMALL)
        first = await first_ticket.wait_admitted()
        with anyio.fail_after(5):
            second = await second_ticket.wait_admitted()  # both at once: 2 x 43,595 MiB would not fit an H100
        for lease in (first, second):
            assert weights_mb(lease.plan) == plan_weights
            assert lease.reservation_mb == lease.plan.requirement.vram_mb - plan_weights
        ledger = gate.statistics().devices[0].ledger
        assert ledger.reserved_mb == first.reservation_mb + second.reservation_mb
        assert ledger.others_mb < 1024  # the loaded weights are resident, not others' use
        (model,) = ledger.resident
        assert (model.model, model.vram_mb, model.leases, model.evictable) == ("ti2v-5B", plan_weights, 2, False)
        async with gate.hold(first), gate.hold(second):
            pass
        await gate.wait_idle()
        (model,) = gate.statistics().devices[0].ledger.resident
        assert model.leases == 0  # kept after the runs


async def test_an_idle_model_is_evicted_through_the_server_callback_to_make_room() -> None:
    orders: list[EvictModel] = []
    gpus: list[SimulatedGpu] = []

    def unload(order: EvictModel) -> None:
        orders.append(order)
        gpus[order.device].free("a14b-expert")

    async with _gate(on_evict=unload) as (gate, devices, clock):
        gpus.extend(devices)
        devices[0].allocate("a14b-expert", 50_000)
        await gate.declare_loaded("t2v-A14B", device=0, vram_mb=50_000)
        await _until(clock, lambda: gate.statistics().devices[0].ledger.resident_mb == 50_000)
        ticket = await gate.submit(SMALL)  # 43,595 MiB; 27,481 are free beside the idle expert
        await _until(clock, lambda: ticket.lease is not None)
        assert [(o.model, o.vram_mb, o.for_request) for o in orders] == [("t2v-A14B", 50_000, ticket.request_id)]
        assert ticket.lease is not None
        assert ticket.lease.reservation_mb == ticket.lease.plan.requirement.vram_mb  # nothing of it was resident
        stats = gate.statistics()
        assert stats.devices[0].ledger.resident == ()
        assert gate.residency.evicted == 1
        async with gate.hold(ticket.lease):
            pass


async def test_host_ram_is_a_ledger_runs_wait_for_it_beside_a_free_gpu() -> None:
    memory = psutil.virtual_memory()
    used = (memory.total - memory.available) >> 20
    one_run = 11808  # ti2v-5B's host RAM as the estimator prices it
    capacity = used + default_margin_mb(used + 2 * one_run) + one_run + 6000
    async with _gate(("H100-80GB", "H100-80GB"), ram_budget=f"{capacity}MiB") as (gate, _, clock):
        first = await (await gate.submit(SMALL)).wait_admitted()
        assert first.plan.requirement.ram_mb == one_run
        ticket = await gate.submit(SMALL)
        await gate.wait_idle()
        clock.advance(0.05)
        await gate.wait_idle()
        assert ticket.state == "queued"  # a whole H100 is free, but the host's RAM is not
        host = gate.statistics().host
        assert host is not None
        assert host.capacity_mb == capacity
        assert host.reserved_mb == one_run
        async with gate.hold(first):
            pass
        await _until(clock, lambda: ticket.lease is not None)
        assert ticket.lease is not None
        async with gate.hold(ticket.lease):
            pass


async def test_bad_declarations_are_typed_errors_and_declare_nothing() -> None:
    async with _gate() as (gate, _, clock):
        with pytest.raises(UnknownModel):
            await gate.declare_loaded("no-such-model", device=0, vram_mb=1000)
        with pytest.raises(InvalidParameter, match="device"):
            await gate.declare_loaded("ti2v-5B", device=3, vram_mb=1000)
        with pytest.raises(DecodeError) as caught:
            await gate.declare_loaded("ti2v-5B", device=0, vram_mb=-5)
        assert caught.value.path == "$.vram_mb"
        with pytest.raises(InvalidParameter, match="dtype"):
            await gate.declare_loaded("ti2v-5B", device=0, vram_mb=1000, dtype="int4")  # type: ignore[arg-type]
        assert not await gate.declare_unloaded("ti2v-5B", device=0)
        await gate.wait_idle()
        clock.advance(0.05)
        await gate.wait_idle()
        assert gate.statistics().devices[0].ledger.resident == ()
        assert gate.residency.declared == ()


async def test_a_run_the_host_can_never_hold_is_rejected_naming_host_ram() -> None:
    # The optimizer plans within the 12,000 MiB budget; the host ledger keeps its margin (and others' use) free.
    async with _gate(ram_budget="12000MiB") as (gate, _, _clock):
        ticket = await gate.submit(SMALL)
        with anyio.fail_after(5), pytest.raises(HostRamDoesNotFit) as caught:
            await ticket.wait_admitted()
        assert caught.value.needed_ram_mb == 11808
        assert caught.value.available_ram_mb is not None
        assert caught.value.available_ram_mb <= 12000 - default_margin_mb(12000) < 11808
        assert ticket.rejected is not None
        assert ticket.rejected.code == "host_ram_does_not_fit"
        assert "host RAM" in ticket.rejected.reason


async def test_metrics_and_the_devices_endpoint_show_resident_models_and_host_ram() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from vramgate.metrics import MIB, GateMetrics

    async with _gate(ram_budget="64GiB") as (gate, (gpu,), clock):
        gpu.allocate("pipeline", 23_060)
        await gate.declare_loaded("ti2v-5B", device=0, vram_mb=23_060, ram_mb=512)
        await _until(clock, lambda: gate.statistics().devices[0].ledger.resident_mb == 23_060)
        values = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(GateMetrics(gate).render().decode())
            for sample in family.samples
        }
        device = (("device", "0"), ("gpu", "H100-80GB"))
        assert values[("vramgate_device_resident_bytes", device)] == 23_060 * MIB
        labels = tuple(sorted((*device, ("model", "ti2v-5B"), ("owner", ""), ("dtype", "bf16"))))
        assert values[("vramgate_resident_model_bytes", labels)] == 23_060 * MIB
        assert values[("vramgate_host_ram_capacity_bytes", ())] == 65536 * MIB
        assert values[("vramgate_host_ram_resident_bytes", ())] == 512 * MIB
        assert values[("vramgate_evictions_total", ())] == 0


async def test_the_devices_endpoint_shows_resident_models_and_the_host_ledger() -> None:
    import httpx

    from vramgate.server import ServerSettings, create_app

    config = GateConfig(
        devices=DevicesConfig(use_real_gpus=False, simulate=("H100-80GB",)),
        monitor=MonitorConfig(interval_s=0.02),
        admission=AdmissionSettings(ram_budget="64GiB"),
    )
    app = create_app(config, settings=ServerSettings(runner="simulated", time_scale=1e-4, min_run_s=0.02))
    async with app.router.lifespan_context(app):
        gate = app.state.service.gate
        await gate.declare_loaded("ti2v-5B", device=0, vram_mb=23_060, ram_mb=512)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            with anyio.fail_after(5):
                while True:
                    body = (await client.get("/v1/devices")).json()
                    if body["devices"][0]["ledger"]["resident"]:
                        break
                    await anyio.sleep(0.01)
    ledger = body["devices"][0]["ledger"]
    assert ledger["resident_mb"] == 23_060
    assert [(m["model"], m["vram_mb"], m["leases"]) for m in ledger["resident"]] == [("ti2v-5B", 23_060, 0)]
    assert body["host"]["capacity_mb"] == 65536
    assert body["host"]["resident_mb"] == 512


async def test_a_recorded_run_with_loads_evictions_and_host_ram_replays_identically(tmp_path: Path) -> None:
    from vramgate.replay import read_log, replay

    log = tmp_path / "resident.jsonl"
    gpus: list[SimulatedGpu] = []

    def unload(order: EvictModel) -> None:
        gpus[order.device].free("expert")

    clock = ManualClock()
    devices = detect(("H100-80GB",), nvml=False, torch=False, clock=clock)
    config = msgspec.structs.replace(_config("64GiB"), log_path=str(log))
    async with open_gate(config, clock=clock, devices=devices, on_evict=unload) as gate:
        gpus.extend(devices.simulated)
        gpus[0].allocate("expert", 50_000)
        await gate.declare_loaded("t2v-A14B", device=0, vram_mb=50_000, ram_mb=1024)
        first = await gate.submit(SMALL)  # needs the expert out
        second = await gate.submit(SMALL)
        await _until(clock, lambda: first.lease is not None)
        assert first.lease is not None
        async with gate.hold(first.lease):
            pass
        await _until(clock, lambda: second.lease is not None)
        assert second.lease is not None
        async with gate.hold(second.lease):
            pass
        await gate.wait_idle()
    _, records = read_log(log)
    kinds = {type(record.message).__name__ for record in records}
    assert {"ModelLoaded", "EvictModel", "ModelUnloaded"} <= kinds
    result = replay(log)
    assert result.identical, result.divergence
    assert result.outputs > 0
