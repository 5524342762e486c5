"""Property: whatever clients do (submit, cancel at any await, fail, finish), while outside consumers come and go,
samples go stale, devices are lost and the server loads and unloads resident models (and carries out
evictions), the gate never over-commits a device or the host's RAM, leaks no lease or resident entry, ends every
request in exactly one terminal state, and never wedges: nothing waits while a device that could take it sits
idle (or idle but for models it may evict), and no request waits for memory that never comes free."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vramgate.clock import ManualClock
from vramgate.config import AdmissionSettings, CleanupConfig, DevicesConfig, GateConfig, MonitorConfig
from vramgate.errors import VramgateError
from vramgate.gate import Gate, open_gate
from vramgate.hardware import SimulatedOutOfMemory, detect
from vramgate.hardware.simulated import SimulatedGpu
from vramgate.messages import (
    EvictModel,
    GenerationRequest,
    LeaseReleased,
    LeaseShrunk,
    Message,
    RequestAdmitted,
    RequestEnded,
    RunOptions,
)
from vramgate.policy.ledger import default_margin_mb

pytestmark = pytest.mark.anyio

REQUESTS = (
    GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=121, steps=50),
    GenerationRequest(model="t2v-A14B", width=832, height=480, frames=81, steps=40),
    GenerationRequest(model="t2v-A14B", width=1280, height=720, frames=81, steps=40),
    GenerationRequest(model="i2v-A14B", width=832, height=480, frames=81, steps=40, max_wait_s=3.0),
    # Within a 4090's capacity less its margin, but not beside its CUDA context: it can never be admitted there.
    GenerationRequest(
        model="ti2v-5B", width=672, height=672, frames=125, steps=10, max_level="none", options=RunOptions(t5_cpu=True)
    ),
    GenerationRequest(model="ti2v-5B", width=832, height=480, frames=17, steps=4),
)

#: What a server holds of each model once loaded: the estimator's weights of a ti2v-5B plan, one A14B expert.
RESIDENT_MB = {"ti2v-5B": 23_060, "t2v-A14B": 27_648}

operations = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, len(REQUESTS) - 1), st.integers(-5, 5)),
    st.tuples(st.just("cancel"), st.integers(0, 15), st.just(0)),
    st.tuples(st.just("finish"), st.integers(0, 15), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("outside"), st.integers(0, 1), st.integers(0, 30_000)),
    st.tuples(st.just("advance"), st.integers(1, 40), st.just(0)),
    st.tuples(st.just("lose"), st.integers(0, 1), st.just(0)),
    # the server loads (or unloads) the weights of one of the requests' models on a device
    st.tuples(st.just("load"), st.integers(0, 1), st.sampled_from(list(RESIDENT_MB))),
    st.tuples(st.just("unload"), st.integers(0, 1), st.sampled_from(list(RESIDENT_MB))),
)


@dataclass
class Client:
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    how: int = 0
    state: str = "new"


@dataclass
class Ledger:
    """The test's own account of granted reservations, from the gate's events."""

    active: dict[str, tuple[tuple[int, ...], int]] = field(default_factory=dict)
    ram: dict[str, int] = field(default_factory=dict)
    ended: dict[str, list[str]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def __call__(self, event: Message) -> None:
        if isinstance(event, RequestAdmitted | LeaseShrunk):
            self.active[event.lease_id] = (event.devices, event.reservation_mb)
            self.ram[event.lease_id] = event.ram_mb
        elif isinstance(event, LeaseReleased):
            self.ram.pop(event.lease_id, None)
            if self.active.pop(event.lease_id, None) is None:
                self.violations.append(f"released unknown lease {event.lease_id}")
        elif isinstance(event, RequestEnded):
            self.ended.setdefault(event.request_id, []).append(event.state)


def _check(gate: Gate, ledger: Ledger) -> None:
    admission = gate.admission_core
    assert admission is not None
    admission.check_invariants()
    stats = gate.statistics()
    devices = [d.ledger for d in stats.devices]
    # Eviction under way: a request may wait for what is being ordered out, or unloaded and not yet sampled.
    evicting = any(m.evicting for d in devices for m in d.resident) or any(d.unloading_mb for d in devices)
    # A request may also wait for host RAM, beside an idle device.
    host_free = None if stats.host is None or stats.host.capacity_mb is None else stats.host.free_mb
    for ticket in gate.tickets():
        if ticket.state != "queued" or ticket.plan is None:
            continue
        need = ticket.plan.requirement.vram_mb
        # No wedge: what it waits for can come free on some device of its plan's GPU ...
        mine = [d for d in devices if d.gpu == ticket.plan.gpu]
        assert any(need <= d.capacity_mb - d.margin_mb - d.permanent_mb for d in mine), (
            f"{ticket.request_id} waits for {need} MiB that never comes free"
        )
        # ... and it does not wait while such a device that admits sits idle with room for it, or with room once
        # the idle resident models there are evicted (unless an eviction is under way).
        for d in mine:
            idle_models = sum(m.vram_mb for m in d.resident if m.leases == 0 and m.evictable)
            short_of_ram = host_free is not None and ticket.plan.requirement.ram_mb > host_free
            roomy = need <= d.free_mb + idle_models and not (evicting and need > d.free_mb)
            assert d.leases or d.blocked or short_of_ram or not roomy, (
                f"{ticket.request_id} waits for {need} MiB while device {d.index} is idle with {d.free_mb} MiB free"
                f" and {idle_models} MiB of idle models"
            )
    for device in gate.device_configs:
        reserved = sum(mb for devices, mb in ledger.active.values() if device.index in devices)
        assert reserved + device.effective_margin_mb <= device.capacity_mb, f"over-commit on {device.index}"
    for device_stats in stats.devices:
        ledger_stats = device_stats.ledger
        assert ledger_stats.reserved_mb == sum(
            mb for devices, mb in ledger.active.values() if ledger_stats.index in devices
        )
    # Host RAM: never over-committed, and the ledger holds exactly what the running leases were granted.
    host = stats.host
    assert host is not None
    assert host.reserved_mb == sum(ledger.ram.values())
    if host.capacity_mb is not None:
        assert host.reserved_mb + host.margin_mb <= host.capacity_mb, "host RAM over-committed"
    # No leaked resident entry: admission holds what the server declared, each used by running leases only.
    declared = {(m.device, m.model) for m in gate.residency.declared}
    assert {(m.device, m.model) for d in devices for m in d.resident} == declared
    assert sum(m.leases for d in devices for m in d.resident) <= len(ledger.active)


async def _client(gate: Gate, client: Client, request: GenerationRequest) -> None:
    with client.scope:
        try:
            client.state = "waiting"
            async with gate.admit(request) as lease:
                client.state = "running"
                device = lease.simulated
                assert device is not None
                with contextlib.suppress(SimulatedOutOfMemory):  # others may have grown since admission
                    device.allocate(lease.lease_id, int(lease.reservation_mb * 0.9))
                try:
                    await client.done.wait()
                    if client.how == 1:
                        raise RuntimeError("the run crashed")
                    if client.how == 2:
                        raise SimulatedOutOfMemory(
                            device=lease.device, owner=lease.lease_id, requested_mb=1, free_mb=0, total_mb=1
                        )
                finally:
                    device.free(lease.lease_id)
        except (VramgateError, RuntimeError):
            pass
    client.state = "done"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The server loads the model of a running lease where it runs: the lease shrinks to its working memory.
@example(
    gpus=("RTX4090-24GB", "H100-80GB"),
    ram_budget="256GiB",
    ops=[("submit", 0, 0), ("cancel", 0, 0), ("submit", 0, 0), ("cancel", 0, 0), ("load", 1, "ti2v-5B")],
)
@given(
    gpus=st.sampled_from([("RTX4090-24GB", "H100-80GB"), ("RTX4090-24GB",)]),
    ram_budget=st.sampled_from(["256GiB", "48GiB"]),
    ops=st.lists(operations, min_size=1, max_size=30),
)
async def test_gate_never_over_commits_nor_wedges(
    gpus: tuple[str, ...], ram_budget: str, ops: list[tuple[str, int, int | str]]
) -> None:
    clock = ManualClock()
    devices = detect(gpus, nvml=False, torch=False, host=False, clock=clock)
    config = GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=0.5),
        admission=AdmissionSettings(ram_budget=ram_budget, queue_limit=8, stale_after_s=2.0),
        cleanup=CleanupConfig(after_run=False),
    )
    ledger = Ledger()
    clients: list[Client] = []

    def evict(order: EvictModel) -> None:  # the server unloads what admission orders out
        devices.simulated[order.device].free(f"resident:{order.model}")

    async with open_gate(config, clock=clock, devices=devices, on_evict=evict) as gate:
        gate.add_listener(ledger)
        async with anyio.create_task_group() as tg:
            for op, a, b in ops:
                model = b if isinstance(b, str) else ""
                if op == "submit":
                    client = Client()
                    clients.append(client)
                    request = REQUESTS[a].__class__(**{**_fields(REQUESTS[a]), "priority": b})
                    tg.start_soon(_client, gate, client, request)
                elif op == "cancel" and a < len(clients):
                    clients[a].scope.cancel()
                elif op == "finish" and a < len(clients):
                    clients[a].how = b
                    clients[a].done.set()
                elif op == "outside":
                    sim = devices.simulated[a % len(gpus)]
                    sim.remove_outside("other")
                    if not sim.lost and b <= sim.free_mb:
                        sim.add_outside("other", b)
                elif op == "advance":
                    clock.advance(a / 10)
                elif op == "lose":
                    devices.simulated[a % len(gpus)].lose()
                elif op == "load":
                    await _load(gate, devices.simulated[a % len(gpus)], model)
                elif op == "unload":
                    sim = devices.simulated[a % len(gpus)]
                    if await gate.declare_unloaded(model, device=sim.index):
                        sim.free(f"resident:{model}")
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                await gate.wait_idle()
                _check(gate, ledger)
            for client in clients:
                client.scope.cancel()
        await gate.wait_idle()
        _check(gate, ledger)
        for loaded in gate.residency.declared:
            await gate.declare_unloaded(loaded.model, device=loaded.device)
        await gate.wait_idle()
        assert all(stats.ledger.resident == () for stats in gate.statistics().devices)
        assert not ledger.violations
        assert ledger.active == {}
        assert all(stats.ledger.reserved_mb == 0 for stats in gate.statistics().devices)
        assert gate.statistics().tickets == 0
    assert len(ledger.ended) == len(clients)
    assert all(len(states) == 1 for states in ledger.ended.values()), ledger.ended


async def _load(gate: Gate, sim: SimulatedGpu, model: str) -> None:
    """The server loads ``model`` on ``sim`` when it fits there and is not loaded yet, and declares it."""
    mb = RESIDENT_MB[model]
    owner = f"resident:{model}"
    if sim.lost or any(m.model == model and m.device == sim.index for m in gate.residency.declared):
        return
    if mb > sim.free_mb - default_margin_mb(sim.total_mb):
        return
    sim.allocate(owner, mb)
    await gate.declare_loaded(model, device=sim.index, vram_mb=mb)


def _fields(request: GenerationRequest) -> dict[str, object]:
    import msgspec

    return msgspec.structs.asdict(request)
