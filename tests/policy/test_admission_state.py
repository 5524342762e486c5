"""Never over-commit: a state machine of submits, releases, cancellations, samples with outside consumers,
stale samples and device loss, checking the ledgers, the leases and the terminal states after every step."""

from __future__ import annotations

from admission_helpers import Driver, submit
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from vramgate.messages import DeviceSample, RequestAdmitted, ResourceSample, TorchMemory
from vramgate.messages.admission import AdmissionTick, CancelRequest, DeviceLost, ReleaseLease
from vramgate.policy.admission import AdmissionConfig, AdmissionCore
from vramgate.policy.ledger import DeviceConfig

CAPACITY = 40960
DEVICES = 3


class AdmissionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        devices = [DeviceConfig(index=i, gpu="A100-40GB", capacity_mb=CAPACITY) for i in range(DEVICES)]
        config = AdmissionConfig(queue_limit=6, stale_after_s=5.0, aging_per_s=0.5, others_decay_s=3.0)
        self.d = Driver(AdmissionCore(devices, config))
        self.now = 0.0
        self.counter = 0
        self.submitted: list[str] = []
        self.outside = [0] * DEVICES  # what other processes use, as of each device's latest sample
        self.sampled = [False] * DEVICES
        self.sample_at = [-1.0] * DEVICES
        self.step_events: list[object] = []

    def send(self, message: object, now: float) -> None:
        self.step_events = list(self.d.send(message, now))  # type: ignore[arg-type]

    def running(self) -> list[str]:
        return sorted(rid for rid in self.d.admitted if rid not in self.d.ended)

    # ------------------------------------------------------------------ rules

    @rule(
        vram=st.integers(min_value=500, max_value=CAPACITY),
        world=st.integers(min_value=1, max_value=DEVICES + 1),
        priority=st.integers(min_value=-5, max_value=5),
        seconds=st.floats(min_value=0.0, max_value=20.0),
        max_wait=st.none() | st.floats(min_value=0.1, max_value=15.0),
    )
    def submit(self, vram: int, world: int, priority: int, seconds: float, max_wait: float | None) -> None:
        self.counter += 1
        request_id = f"r{self.counter}"
        self.submitted.append(request_id)
        message = submit(request_id, vram, world=world, priority=priority, seconds=seconds, max_wait_s=max_wait)
        self.send(message, self.now)

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "oom", "error", "cancelled"]))
    def release(self, data: st.DataObject, outcome: str) -> None:
        request_id = data.draw(st.sampled_from(self.running()))
        self.send(ReleaseLease(lease_id=self.d.admitted[request_id].lease_id, outcome=outcome), self.now)  # type: ignore[arg-type]

    @precondition(lambda self: bool(self.submitted))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.send(CancelRequest(request_id=data.draw(st.sampled_from(self.submitted))), self.now)

    @rule(dt=st.floats(min_value=0.0, max_value=8.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.send(AdmissionTick(), self.now)

    @rule(
        data=st.data(),
        torch_visible=st.booleans(),
        lag=st.floats(min_value=0.0, max_value=2.0),
    )
    def sample(self, data: st.DataObject, torch_visible: bool, lag: float) -> None:
        """Measure every device: outside consumers, part of each lease's reservation in use, a cache, loss."""
        self.now += 0.1
        at = max(0.0, self.now - lag)
        devices = []
        for index in range(DEVICES):
            lost = data.draw(st.booleans(), label="lost") if index == 0 else False
            ours = 0
            for request_id in self.running():
                admitted = self.d.admitted[request_id]
                if index in admitted.devices:
                    ours += data.draw(st.integers(0, admitted.reservation_mb), label="in use")
            cache = data.draw(st.integers(0, 4000), label="cache")
            room = max(0, CAPACITY - ours - cache)
            outside = data.draw(st.integers(0, room), label="outside")
            used = outside + ours + cache
            torch = TorchMemory(
                allocated_mb=ours,
                reserved_mb=ours + cache,
                active_mb=ours,
                peak_allocated_mb=ours,
                peak_reserved_mb=ours + cache,
            )
            devices.append(
                DeviceSample(
                    index=index,
                    name="A100-40GB",
                    uuid=f"GPU-{index}",
                    backend="simulated",
                    total_mb=CAPACITY,
                    free_mb=CAPACITY - used,
                    used_mb=used,
                    torch=torch if torch_visible else None,
                    lost=lost,
                )
            )
            if at >= self.sample_at[index]:  # the ledger keeps the newest sample only
                self.sample_at[index] = at
                self.outside[index] = outside
                self.sampled[index] = not lost
        self.send(ResourceSample(at=at, devices=tuple(devices)), self.now)

    @rule(index=st.integers(min_value=0, max_value=DEVICES - 1))
    def lose_device(self, index: int) -> None:
        self.send(DeviceLost(index=index, reason="test"), self.now)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def never_over_commits(self) -> None:
        stats = self.d.core.statistics()
        admitted_on = {index for e in self.step_events if isinstance(e, RequestAdmitted) for index in e.devices}
        for dev in stats.devices:
            assert dev.reserved_mb + dev.margin_mb <= dev.capacity_mb
            assert 0 <= dev.free_mb <= max(0, dev.capacity_mb - dev.margin_mb - dev.others_mb - dev.reserved_mb)
            if self.sampled[dev.index] and not dev.lost:
                assert dev.others_mb >= self.outside[dev.index], "others' use under-counted"
            if dev.index in admitted_on:
                assert dev.blocked == "", dev.blocked
                assert dev.reserved_mb + dev.others_mb + dev.margin_mb <= dev.capacity_mb
                assert dev.reserved_mb + self.outside[dev.index] + dev.margin_mb <= dev.capacity_mb

    @invariant()
    def every_request_is_in_exactly_one_place(self) -> None:
        core = self.d.core
        for request_id in self.submitted:
            waiting = core.queue_position(request_id) is not None
            running = core.lease_of(request_id) is not None
            ended = request_id in self.d.ended
            assert waiting + running + ended == 1, (request_id, waiting, running, ended)

    def teardown(self) -> None:
        core = self.d.core
        for request_id in list(self.submitted):
            self.d.send(CancelRequest(request_id=request_id), self.now)
        for request_id in self.running():
            self.d.send(ReleaseLease(lease_id=self.d.admitted[request_id].lease_id), self.now)
        stats = core.statistics()
        assert all(dev.reserved_mb == 0 and dev.leases == 0 for dev in stats.devices), "a lease leaked"
        assert (stats.queue_length, stats.running) == (0, 0)
        assert sorted(self.d.ended) == sorted(self.submitted)
        assert all(count == 1 for count in self.d.ends.values())
        ends = stats.completed + stats.failed + stats.cancelled + stats.rejected + stats.timed_out
        assert ends == stats.submitted == len(self.submitted)


AdmissionMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
test_admission_never_over_commits = AdmissionMachine.TestCase
