"""Resident models and host RAM in the admission core: a request reserves its working memory plus the weights not
resident where it runs; idle models are evicted least recently used when the room is needed, and the memory
counts free once a sample shows it; host RAM is a ledger that never over-commits; snapshots keep it all."""

from __future__ import annotations

import os

import msgspec
import pytest
from admission_helpers import H100_MB, PARAMS, Driver, device_sample, h100

from vramgate.errors import HostRamDoesNotFit
from vramgate.hardware.host import HostProbe
from vramgate.messages import (
    Component,
    EvictModel,
    HostSample,
    ModelLoaded,
    ModelUnloaded,
    Plan,
    RequestAdmitted,
    RequestQueued,
    RequestRejected,
    ResourceRequirement,
    ResourceSample,
)
from vramgate.messages.admission import AdmissionSnapshot, ReleaseLease, SubmitRequest
from vramgate.messages.codec import Codec
from vramgate.policy.admission import AdmissionConfig, AdmissionCore
from vramgate.policy.host_ledger import HostLedger

EXPERT_MB = 27648  # one A14B expert in bf16
WORK_MB = 20000
BUDGET = H100_MB - 4078


def resident_plan(
    model: str = "t2v-A14B",
    *,
    weights_mb: int = EXPERT_MB,
    work_mb: int = WORK_MB,
    ram_mb: int = 2048,
    ram_weights_mb: int = 0,
    load_s: float = 0.0,
    seconds: float = 100.0,
) -> Plan:
    components = (
        Component(name="dit_weights", vram_mb=weights_mb, ram_mb=ram_weights_mb),
        Component(name="activations", vram_mb=work_mb, seconds=seconds),
        Component(name="runtime", ram_mb=ram_mb - ram_weights_mb),
    )
    requirement = ResourceRequirement(
        vram_mb=weights_mb + work_mb,
        ram_mb=ram_mb,
        estimated_time_seconds=seconds,
        components=components,
        load_time_s=load_s,
    )
    return Plan(params=msgspec.structs.replace(PARAMS, model=model), requirement=requirement)


def ask(request_id: str, plan: Plan, owner: str = "") -> SubmitRequest:
    return SubmitRequest(request_id=request_id, plans={"*": plan}, owner=owner)


def loaded(device: int = 0, model: str = "t2v-A14B", mb: int = EXPERT_MB, **kw: object) -> ModelLoaded:
    return ModelLoaded(device=device, model=model, vram_mb=mb, **kw)  # type: ignore[arg-type]


def make(devices: int = 1, **config: object) -> Driver:
    settings = AdmissionConfig(**{"stale_after_s": None, **config})  # type: ignore[arg-type]
    return Driver(AdmissionCore([h100(i) for i in range(devices)], settings))


def admitted(out: list[object]) -> list[RequestAdmitted]:
    return [e for e in out if isinstance(e, RequestAdmitted)]


def test_a_request_of_a_resident_model_reserves_only_its_working_memory() -> None:
    d = make()
    d.send(loaded(), 0.0)
    # The server's process holds the expert (torch counts it) and 1 GiB of something else is on the device.
    d.send(ResourceSample(at=0.5, devices=(device_sample(0, EXPERT_MB + 1024, ours_mb=EXPERT_MB),)), 0.5)
    (grant,) = admitted(d.send(ask("r1", resident_plan()), 1.0))
    assert grant.reservation_mb == WORK_MB
    assert grant.resident_mb == EXPERT_MB
    (device,) = d.core.statistics().devices
    assert device.others_mb == 1024  # the expert is resident, not others' use
    assert device.resident_mb == EXPERT_MB
    assert device.reserved_mb == WORK_MB
    assert device.free_mb == BUDGET - 1024 - EXPERT_MB - WORK_MB
    (model,) = device.resident
    assert (model.model, model.leases) == ("t2v-A14B", 1)


def test_without_torch_figures_declared_weights_are_still_not_others_use() -> None:
    d = make()
    d.send(loaded(), 0.0)
    d.send(ResourceSample(at=1.0, devices=(device_sample(0, EXPERT_MB + 3000),)), 1.0)
    assert d.core.statistics().devices[0].others_mb == 3000


