"""Liveness of the admission core: memory that never leaves is not waited for, a waiting request says what it
waits for and when it should start, and a queue that is not moving is reported."""

from __future__ import annotations

from admission_helpers import H100_MB, Driver, h100, sample, submit

from vramgate.messages import RequestAdmitted, RequestEnded, RequestQueued, RequestRejected
from vramgate.messages.admission import CancelRequest, ReleaseLease
from vramgate.policy.admission import AdmissionConfig, AdmissionCore
from vramgate.policy.ledger import DeviceLedger

BUDGET = H100_MB - 4078


def core(devices: int = 1, **config: object) -> Driver:
    settings = {"stale_after_s": None, **config}
    return Driver(AdmissionCore([h100(i) for i in range(devices)], AdmissionConfig(**settings)))  # type: ignore[arg-type]


def test_the_ledger_counts_what_others_never_gave_back_as_permanent() -> None:
    ledger = DeviceLedger(h100(0), stale_after_s=None, others_decay_s=10.0, permanent_after_s=100.0)
    assert (ledger.permanent_mb, ledger.attainable_mb) == (0, BUDGET)
    ledger.observe(sample(0.0, {0: 512}, ours={0: 0}).devices[0], 0.0)  # a CUDA context, from the first sample
    assert (ledger.permanent_mb, ledger.attainable_mb) == (512, BUDGET - 512)
    ledger.observe(sample(10.0, {0: 20_512}, ours={0: 0}).devices[0], 10.0)  # a neighbour arrives: it may leave
    assert ledger.permanent_mb == 512
    ledger.observe(sample(100.0, {0: 20_512}, ours={0: 0}).devices[0], 100.0)
    assert ledger.permanent_mb == 512  # the context reading at 0 is still within the last 100 s
    ledger.observe(sample(111.0, {0: 20_512}, ours={0: 0}).devices[0], 111.0)
    assert ledger.permanent_mb == 20_512  # held for more than 100 s: it does not go away in a bounded way
    ledger.observe(sample(112.0, {0: 512}, ours={0: 0}).devices[0], 112.0)
    assert ledger.permanent_mb == 512  # it left after all
    ledger.observe(sample(113.0, {0: 60_512}, ours={0: 40_000}).devices[0], 113.0)
    assert ledger.permanent_mb == 512  # this process's memory is not others'


def test_a_plan_above_what_a_device_can_ever_give_is_rejected_not_queued() -> None:
    d = core()
    d.send(sample(0.0, {0: 512}, ours={0: 0}), 0.0)
    rejected, ended = d.send(submit("big", BUDGET - 100), 1.0)
    assert isinstance(rejected, RequestRejected)
    assert (rejected.code, rejected.needed_mb) == ("does_not_fit", BUDGET - 100)
    assert f"largest device budget is {BUDGET - 512} MiB" in rejected.reason
    assert "512 MiB that others never gave back" in rejected.reason
    assert isinstance(ended, RequestEnded)
    assert ended.state == "rejected"
    [admitted] = d.send(submit("fits", BUDGET - 512), 2.0)
    assert isinstance(admitted, RequestAdmitted)


def test_a_waiting_request_is_rejected_when_others_stay_for_good() -> None:
    d = core(permanent_after_s=60.0)
    d.send(sample(0.0, {0: 0}, ours={0: 0}), 0.0)
    d.send(sample(1.0, {0: 30_000}, ours={0: 0}), 1.0)
    [queued] = d.send(submit("head", 60_000), 2.0)
    assert isinstance(queued, RequestQueued)
    assert d.send(sample(50.0, {0: 30_000}, ours={0: 0}), 50.0) == []
    rejected, ended = d.send(sample(62.0, {0: 30_000}, ours={0: 0}), 62.0)
    assert isinstance(rejected, RequestRejected)
    assert rejected.code == "does_not_fit"
    assert rejected.needed_mb == 60_000
    assert isinstance(ended, RequestEnded)
    assert ended.request_id == "head"
    assert d.core.queue_length == 0


