"""Snapshot and restore: a new core rebuilt from a snapshot holds the same leases and queue and then decides
exactly as the original would; restored memory is never granted twice; bad snapshots are typed errors."""

from __future__ import annotations

import random

import msgspec
import pytest
from admission_helpers import H100_MB, Driver, h100, plan, sample, submit
from hypothesis import given, settings
from hypothesis import strategies as st

from vramgate.errors import InvalidParameter
from vramgate.messages import Message, RequestAdmitted, RequestEnded, RequestQueued
from vramgate.messages.admission import (
    AdmissionSnapshot,
    AdmissionTick,
    CancelRequest,
    LeaseSnapshot,
    ReleaseLease,
)
from vramgate.messages.codec import Codec
from vramgate.policy._placement import groups_of, place, place_groups
from vramgate.policy.admission import AdmissionConfig, AdmissionCore

CONFIG = AdmissionConfig(stale_after_s=None, aging_per_s=0.5)
BUDGET_H100 = H100_MB - 4078  # an H100's capacity less its default margin


def core(devices: int = 2, config: AdmissionConfig = CONFIG) -> AdmissionCore:
    return AdmissionCore([h100(i) for i in range(devices)], config)


def busy_driver() -> Driver:
    """Two H100s with three leases and five waiting requests (priorities, a deadline, a two-GPU plan)."""
    d = Driver(core())
    d.send(submit("a", 50000, seconds=100.0), 0.0)
    d.send(submit("b", 40000, seconds=300.0), 1.0)
    d.send(submit("c", 30000, seconds=50.0), 2.0)
    d.send(submit("w1", 60000, seconds=20.0), 3.0)
    d.send(submit("w2", 35000, seconds=500.0, priority=3), 4.0)
    d.send(submit("w3", 30000, seconds=10.0, max_wait_s=80.0), 5.0)
    d.send(submit("w4", 30000, seconds=30.0, world=2), 6.0)
    d.send(submit("w5", 1000, seconds=900.0, priority=-2), 7.0)
    return d


def test_a_snapshot_names_the_leases_and_the_queue_in_order() -> None:
    d = busy_driver()
    snap = d.core.snapshot(10.0)
    running = list(d.admitted)
    assert running[:3] == ["a", "b", "c"]
    assert [lease.request_id for lease in snap.leases] == running
    assert [lease.lease_id for lease in snap.leases] == [f"lease-{i}" for i in range(1, len(running) + 1)]
    assert [lease.reservation_mb for lease in snap.leases] == [d.admitted[r].reservation_mb for r in running]
    waiting = [m.request_id for m in snap.waiting]
    assert len(waiting) >= 3
    assert set(waiting) | set(running) == {"a", "b", "c", "w1", "w2", "w3", "w4", "w5"}
    assert [d.core.queue_position(r) for r in waiting] == list(range(1, len(waiting) + 1))
    assert all(m.arrival is not None for m in snap.waiting)
    assert snap.lease_counter == len(running)
    assert snap.taken_at == 10.0


def test_restore_rebuilds_the_same_state_and_the_same_decisions_after() -> None:
    original = busy_driver()
    before = set(original.admitted)
    codec = Codec(AdmissionSnapshot)
    snap = codec.decode_json(codec.encode_json(original.core.snapshot(10.0)))  # it survives the wire
    restored = Driver(core())
    assert restored.core.restore(snap, 10.0) == []
    restored.core.check_invariants()
    a, b = original.core.statistics(), restored.core.statistics()
    assert [dev.reserved_mb for dev in a.devices] == [dev.reserved_mb for dev in b.devices]
    assert (a.queue_length, a.running) == (b.queue_length, b.running)
    for rid in ("w1", "w2", "w3", "w4", "w5"):
        assert original.core.queue_position(rid) == restored.core.queue_position(rid)
    # From here both get the same messages and must say the same things (lease ids go on from lease-3).
    script: list[tuple[Message, float]] = [
        (ReleaseLease(lease_id="lease-3"), 52.0),
        (submit("n1", 5000, seconds=5.0), 53.0),
        (AdmissionTick(), 90.0),  # w3's wait expires at 85
        (ReleaseLease(lease_id="lease-1"), 101.0),
        (CancelRequest(request_id="w5"), 102.0),
        (ReleaseLease(lease_id="lease-2"), 301.0),
    ]
    for message, now in script:
        assert original.send(message, now) == restored.send(message, now), message
    assert set(original.admitted) - before == set(restored.admitted)
    assert len(restored.admitted) >= 2
    assert {e.lease_id for e in restored.admitted.values()}.isdisjoint({"lease-1", "lease-2", "lease-3"})
    assert restored.ended["w3"].state == "timed_out"


def test_a_restored_lease_releases_like_any_other() -> None:
    d = Driver(core(devices=1))
    lease = LeaseSnapshot(
        lease_id="lease-7", request_id="r", devices=(0,), reservation_mb=30000, plan=plan(30000), admitted_at=5.0
    )
    d.core.restore(AdmissionSnapshot(leases=(lease,)), 6.0)
    assert d.core.lease_of("r") == "lease-7"
    assert d.core.statistics().devices[0].reserved_mb == 30000
    out = d.send(ReleaseLease(lease_id="lease-7"), 7.0)
    assert [type(e).__name__ for e in out] == ["LeaseReleased", "RequestEnded"]
    assert d.ended["r"].state == "completed"
    [admitted] = [e for e in d.send(submit("next", 1000), 8.0) if isinstance(e, RequestAdmitted)]
    assert admitted.lease_id == "lease-8"  # numbered past the restored lease