def test_two_concurrent_requests_of_one_model_share_its_weights() -> None:
    d = make()
    d.send(loaded(), 0.0)
    first = admitted(d.send(ask("r1", resident_plan()), 1.0))
    second = admitted(d.send(ask("r2", resident_plan()), 2.0))
    assert [g.reservation_mb for g in first + second] == [WORK_MB, WORK_MB]
    device = d.core.statistics().devices[0]
    assert device.reserved_mb + device.resident_mb == EXPERT_MB + 2 * WORK_MB
    assert device.resident[0].leases == 2
    d.send(ReleaseLease(lease_id=first[0].lease_id), 3.0)
    d.send(ReleaseLease(lease_id=second[0].lease_id), 4.0)
    device = d.core.statistics().devices[0]
    assert (device.reserved_mb, device.resident_mb, device.resident[0].leases) == (0, EXPERT_MB, 0)
    assert device.resident[0].last_used == 4.0  # kept after the runs


def test_another_process_or_dtype_does_not_share_the_weights() -> None:
    d = make()
    d.send(loaded(owner="worker-2"), 0.0)
    (grant,) = admitted(d.send(ask("r1", resident_plan()), 1.0))
    assert grant.reservation_mb == EXPERT_MB + WORK_MB
    d.send(ReleaseLease(lease_id=grant.lease_id), 1.5)
    fp8 = msgspec.structs.replace(
        resident_plan(),
        params=msgspec.structs.replace(
            PARAMS, options=msgspec.structs.replace(PARAMS.options, dit_dtype="fp8"), model="t2v-A14B"
        ),
    )
    (other,) = admitted(d.send(ask("r2", fp8, owner="worker-2"), 2.0))
    assert other.reservation_mb == EXPERT_MB + WORK_MB


def test_weights_loaded_during_a_run_move_from_its_reservation_to_resident() -> None:
    d = make()
    (grant,) = admitted(d.send(ask("r1", resident_plan()), 0.0))
    assert grant.reservation_mb == EXPERT_MB + WORK_MB
    d.send(loaded(), 1.0)  # the run loaded the expert and the server keeps it
    device = d.core.statistics().devices[0]
    assert (device.reserved_mb, device.resident_mb, device.resident[0].leases) == (WORK_MB, EXPERT_MB, 1)
    (second,) = admitted(d.send(ask("r2", resident_plan()), 2.0))
    assert second.reservation_mb == WORK_MB
    assert d.core.snapshot().leases[0].reservation_mb == WORK_MB


def test_an_idle_model_is_evicted_when_the_room_is_needed_and_counts_free_once_a_sample_shows_it() -> None:
    d = make(stale_after_s=30.0)
    other = 50000
    d.send(ResourceSample(at=0.0, devices=(device_sample(0, 0, ours_mb=0),)), 0.0)
    d.send(loaded(model="ti2v-5B", mb=other), 0.0)
    d.send(ResourceSample(at=1.0, devices=(device_sample(0, other, ours_mb=other),)), 1.0)
    out = d.send(ask("r1", resident_plan()), 2.0)  # needs 47,648 MiB; 77,481 - 50,000 are free
    (order,) = [e for e in out if isinstance(e, EvictModel)]
    assert (order.device, order.model, order.vram_mb, order.for_request) == (0, "ti2v-5B", other, "r1")
    assert any(isinstance(e, RequestQueued) for e in out)
    assert d.core.statistics().evictions == 1
    assert not [
        e
        for e in d.send(ResourceSample(at=2.5, devices=(device_sample(0, other, ours_mb=other),)), 2.5)
        if isinstance(e, EvictModel)
    ]  # ordered once
    out = d.send(ModelUnloaded(device=0, model="ti2v-5B", reason="evicted"), 3.0)
    assert not admitted(out)  # the memory is not free until a sample shows it
    device = d.core.statistics().devices[0]
    assert (device.resident_mb, device.unloading_mb) == (0, other)
    (grant,) = admitted(d.send(ResourceSample(at=3.5, devices=(device_sample(0, 0, ours_mb=0),)), 3.5))
    assert grant.request_id == "r1"
    assert d.core.statistics().devices[0].unloading_mb == 0