def test_standing_says_what_a_request_waits_for_and_when_it_should_start() -> None:
    d = core()
    d.send(submit("a", 50_000, seconds=100.0), 0.0)
    d.send(submit("b", 50_000, seconds=30.0), 0.0)
    d.send(submit("c", 50_000, seconds=10.0), 0.0)
    b = d.core.standing("b", 10.0)
    assert b is not None
    assert b.position == 1
    assert b.starts_at == 100.0
    assert b.reason == f"waiting for {50_000 - (BUDGET - 50_000):,} MiB on gpu0: held by 1 running lease"
    c = d.core.standing("c", 10.0)
    assert c is not None
    assert c.position == 2
    assert c.starts_at == 130.0  # after b, which holds the memory from 100 to 130
    assert c.reason.startswith("behind 1 request; waiting for")
    assert d.core.standing("a", 10.0) is None  # running, not waiting


def test_standing_of_a_request_others_block_has_no_expected_start() -> None:
    d = core()
    d.send(sample(0.0, {0: 0}, ours={0: 0}), 0.0)
    d.send(sample(1.0, {0: 40_000}, ours={0: 0}), 1.0)
    d.send(submit("head", 60_000), 2.0)
    standing = d.core.standing("head", 3.0)
    assert standing is not None
    assert standing.starts_at is None
    lacks = 60_000 - (BUDGET - 40_000)
    held = "held by others (40,000 MiB outside this gate's leases)"
    assert standing.reason == f"waiting for {lacks:,} MiB on gpu0: {held}"


def test_a_queue_with_nothing_running_where_its_head_could_go_is_stalled() -> None:
    d = core(devices=2)
    d.send(sample(0.0, {0: 0, 1: 0}, ours={0: 0, 1: 0}), 0.0)
    d.send(sample(1.0, {0: 40_000, 1: 0}, ours={0: 0, 1: 0}), 1.0)
    d.send(submit("on1", plans={"1": submit("x", 50_000).plans["*"]}, fallback=False), 1.0)
    d.send(submit("head", plans={"0": submit("x", 60_000).plans["*"]}, fallback=False), 2.0)
    stalled = d.core.stalled(5.0)
    assert stalled is not None  # the lease on device 1 cannot make room on device 0
    since, reason = stalled
    assert since == 2.0
    assert "on gpu0: held by others" in reason
    assert d.core.statistics().stalled_since == 2.0
    d.send(CancelRequest(request_id="head"), 6.0)
    assert d.core.stalled(6.0) is None
    assert d.core.statistics().stalled_since is None


def test_a_queue_waiting_for_a_running_lease_is_not_stalled() -> None:
    d = core()
    d.send(submit("a", 50_000, seconds=100.0), 0.0)
    d.send(submit("b", 50_000), 0.0)
    assert d.core.stalled(50.0) is None
    d.send(ReleaseLease(lease_id="lease-1"), 60.0)
    assert d.core.stalled(60.0) is None  # b was admitted
    assert "b" in d.admitted


def test_a_run_above_its_reservation_does_not_count_as_memory_that_never_leaves() -> None:
    ledger = DeviceLedger(h100(0), stale_after_s=None, others_decay_s=10.0, permanent_after_s=100.0)
    ledger.observe(sample(0.0, {0: 512}, ours={0: 0}).devices[0], 0.0)  # the CUDA context
    ledger.reserve("lease-1", 40_000, 0.0)
    for at in (1.0, 50.0, 120.0, 200.0):
        # The run holds 300 MiB more than its reservation, for longer than permanent_after_s.
        ledger.observe(sample(at, {0: 40_812}, ours={0: 40_300}).devices[0], at)
    assert ledger.others_mb == 812  # counted against what is free while it lasts ...
    assert ledger.permanent_mb == 512  # ... but it is this process's: it leaves with the run
    assert ledger.attainable_mb == BUDGET - 512