def test_restored_memory_is_never_granted_twice_even_past_the_budget() -> None:
    d = Driver(core(devices=1))
    leases = tuple(
        LeaseSnapshot(
            lease_id=f"lease-{i}",
            request_id=f"r{i}",
            devices=(0,),
            reservation_mb=BUDGET_H100 // 2 + 1000,
            plan=plan(BUDGET_H100 // 2 + 1000),
            admitted_at=0.0,
        )
        for i in (1, 2)
    )
    d.core.restore(AdmissionSnapshot(leases=leases), 1.0)  # more than the device can give: it is in use already
    assert d.core.statistics().devices[0].free_mb == 0
    assert not [e for e in d.send(submit("small", 1000), 2.0) if isinstance(e, RequestAdmitted)]
    d.send(ReleaseLease(lease_id="lease-1"), 3.0)
    assert "small" in d.admitted


def test_with_the_staleness_check_a_restored_core_waits_for_a_fresh_sample() -> None:
    original = Driver(core(devices=1, config=AdmissionConfig(stale_after_s=10.0)))
    original.send(sample(0.0, {0: 0}, ours={0: 0}), 0.0)
    original.send(submit("run", 40000, seconds=100.0), 0.0)
    original.send(submit("wait", 40000, seconds=10.0), 1.0)
    snap = original.core.snapshot(2.0)
    fresh = Driver(core(devices=1, config=AdmissionConfig(stale_after_s=10.0)))
    assert fresh.core.restore(snap, 2.0) == []
    fresh.send(ReleaseLease(lease_id="lease-1"), 3.0)  # memory is free, but no sample has come yet
    assert "wait" not in fresh.admitted
    [queued] = [e for e in fresh.send(submit("more", 1000), 3.5) if isinstance(e, RequestQueued)]
    assert "no memory sample" in queued.reason
    fresh.send(sample(4.0, {0: 0}, ours={0: 0}), 4.0)
    assert "wait" in fresh.admitted


def test_restore_rejects_what_no_device_can_take_and_expires_what_waited_too_long() -> None:
    snap = AdmissionSnapshot(
        waiting=(
            submit("huge", BUDGET_H100 + 1, arrival=0.0),
            submit("late", 1000, arrival=0.0, max_wait_s=5.0),
            submit("fine", 1000, arrival=0.0),
        )
    )
    d = Driver(core(devices=1, config=AdmissionConfig(stale_after_s=10.0)))
    out = d.core.restore(snap, 9.0)
    ends = {e.request_id: e.state for e in out if isinstance(e, RequestEnded)}
    assert ends == {"huge": "rejected", "late": "timed_out"}
    assert d.core.queue_position("fine") == 1


def test_restore_needs_a_new_core_and_a_consistent_snapshot() -> None:
    d = busy_driver()
    with pytest.raises(InvalidParameter, match="must be new"):
        d.core.restore(d.core.snapshot(), 20.0)
    lease = LeaseSnapshot(
        lease_id="lease-1", request_id="r", devices=(5,), reservation_mb=1000, plan=plan(1000), admitted_at=0.0
    )
    with pytest.raises(InvalidParameter, match="no such device"):
        core().restore(AdmissionSnapshot(leases=(lease,)), 1.0)
    twice = msgspec.structs.replace(lease, devices=(0,))
    with pytest.raises(InvalidParameter, match="twice"):
        core().restore(AdmissionSnapshot(leases=(twice, twice)), 1.0)
    with pytest.raises(InvalidParameter, match="twice"):
        core().restore(AdmissionSnapshot(leases=(twice,), waiting=(submit("r", 1000),)), 1.0)


# ---------------------------------------------------------------------------------------------- placement


def reference_place(plans: list[object], avail: list[int], spread: bool) -> tuple[tuple[int, ...], int] | None:
    """Placement as first written: every fitting group sorted, the lowest (slack, positions) wins."""
    best = None
    groups: dict[int, list[int]] = {}
    for pos, p in enumerate(plans):
        if p is not None and avail[pos] >= p.requirement.vram_mb:  # type: ignore[attr-defined]
            groups.setdefault(id(p), []).append(pos)
    for key, positions in groups.items():
        p = next(q for q in plans if id(q) == key)
        need, world = p.requirement.vram_mb, p.requirement.world_size  # type: ignore[attr-defined]
        if len(positions) < world:
            continue
        if spread:
            chosen = sorted(positions, key=lambda i: (need - avail[i], i))[:world]
            slack = -min(avail[i] - need for i in chosen)
        else:
            chosen = sorted(positions, key=lambda i: (avail[i] - need, i))[:world]
            slack = sum(avail[i] - need for i in chosen)
        score = (slack, tuple(sorted(chosen)))
        if best is None or score < best[0]:
            best = (score, need)
    return None if best is None else (best[0][1], best[1])


@settings(max_examples=200, deadline=None)
@given(
    needs=st.lists(st.sampled_from([None, 10000, 20000, 30000, 45000]), min_size=1, max_size=6),
    shared=st.booleans(),
    world=st.integers(min_value=1, max_value=3),
    seed=st.integers(min_value=0, max_value=10**6),
    spread=st.booleans(),
)
def test_placement_matches_the_reference(
    needs: list[int | None], shared: bool, world: int, seed: int, spread: bool
) -> None:
    rng = random.Random(seed)
    one = plan(20000, world=world)
    plans = [None if n is None else (one if shared else plan(n, world=rng.choice((1, world)))) for n in needs]
    avail = [rng.choice((0, 9999, 10000, 20000, 25000, 45000, 70000)) for _ in needs]
    found = place(plans, avail, spread=spread)
    expected = reference_place(plans, avail, spread)
    assert (None if found is None else (found.positions, found.need_mb)) == expected
    assert place_groups(groups_of(plans), avail, spread=spread) == found