def test_the_least_recently_used_idle_model_goes_first_and_models_in_use_stay() -> None:
    d = make()
    d.send(loaded(model="a", mb=20000), 0.0)
    d.send(loaded(model="b", mb=20000), 1.0)
    d.send(loaded(model="c", mb=20000), 2.0)
    (busy,) = admitted(d.send(ask("use-a", resident_plan("a", weights_mb=20000, work_mb=1000)), 3.0))
    d.send(ReleaseLease(lease_id=busy.lease_id), 4.0)  # a is now the most recently used
    (running,) = admitted(d.send(ask("use-b", resident_plan("b", weights_mb=20000, work_mb=1000)), 5.0))
    # Free: 77,481 - 60,000 resident - 1,000 = 16,481; a 30,000 MiB request needs 13,519 more: one model.
    out = d.send(ask("big", resident_plan("d", weights_mb=20000, work_mb=10000)), 6.0)
    assert [e.model for e in out if isinstance(e, EvictModel)] == ["c"]  # not b (in use), not a (used later)
    assert running.reservation_mb == 1000


def test_nothing_is_evicted_when_it_would_not_make_room() -> None:
    d = make()
    d.send(loaded(model="a", mb=20000), 0.0)
    admitted(d.send(ask("use-a", resident_plan("a", weights_mb=20000, work_mb=50000)), 1.0))
    out = d.send(ask("big", resident_plan("d", weights_mb=30000, work_mb=10000)), 2.0)
    assert not [e for e in out if isinstance(e, EvictModel)]


def test_placement_prefers_the_device_where_the_model_is_warm() -> None:
    d = make(devices=2)
    d.send(loaded(device=1), 0.0)
    (grant,) = admitted(d.send(ask("r1", resident_plan(load_s=40.0)), 1.0))
    assert grant.devices == (1,)
    lease = d.core.snapshot().leases[0]
    assert lease.reservation_mb == WORK_MB


def test_host_ram_is_reserved_and_never_over_committed() -> None:
    d = make(devices=2, host_ram_mb=65536, host_margin_mb=1024)
    first = admitted(d.send(ask("r1", resident_plan(ram_mb=40000)), 0.0))
    out = d.send(ask("r2", resident_plan(ram_mb=40000)), 1.0)
    assert [g.ram_mb for g in first] == [40000]
    assert not admitted(out)  # a whole H100 is free, but the host is not
    (queued,) = [e for e in out if isinstance(e, RequestQueued)]
    assert queued.request_id == "r2"
    host = d.core.statistics().host
    assert host is not None
    assert (host.capacity_mb, host.reserved_mb, host.free_mb) == (65536, 40000, 65536 - 1024 - 40000)
    (grant,) = admitted(d.send(ReleaseLease(lease_id=first[0].lease_id), 2.0))
    assert (grant.request_id, grant.ram_mb) == ("r2", 40000)


def test_a_request_that_can_never_fit_host_ram_is_rejected_with_what_it_needs() -> None:
    d = make(host_ram_mb=32768)
    out = d.send(ask("r1", resident_plan(ram_mb=40000)), 0.0)
    (rejected,) = [e for e in out if isinstance(e, RequestRejected)]
    assert rejected.code == "host_ram_does_not_fit"
    assert rejected.needed_ram_mb == 40000
    assert rejected.available_ram_mb == 32768 - 1639  # the default margin: 5 %, rounded up
    assert "host RAM" in rejected.reason
    assert d.ended["r1"].state == "rejected"


def host_sample(used_mb: int, rss_mb: int | None, total_mb: int = 131072) -> HostSample:
    return HostSample(
        ram_total_mb=total_mb,
        ram_available_mb=total_mb - used_mb,
        ram_used_mb=used_mb,
        swap_total_mb=0,
        swap_used_mb=0,
        cpu_count=16,
        process_rss_mb=rss_mb,
    )


