"""The admission core: admit, queue, order, place, reject, time out, cancel, release, replay."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from admission_helpers import H100_MB, Driver, h100, plan, sample, submit

from vramgate.errors import ConfigError, InvalidParameter
from vramgate.messages import (
    LeaseReleased,
    Plan,
    RequestAdmitted,
    RequestEnded,
    RequestQueued,
    RequestRejected,
    RunFinished,
    decode_json,
    encode_json,
    message_codec,
)
from vramgate.messages.admission import AdmissionTick, CancelRequest, DeviceLost, ReleaseLease, SubmitRequest
from vramgate.policy.admission import AdmissionConfig, AdmissionCore
from vramgate.policy.ledger import DeviceConfig

BUDGET = H100_MB - 4078  # an H100's capacity less its default margin


def core(devices: int = 1, **config: object) -> Driver:
    settings = {"stale_after_s": None, **config}
    return Driver(AdmissionCore([h100(i) for i in range(devices)], AdmissionConfig(**settings)))  # type: ignore[arg-type]


def only(events: Sequence[object], kind: type) -> list[object]:
    return [e for e in events if isinstance(e, kind)]


def test_a_request_that_fits_is_admitted_at_once_with_a_counted_lease_id() -> None:
    d = core()
    [admitted] = d.send(submit("a", 30000), 1.0)
    assert isinstance(admitted, RequestAdmitted)
    assert (admitted.lease_id, admitted.devices, admitted.reservation_mb, admitted.waited_s) == (
        "lease-1",
        (0,),
        30000,
        0,
    )
    [second] = d.send(submit("b", 30000), 1.0)
    assert isinstance(second, RequestAdmitted)
    assert second.lease_id == "lease-2"
    stats = d.core.statistics()
    assert stats.devices[0].reserved_mb == 60000
    assert stats.devices[0].free_mb == BUDGET - 60000
    assert (stats.admitted, stats.running, stats.queue_length) == (2, 2, 0)


def test_a_request_that_does_not_fit_waits_and_is_admitted_when_memory_returns() -> None:
    d = core()
    d.send(submit("a", 50000), 0.0)
    [queued] = d.send(submit("b", 50000), 1.0)
    assert isinstance(queued, RequestQueued)
    assert queued.position == 1
    assert queued.reason == f"waiting for {50000 - (BUDGET - 50000):,} MiB on gpu0: held by 1 running lease"
    assert d.core.queue_position("b") == 1
    events = d.send(ReleaseLease(lease_id="lease-1"), 4.0)
    released, ended, admitted = events
    assert released == LeaseReleased(request_id="a", lease_id="lease-1", devices=(0,), reservation_mb=50000)
    assert ended == RequestEnded(request_id="a", state="completed")
    assert isinstance(admitted, RequestAdmitted)
    assert (admitted.request_id, admitted.waited_s) == ("b", 3.0)
    assert d.core.queue_position("b") is None


def test_higher_priority_first_then_arrival() -> None:
    d = core(aging_per_s=0.0)
    d.send(submit("running", BUDGET), 0.0)
    for i, priority in enumerate([0, 5, 0, 5, -1]):
        d.send(submit(f"r{i}", BUDGET, priority=priority), float(i))
    assert [d.core.queue_position(f"r{i}") for i in range(5)] == [3, 1, 4, 2, 5]
    order = []
    lease = "lease-1"
    for step in range(5):
        admitted = only(d.send(ReleaseLease(lease_id=lease), 10.0 + step), RequestAdmitted)
        assert len(admitted) == 1
        order.append(admitted[0].request_id)  # type: ignore[attr-defined]
        lease = admitted[0].lease_id  # type: ignore[attr-defined]
    assert order == ["r1", "r3", "r0", "r2", "r4"]


def test_aging_lets_a_long_waiting_request_outrank_newer_higher_priority_ones() -> None:
    d = core(aging_per_s=0.5)
    d.send(submit("running", BUDGET), 0.0)
    d.send(submit("old", BUDGET, priority=0), 0.0)
    d.send(submit("early", BUDGET, priority=10), 19.0)  # 10 > 0 + 0.5 * 19
    d.send(submit("late", BUDGET, priority=10), 21.0)  # 10 < 0 + 0.5 * 21
    assert [d.core.queue_position(r) for r in ("early", "old", "late")] == [1, 2, 3]


def test_best_fit_takes_the_tightest_device_and_spread_the_emptiest() -> None:
    for placement, expected in (("best_fit", 1), ("spread", 0)):
        d = core(devices=3, placement=placement)
        d.send(submit("fill1", plans={"1": plan(40000)}, fallback=False), 0.0)
        d.send(submit("fill2", plans={"2": plan(20000)}, fallback=False), 0.0)
        [admitted] = d.send(submit("x", 30000), 0.0)
        assert isinstance(admitted, RequestAdmitted)
        assert admitted.devices == (expected,), placement


def test_a_multi_gpu_plan_is_admitted_on_all_its_devices_or_none() -> None:
    d = core(devices=3)
    d.send(submit("a", plans={"0": plan(50000)}, fallback=False), 0.0)
    d.send(submit("b", plans={"1": plan(50000)}, fallback=False), 0.0)
    [queued] = d.send(submit("pair", 40000, world=2), 0.0)
    assert isinstance(queued, RequestQueued)  # only device 2 has room for 40 GiB
    assert d.core.statistics().devices[2].reserved_mb == 0
    admitted = only(d.send(ReleaseLease(lease_id="lease-2"), 1.0), RequestAdmitted)
    assert [(a.request_id, a.devices, a.reservation_mb) for a in admitted] == [("pair", (1, 2), 40000)]  # type: ignore[attr-defined]
    stats = d.core.statistics()
    assert [dev.reserved_mb for dev in stats.devices] == [50000, 40000, 40000]
    d.send(ReleaseLease(lease_id="lease-3"), 2.0)
    assert [dev.reserved_mb for dev in d.core.statistics().devices] == [50000, 0, 0]


def test_plans_are_chosen_by_device_index_then_gpu_then_any() -> None:
    small = DeviceConfig(index=0, gpu="RTX4090", capacity_mb=24564)
    big = h100(1)
    d = Driver(AdmissionCore([small, big], AdmissionConfig(stale_after_s=None)))
    plans = {"RTX4090-24GB": plan(20000, gpu="RTX4090-24GB"), "*": plan(60000)}
    [admitted] = d.send(SubmitRequest(request_id="a", plans=plans), 0.0)
    assert isinstance(admitted, RequestAdmitted)
    assert (admitted.devices, admitted.reservation_mb) == ((0,), 20000)  # best fit: the small card is tighter
    [admitted] = d.send(SubmitRequest(request_id="b", plans={**plans, "1": plan(70000)}), 0.0)
    assert isinstance(admitted, RequestAdmitted)
    assert (admitted.devices, admitted.reservation_mb) == ((1,), 70000)


def test_fallback_reoptimizes_a_bigger_devices_plan_for_the_smaller_device() -> None:
    calls: list[tuple[str, int, int]] = []

    def reoptimize(source: Plan, device: DeviceConfig, budget_mb: int) -> Plan | None:
        calls.append((source.gpu, device.index, budget_mb))
        return plan(budget_mb - 1000, gpu=device.gpu)

    small = DeviceConfig(index=0, gpu="RTX4090-24GB", capacity_mb=24564)
    core_ = AdmissionCore([small], AdmissionConfig(stale_after_s=None), reoptimize=reoptimize)
    d = Driver(core_)
    plans = {"H100-80GB": plan(60000, gpu="H100-80GB"), "H200-141GB": plan(90000, gpu="H200-141GB")}
    [admitted] = d.send(SubmitRequest(request_id="a", plans=plans), 0.0)
    assert isinstance(admitted, RequestAdmitted)
    assert admitted.plan.gpu == "RTX4090-24GB"
    assert admitted.reservation_mb == 24564 - 1229 - 1000
    assert calls == [("H100-80GB", 0, 24564 - 1229)]  # the nearest bigger GPU's plan was the source
    [rejected, ended] = d.send(SubmitRequest(request_id="b", plans=plans, fallback=False), 0.0)
    assert isinstance(rejected, RequestRejected)
    assert rejected.code == "does_not_fit"
    assert ended == RequestEnded(request_id="b", state="rejected", reason=rejected.reason)


def test_without_a_reoptimizer_fallback_uses_a_given_plan_that_fits_as_it_is() -> None:
    small = DeviceConfig(index=0, gpu="RTX4090-24GB", capacity_mb=24564)
    d = Driver(AdmissionCore([small], AdmissionConfig(stale_after_s=None)))
    plans = {"H100-80GB": plan(60000), "A100-40GB": plan(18000), "L40S-48GB": plan(30000)}
    [admitted] = d.send(SubmitRequest(request_id="a", plans=plans), 0.0)
    assert isinstance(admitted, RequestAdmitted)
    assert admitted.reservation_mb == 18000


def test_requests_under_the_same_plan_names_each_run_their_own_plans_and_a_fallback_still_falls_back() -> None:
    small = DeviceConfig(index=0, gpu="RTX4090-24GB", capacity_mb=24564)
    d = Driver(AdmissionCore([small, h100(1)], AdmissionConfig(stale_after_s=None, placement="spread")))
    names = ("H100-80GB", "A100-40GB")
    # Without a fallback the small card has no plan: every request under these names goes to the H100.
    for i, mb in enumerate((30000, 20000)):
        plans = {names[0]: plan(mb, gpu=names[0]), names[1]: plan(18000 + i, gpu=names[1])}
        [admitted] = d.send(SubmitRequest(request_id=f"n{i}", plans=plans, fallback=False), 0.0)
        assert isinstance(admitted, RequestAdmitted)
        assert (admitted.devices, admitted.reservation_mb, admitted.plan) == ((1,), mb, plans[names[0]])
    # The same names with a fallback: the small card runs the given plan that fits it (spread: it is emptier).
    plans = {names[0]: plan(25000, gpu=names[0]), names[1]: plan(17000, gpu=names[1])}
    [admitted] = d.send(SubmitRequest(request_id="f", plans=plans, fallback=True), 0.0)
    assert isinstance(admitted, RequestAdmitted)
    assert (admitted.devices, admitted.plan) == ((0,), plans[names[1]])


def test_a_request_that_fits_no_device_is_rejected_with_what_it_would_take() -> None:
    d = Driver(AdmissionCore([DeviceConfig(index=0, gpu="L4", capacity_mb=23034)], AdmissionConfig()))
    rejected, ended = d.send(submit("a", 40000), 0.0)
    assert isinstance(rejected, RequestRejected)
    assert (rejected.code, rejected.needed_mb, rejected.smallest_gpu) == ("does_not_fit", 40000, "L40S-48GB")
    assert "largest device budget is 21882 MiB" in rejected.reason
    assert rejected.best_plan is not None
    assert isinstance(ended, RequestEnded)
    assert ended.state == "rejected"
    [rejected, _] = d.send(submit("b", 1000, world=2), 0.0)
    assert isinstance(rejected, RequestRejected)
    assert "needs 2 GPUs; 1 are available" in rejected.reason
    [rejected, _] = d.send(SubmitRequest(request_id="c", plans={}), 0.0)
    assert isinstance(rejected, RequestRejected)
    assert rejected.code == "bad_request"
    assert d.core.statistics().rejected == 3


def test_a_full_queue_rejects_at_once_with_a_retry_after_estimate() -> None:
    d = core(queue_limit=2)
    d.send(submit("run", BUDGET, seconds=30.0), 0.0)
    d.send(submit("q1", BUDGET), 1.0)
    assert d.core.retry_after(1.0) == 0.0  # room left
    d.send(submit("q2", BUDGET, max_wait_s=100.0), 2.0)
    assert d.core.room() == 0
    rejected, ended = d.send(submit("q3", 10), 5.0)
    assert isinstance(rejected, RequestRejected)
    assert rejected.code == "queue_full"
    assert rejected.retry_after_s == pytest.approx(25.0)  # the running lease is expected to end at 30 s
    assert ended == RequestEnded(request_id="q3", state="rejected", reason="queue_full")
    # When a wait expires sooner than the lease's end, that is when room appears.
    d.send(CancelRequest(request_id="q1"), 5.0)
    d.send(submit("q4", BUDGET, max_wait_s=3.0), 5.0)
    assert d.core.retry_after(6.0) == pytest.approx(2.0)


def test_retry_after_without_any_estimate_uses_the_default() -> None:
    d = core(queue_limit=1, retry_after_default_s=7.0)
    d.send(sample(0.0, {0: 0}), 0.0)  # the device was empty: what others take later may leave again
    d.send(submit("run", BUDGET, seconds=0.0), 0.0)
    d.send(submit("q", BUDGET), 0.0)
    assert d.core.retry_after(50.0) == pytest.approx(0.1)  # the running lease is overdue: room any moment
    d.send(sample(50.0, {0: 60000}), 50.0)  # others hold the memory: when the head starts is unknown
    d.send(ReleaseLease(lease_id="lease-1"), 50.0)
    assert d.core.queue_length == 1
    assert d.core.running == 0
    assert d.core.retry_after(51.0) == pytest.approx(7.0)


def test_a_request_past_its_max_wait_times_out_once() -> None:
    d = core()
    d.send(submit("run", BUDGET), 0.0)
    d.send(submit("a", 1000, max_wait_s=5.0), 0.0)
    assert d.send(AdmissionTick(), 4.9) == []
    [ended] = d.send(AdmissionTick(), 5.0)
    assert ended == RequestEnded(request_id="a", state="timed_out", reason="waited 5.0 s without being admitted")
    assert d.send(ReleaseLease(lease_id="lease-1"), 6.0)[-1] == RequestEnded(request_id="run", state="completed")
    assert "a" not in d.admitted
    assert d.core.statistics().timed_out == 1


def test_cancel_ends_a_waiting_request_and_marks_a_running_one() -> None:
    d = core()
    d.send(submit("run", BUDGET), 0.0)
    d.send(submit("wait", BUDGET), 0.0)
    [ended] = d.send(CancelRequest(request_id="wait", reason="client went away"), 1.0)
    assert ended == RequestEnded(request_id="wait", state="cancelled", reason="client went away")
    assert d.send(CancelRequest(request_id="wait"), 1.0) == []  # already ended
    assert d.send(CancelRequest(request_id="run"), 1.0) == []  # the run must stop and release its lease
    *_, ended = d.send(ReleaseLease(lease_id="lease-1", outcome="error"), 2.0)
    assert ended == RequestEnded(request_id="run", state="cancelled", reason="the run ended with error")


@pytest.mark.parametrize(
    ("outcome", "state"), [("ok", "completed"), ("oom", "failed"), ("error", "failed"), ("cancelled", "cancelled")]
)
def test_the_release_outcome_decides_the_terminal_state(outcome: str, state: str) -> None:
    d = core()
    d.send(submit("a", 1000), 0.0)
    events = d.send(ReleaseLease(lease_id="lease-1", outcome=outcome), 1.0)  # type: ignore[arg-type]
    assert isinstance(events[1], RequestEnded)
    assert events[1].state == state
    assert d.send(ReleaseLease(lease_id="lease-1"), 2.0) == []  # a second release is a no-op
    assert d.core.statistics().devices[0].reserved_mb == 0


def test_stale_samples_stop_admission_and_the_queued_event_says_why() -> None:
    d = core(stale_after_s=5.0)
    [queued] = d.send(submit("a", 1000), 0.0)
    assert isinstance(queued, RequestQueued)
    assert queued.reason == "no memory sample from device 0 yet"
    [admitted] = d.send(sample(1.0, {0: 0}), 1.0)
    assert isinstance(admitted, RequestAdmitted)
    [queued] = d.send(submit("b", 1000), 7.0)
    assert isinstance(queued, RequestQueued)
    assert "stale (6.0 s old, limit 5 s)" in queued.reason
    assert d.core.statistics().devices[0].blocked == queued.reason
    [admitted] = d.send(sample(7.5, {0: 0}), 7.5)
    assert isinstance(admitted, RequestAdmitted)


def test_samples_with_outside_consumers_shrink_what_is_admitted() -> None:
    d = core(stale_after_s=10.0)
    d.send(sample(0.0, {0: 30000}, ours={0: 0}), 0.0)
    [admitted] = d.send(submit("a", BUDGET - 30000), 0.0)
    assert isinstance(admitted, RequestAdmitted)
    [queued] = d.send(submit("b", 1), 0.0)
    assert isinstance(queued, RequestQueued)
    # The run allocated 20 GiB so far, the outside consumer left: only the outside drop frees memory.
    d.send(sample(1.0, {0: 20000}, ours={0: 20000}), 1.0)
    stats = d.core.statistics().devices[0]
    assert stats.others_raw_mb == 0
    assert stats.others_mb > 0  # the drop is believed slowly
    assert stats.reserved_mb + stats.others_mb + stats.margin_mb <= stats.capacity_mb


def test_losing_a_device_rejects_what_only_it_could_run() -> None:
    d = core(devices=2)
    d.send(submit("a", BUDGET), 0.0)
    d.send(submit("b", BUDGET), 0.0)
    d.send(submit("pair", 1000, world=2), 0.0)
    d.send(submit("one", 1000), 0.0)
    events = d.send(DeviceLost(index=1, reason="Xid 79"), 1.0)
    rejected = only(events, RequestRejected)
    assert [(r.request_id, r.code) for r in rejected] == [("pair", "device_lost")]  # type: ignore[attr-defined]
    assert d.ended["pair"].state == "rejected"
    assert d.core.queue_position("one") == 1
    [refused, _] = d.send(submit("pair2", 1000, world=2), 1.0)
    assert isinstance(refused, RequestRejected)
    assert refused.code == "device_lost"
    # The lease on the lost device is still held until its run releases it.
    assert d.core.statistics().devices[1].reserved_mb == BUDGET
    d.send(ReleaseLease(lease_id="lease-2", outcome="error"), 2.0)
    assert d.core.statistics().devices[1].reserved_mb == 0
    with pytest.raises(InvalidParameter, match="no such device"):
        d.send(DeviceLost(index=7), 2.0)


def test_bad_input_is_a_typed_error() -> None:
    d = core()
    d.send(submit("a", BUDGET), 0.0)
    with pytest.raises(InvalidParameter, match="request_id='a'"):
        d.send(submit("a", 10), 0.0)
    with pytest.raises(InvalidParameter, match="admission does not handle this message"):
        d.send(RunFinished(request_id="a", lease_id="lease-1", outcome="ok"), 0.0)
    with pytest.raises(ConfigError, match="distinct"):
        AdmissionCore([h100(0), h100(0)])
    with pytest.raises(ConfigError, match="at least one device"):
        AdmissionCore([])
    with pytest.raises(ValueError, match=r"admission\.aging_per_s"):
        AdmissionConfig(aging_per_s=-1.0)


def test_submit_decodes_from_json_and_bad_fields_are_named() -> None:
    message = submit("a", 1000, priority=3, max_wait_s=2.0)
    assert decode_json(encode_json(message), SubmitRequest) == message
    with pytest.raises(Exception, match=r"\$\.priority"):
        decode_json(b'{"type": "SubmitRequest", "request_id": "x", "plans": {}, "priority": 5000}', SubmitRequest)


def test_a_replayed_message_log_gives_the_same_events() -> None:
    def run() -> list[bytes]:
        d = core(devices=2, stale_after_s=30.0)
        script = [
            (sample(0.0, {0: 5000, 1: 0}, ours={0: 0, 1: 0}), 0.0),
            (submit("a", 60000, seconds=20), 0.5),
            (submit("b", 60000, seconds=5, priority=2), 1.0),
            (submit("c", 30000, seconds=3), 1.5),
            (submit("d", 50000, max_wait_s=4), 2.0),
            (AdmissionTick(), 6.5),
            (ReleaseLease(lease_id="lease-2"), 7.0),
            (sample(8.0, {0: 60000, 1: 30000}, ours={0: 60000, 1: 30000}), 8.0),
            (ReleaseLease(lease_id="lease-1", outcome="oom"), 9.0),
        ]
        return [encode_json(e) for m, now in script for e in d.send(m, now)]

    first = run()
    assert first == run()
    codec = message_codec()
    kinds = {type(codec.decode_json(line)).__name__ for line in first}
    assert kinds == {"RequestAdmitted", "RequestQueued", "RequestEnded", "LeaseReleased"}
