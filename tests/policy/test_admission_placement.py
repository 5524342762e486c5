"""Earliest-finish placement: a request goes where it is expected to finish first, counting the running leases'
expected ends and each device's time for its plan; best fit stays selectable; an idle device is never passed by."""

from __future__ import annotations

import pytest
from admission_helpers import H100_MB, Driver, h100, plan, submit

from vramgate.messages import RequestAdmitted, RequestQueued
from vramgate.messages.admission import ReleaseLease
from vramgate.policy.admission import AdmissionConfig, AdmissionCore

BUDGET = H100_MB - 4078
#: A slow device's plan and a fast device's plan of one request (the fast one takes a quarter of the time).
SLOW, FAST = plan(20_000, seconds=1000.0), plan(20_000, seconds=250.0)


def core(placement: str) -> Driver:
    config = AdmissionConfig(stale_after_s=None, placement=placement)  # type: ignore[arg-type]
    return Driver(AdmissionCore([h100(0), h100(1)], config))


def busy(d: Driver) -> tuple[str, str]:
    """Device 0 runs a long lease with room beside it; device 1 is full until 100 s."""
    [a] = d.send(submit("a", 30_000, seconds=5000.0, plans={"0": plan(30_000, seconds=5000.0)}, fallback=False), 0.0)
    [b] = d.send(submit("b", BUDGET, seconds=100.0, plans={"1": plan(BUDGET, seconds=100.0)}, fallback=False), 0.0)
    assert isinstance(a, RequestAdmitted)
    assert isinstance(b, RequestAdmitted)
    return a.lease_id, b.lease_id


def test_the_default_placement_is_earliest_finish_and_best_fit_stays_selectable() -> None:
    assert AdmissionConfig().placement == "earliest_finish"
    assert AdmissionConfig(placement="best_fit").placement == "best_fit"
    with pytest.raises(ValueError, match="placement"):
        AdmissionConfig(placement="fastest")  # type: ignore[arg-type]


def test_a_request_waits_for_the_device_where_it_finishes_first() -> None:
    d = core("earliest_finish")
    _, b = busy(d)
    [queued] = d.send(submit("r", plans={"0": SLOW, "1": FAST}, fallback=False), 1.0)
    assert isinstance(queued, RequestQueued)
    assert "expected to finish sooner on gpu1, free in 99 s" in queued.reason
    standing = d.core.standing("r", 1.0)
    assert standing is not None
    assert standing.starts_at == 100.0
    [_, _, admitted] = d.send(ReleaseLease(lease_id=b), 100.0)
    assert isinstance(admitted, RequestAdmitted)
    assert admitted.devices == (1,)
    assert admitted.plan == FAST


def test_best_fit_starts_it_at_once_on_the_slow_device() -> None:
    d = core("best_fit")
    busy(d)
    [admitted] = d.send(submit("r", plans={"0": SLOW, "1": FAST}, fallback=False), 1.0)
    assert isinstance(admitted, RequestAdmitted)
    assert admitted.devices == (0,)


def test_it_starts_now_when_waiting_would_not_finish_sooner() -> None:
    d = core("earliest_finish")
    busy(d)
    slower_fast = plan(20_000, seconds=950.0)  # 100 s of waiting + 950 s > 1000 s now
    [admitted] = d.send(submit("r", plans={"0": SLOW, "1": slower_fast}, fallback=False), 1.0)
    assert isinstance(admitted, RequestAdmitted)
    assert admitted.devices == (0,)


def test_among_devices_it_fits_now_it_takes_the_fastest_not_the_tightest() -> None:
    for placement, expected in (("earliest_finish", (1,)), ("best_fit", (0,))):
        d = core(placement)
        d.send(submit("a", 30_000, seconds=5000.0, plans={"0": plan(30_000, seconds=5000.0)}, fallback=False), 0.0)
        [admitted] = d.send(submit("r", plans={"0": SLOW, "1": FAST}, fallback=False), 1.0)
        assert isinstance(admitted, RequestAdmitted)
        assert admitted.devices == expected, placement