def test_host_samples_tell_this_process_reservations_from_others_use() -> None:
    d = make()
    (grant,) = admitted(d.send(ask("r1", resident_plan(ram_mb=30000)), 0.0))
    d.send(loaded(ram_mb=8000), 0.0)  # offloaded weights the process keeps in RAM
    # Others hold 10,000; the process 8,000 resident and 25,000 of the lease's 30,000.
    d.send(ResourceSample(at=1.0, host=host_sample(10000 + 33000, rss_mb=33000)), 1.0)
    host = d.core.statistics().host
    assert host is not None
    assert (host.capacity_mb, host.resident_mb, host.others_mb) == (131072, 8000, 10000)
    # The run grew 3,000 past its reservation: that counts against the host as others' use while it lasts.
    d.send(ResourceSample(at=2.0, host=host_sample(10000 + 41000, rss_mb=41000)), 2.0)
    host = d.core.statistics().host
    assert host is not None
    assert host.others_mb == 13000
    assert grant.ram_mb == 30000


def test_a_host_sample_without_the_process_figure_counts_all_but_resident_as_others() -> None:
    d = make()
    d.send(loaded(ram_mb=8000), 0.0)
    d.send(ResourceSample(at=1.0, host=host_sample(20000, rss_mb=None)), 1.0)
    host = d.core.statistics().host
    assert host is not None
    assert host.others_mb == 12000


def test_idle_models_host_ram_is_evicted_when_host_ram_is_short() -> None:
    d = make(host_ram_mb=65536, host_margin_mb=0)
    d.send(ResourceSample(at=0.0, host=host_sample(0, rss_mb=0, total_mb=65536)), 0.0)
    d.send(loaded(model="a", mb=1000, ram_mb=40000), 0.0)
    out = d.send(ask("r1", resident_plan("b", weights_mb=1000, work_mb=1000, ram_mb=30000)), 1.0)
    assert [e.model for e in out if isinstance(e, EvictModel)] == ["a"]
    d.send(ModelUnloaded(device=0, model="a"), 2.0)
    (grant,) = admitted(d.send(ResourceSample(at=3.0, host=host_sample(0, rss_mb=0, total_mb=65536)), 3.0))
    assert grant.ram_mb == 30000


def test_a_snapshot_keeps_resident_models_and_the_leases_that_use_them() -> None:
    d = make(host_ram_mb=65536)
    d.send(loaded(ram_mb=4000), 0.0)
    d.send(loaded(model="other", mb=5000), 0.5)
    (grant,) = admitted(d.send(ask("r1", resident_plan(ram_mb=10000, ram_weights_mb=4000)), 1.0))
    assert grant.ram_mb == 6000
    snapshot = d.core.snapshot(now=1.0)
    codec = Codec(AdmissionSnapshot)
    decoded = codec.decode_json(codec.encode_json(snapshot))
    fresh = Driver(AdmissionCore([h100(0)], AdmissionConfig(stale_after_s=None, host_ram_mb=65536)))
    fresh.core.restore(decoded, 2.0)
    fresh.core.check_invariants()
    assert fresh.core.statistics().devices == d.core.statistics().devices
    assert fresh.core.statistics().host == d.core.statistics().host
    assert fresh.core.snapshot(now=1.0) == snapshot
    (second,) = admitted(fresh.send(ask("r2", resident_plan(ram_mb=10000, ram_weights_mb=4000)), 3.0))
    assert (second.reservation_mb, second.ram_mb) == (WORK_MB, 6000)


def test_a_real_host_sample_bounds_the_host_ledger_by_this_machine_ram() -> None:
    reading = HostProbe(os.getcwd()).sample()
    assert reading.host is not None
    book = HostLedger()
    assert book.free_mb(0.0) > reading.host.ram_total_mb  # unknown: it bounds nothing yet
    book.observe(reading.host, 1.0)
    assert book.capacity_mb == reading.host.ram_total_mb
    assert book.others_mb <= reading.host.ram_used_mb
    free = book.free_mb(1.0)
    assert free == max(0, book.capacity_mb - book.margin_mb - book.others_mb)
    book.reserve("lease-1", free, 1.0)
    with pytest.raises(HostRamDoesNotFit) as caught:
        book.reserve("lease-2", 1, 1.0)
    assert (caught.value.needed_ram_mb, caught.value.available_ram_mb) == (1, 0)