def test_an_idle_device_that_can_take_it_is_never_passed_by() -> None:
    d = core("earliest_finish")
    [b] = d.send(submit("b", BUDGET, seconds=100.0, plans={"1": plan(BUDGET, seconds=100.0)}, fallback=False), 0.0)
    assert isinstance(b, RequestAdmitted)
    # Device 0 runs nothing: the request starts there now, although it would finish sooner on device 1.
    [admitted] = d.send(submit("r", plans={"0": SLOW, "1": FAST}, fallback=False), 1.0)
    assert isinstance(admitted, RequestAdmitted)
    assert admitted.devices == (0,)
    d.core.check_invariants()


def test_finish_times_follow_the_time_scale_of_the_runs() -> None:
    """With compressed runs (``time_scale``), a plan's time and the running leases' ends are on one scale: a device
    that frees up in 100 s is not worth waiting for when the slow plan here ends in 10 s."""
    d = Driver(AdmissionCore([h100(0), h100(1)], AdmissionConfig(stale_after_s=None), time_scale=0.01))
    d.send(submit("a", 30_000, seconds=500_000.0, plans={"0": plan(30_000, seconds=500_000.0)}, fallback=False), 0.0)
    d.send(submit("b", BUDGET, seconds=10_000.0, plans={"1": plan(BUDGET, seconds=10_000.0)}, fallback=False), 0.0)
    [admitted] = d.send(submit("r", plans={"0": SLOW, "1": FAST}, fallback=False), 0.5)
    assert isinstance(admitted, RequestAdmitted)
    assert admitted.devices == (0,)


def slow_device_frees_first(d: Driver, *, max_wait_s: float | None = None) -> str:
    """Device 0 runs until 50 s, device 1 until 100 s; the head ``r`` is four times slower on device 0 and waits
    for device 1, and ``s`` behind it is only 1.2 times slower there. Returns device 1's lease."""
    d.send(submit("a", BUDGET, seconds=50.0, plans={"0": plan(BUDGET, seconds=50.0)}, fallback=False), 0.0)
    [b] = d.send(submit("b", BUDGET, seconds=100.0, plans={"1": plan(BUDGET, seconds=100.0)}, fallback=False), 0.0)
    assert isinstance(b, RequestAdmitted)
    [r] = d.send(submit("r", plans={"0": SLOW, "1": FAST}, max_wait_s=max_wait_s, fallback=False), 1.0)
    near = {"0": plan(20_000, seconds=300.0), "1": plan(20_000, seconds=250.0)}
    [s] = d.send(submit("s", plans=near, fallback=False), 2.0)
    assert isinstance(r, RequestQueued)
    assert isinstance(s, RequestQueued)
    return b.lease_id


def test_an_idle_slow_device_takes_the_request_it_is_comparatively_best_at() -> None:
    d = core("earliest_finish")
    b = slow_device_frees_first(d)
    d.send(ReleaseLease(lease_id=d.admitted["a"].lease_id), 50.0)
    # Device 0 is idle: it takes s (1.2x its best time there), not the head (4x); the head keeps waiting for device
    # 1, and backfilling protects it there.
    assert d.admitted["s"].devices == (0,)
    assert "r" not in d.admitted
    assert d.core.statistics().backfilled == 1
    d.send(ReleaseLease(lease_id=b), 100.0)
    assert d.admitted["r"].devices == (1,)
    assert d.admitted["r"].plan == FAST


def test_the_head_takes_the_idle_device_when_waiting_would_pass_its_max_wait() -> None:
    d = core("earliest_finish")
    slow_device_frees_first(d, max_wait_s=60.0)  # it must start by 61 s; device 1 frees at 100 s
    d.send(ReleaseLease(lease_id=d.admitted["a"].lease_id), 50.0)
    assert d.admitted["r"].devices == (0,)
    assert d.admitted["r"].plan == SLOW


def test_best_fit_gives_the_idle_device_to_the_head() -> None:
    d = core("best_fit")
    slow_device_frees_first(d)
    d.send(ReleaseLease(lease_id=d.admitted["a"].lease_id), 50.0)
    assert d.admitted["r"].devices == (0,)
