"""The ``vramgate`` policy: the gate's own cores, fed by the simulator.

Each request goes through the gate's :class:`~vramgate.policy.request.RequestCore`, as in a server: the preflight,
the planning passes (at what each kind of GPU offers now, then at what it offers once others leave, from the
admission core's ledgers), the closest-miss rejection, the queue limit and the plan cache; the core's questions are
answered by the gate's estimator and optimizer cores, and its submits go to the real
:class:`~vramgate.policy.admission.AdmissionCore`, which is fed ``ResourceSample`` messages built from the simulated
devices' samples. Each admitted run's reservation is pinned on its devices when it starts, as the gate does
(``[run] pin_reservation``), so outside consumers that arrive later cannot take it. The engine allocates each run's
true peak on its device (inside the pin, and beyond it when the truth is larger), so an estimate that is too low makes
vramgate run out of memory as well: the policy never sees the truth.

The policy plays the monitor as well: with every message it gives the core, it delivers the samples that changed,
and again, stamped with the time as a monitor's next tick would be, those that did not change but that the core
would otherwise find older than ``stale_after_s``. A sample the engine failed to refresh (a stale or failing
sample fault) is not re-stamped, so the core's staleness check sees it age.

When the admission core crashes (a fault), a new core is built and restored from an
:class:`~vramgate.messages.admission.AdmissionSnapshot` the policy keeps from what the core told it (the live
leases it granted and the requests still waiting, in their order), then given the latest samples: no lease and no
request is lost.

Runs keep their weights resident on their devices (``vramgate-cold``, ``keep_weights=False``: every run loads
them); how the admission core is told about idle resident weights is :mod:`vramgate.simulate._residency`'s.

Like a gate, the policy learns from the runs that end (the request core sends the lessons), on its optimizer's
estimator (:func:`~vramgate.simulate.run.make_policy` gives it a copy of the simulation's, so that the truth, which
is defined by the uncorrected figures, stays put): later plans carry the corrected time and its narrower interval.
"""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING

import msgspec

from vramgate.actors.estimator import EstimatorCore
from vramgate.actors.optimizer import OptimizerCore
from vramgate.messages._base import Message
from vramgate.messages.admission import (
    AdmissionSnapshot,
    AdmissionTick,
    CancelRequest,
    LeaseSnapshot,
    SubmitRequest,
)
from vramgate.messages.estimation import ObserveRun
from vramgate.messages.lifecycle import RequestAccepted, RequestAdmitted, RequestEnded, RunFinished
from vramgate.messages.planning import DeviceBudgets
from vramgate.messages.plans import Plan
from vramgate.messages.resources import ResourceSample
from vramgate.policy.admission import AdmissionCore
from vramgate.policy.admission_config import DEFAULT_ADMISSION, AdmissionConfig
from vramgate.policy.estimate import Estimator
from vramgate.policy.ledger import DeviceConfig
from vramgate.policy.optimize import Optimizer
from vramgate.policy.request import ADMISSION, CLIENT, ESTIMATOR, OPTIMIZER, RequestConfig, RequestCore, device_budgets
from vramgate.simulate._model import Job, Run
from vramgate.simulate._residency import without_idle_weights

if TYPE_CHECKING:
    from vramgate.simulate.engine import Simulation

#: The gate's ``[admission]`` defaults (samples older than 10 s stop admission on their device, aging 0.1 a second),
#: with a queue long enough for any trace: the simulator measures waiting, not rejections for a full queue.
SIMULATED_ADMISSION = msgspec.structs.replace(DEFAULT_ADMISSION, queue_limit=10_000_000)


class VramgatePolicy:
    """Plans from the real optimizer, admission by the real admission core."""

    def __init__(
        self,
        optimizer: Optimizer,
        config: AdmissionConfig = SIMULATED_ADMISSION,
        *,
        pin: bool = True,
        keep_weights: bool = True,
    ) -> None:
        self.optimizer = optimizer
        self.config = config
        self.pin = pin
        # With keep_weights, a run's weights stay resident on its devices after it (vramgate-cold: never).
        self.keep_weights = keep_weights
        self.name = "vramgate" if keep_weights else "vramgate-cold"
        estimator = optimizer.estimator
        if not isinstance(estimator, Estimator):
            raise TypeError("the vramgate policy plans with an Estimator (it learns from the runs)")
        # One estimator for both cores: the optimizer plans with what the estimator learns (so the request core's
        # lessons go to the estimator core only).
        self.requests = RequestCore(RequestConfig(admission=config, cleanup_after_run=False))
        self._answering: dict[str, EstimatorCore | OptimizerCore] = {
            ESTIMATOR: EstimatorCore(estimator),
            OPTIMIZER: OptimizerCore(optimizer),
        }
        self._budgets: DeviceBudgets | None = None
        self._budgets_seen: tuple[object, ...] = ()
        self._sim: Simulation | None = None
        self._core: AdmissionCore | None = None
        self._devices: tuple[DeviceConfig, ...] = ()
        self._jobs: dict[str, Job] = {}
        self._runs: dict[str, Run] = {}  # lease id -> run
        self._waiting: dict[str, Job] = {}
        self._submits: dict[str, SubmitRequest] = {}  # request id -> its submit, while it waits
        self._sent: list[int] = []
        self._sent_at: list[float] = []
        self._refresh_due = math.inf
        self._deadline = math.inf
        self.rebuilds = 0
        self.lost_leases = 0

    @property
    def sim(self) -> Simulation:
        assert self._sim is not None, "the policy is not attached to a simulation"
        return self._sim

    @property
    def core(self) -> AdmissionCore:
        assert self._core is not None
        return self._core

    def attach(self, sim: Simulation) -> None:
        self._sim = sim
        self._devices = tuple(
            DeviceConfig(
                index=i,
                gpu=spec.name,
                capacity_mb=spec.memory_mib,
                margin_mb=self.config.margin_mb(spec.memory_mib),
            )
            for i, spec in enumerate(sim.specs)
        )
        self._core = AdmissionCore(self._devices, self.config)
        self._forget_samples()

    # ------------------------------------------------------------------ events from the engine

    def arrive(self, job: Job, now: float) -> None:
        self._jobs[job.request_id] = job
        self._flush(now)  # the ledgers' latest figures decide what the devices offer
        seen = (tuple(self._sent), self.rebuilds, self.core.running)
        if seen != self._budgets_seen:  # the ledgers moved since the budgets were worked out
            self._budgets_seen = seen
            budgets = device_budgets(self.core.statistics().devices)
            if budgets != self._budgets:
                self._budgets = budgets
                self._tell(budgets, now)
        request = job.request
        if request.request_id != job.request_id:
            request = msgspec.structs.replace(request, request_id=job.request_id)
        self._waiting[job.request_id] = job
        self._tell(RequestAccepted(request_id=job.request_id, request=request), now)

    def cancel(self, job: Job, now: float) -> None:
        self._tell(CancelRequest(request_id=job.request_id, reason="the client cancelled"), now)

    def run_ended(self, run: Run, outcome: str, now: float) -> None:
        self._runs.pop(run.lease_id, None)
        error = "" if outcome == "ok" else f"the run ended with {outcome}"
        # the time less its load: estimates have none
        computed = (now - run.started) * (1.0 - run.load_work / run.work) if run.work > 0 else 0.0
        seconds = computed if computed > 0.0 else None
        finished = RunFinished(
            request_id=run.job.request_id,
            lease_id=run.lease_id,
            outcome=outcome,  # type: ignore[arg-type]
            seconds=seconds,
            error=error,
        )
        self._tell(finished, now)

    def pump(self, now: float) -> None:
        # New samples matter now only to waiting requests; otherwise they go in before the next decision (as do
        # the re-stamped ones: they change nothing but the samples' age, which matters only to a decision).
        if self.core.queue_length and self.sim.sample_versions() != self._sent and self._flush(now):
            return
        if now >= self._deadline:
            self._handle(AdmissionTick(), now)

    def core_crash(self, now: float) -> None:
        """The core crashed: restore a new one from the leases and waiting requests it had, then sample it."""
        self.rebuilds += 1
        snapshot = self.snapshot(now)
        self._core = AdmissionCore(self._devices, self.config)
        self._forget_samples()
        self._apply(self.core.restore(snapshot, now), now)
        core = self.core
        self.lost_leases += sum(
            1 for lease_id, run in self._runs.items() if core.lease_of(run.job.request_id) != lease_id
        )
        self._flush(now)

    def snapshot(self, now: float) -> AdmissionSnapshot:
        """What the policy knows the core holds: the leases it granted that are live, and the waiting submits."""
        leases = tuple(
            LeaseSnapshot(
                lease_id=lease_id,
                request_id=run.job.request_id,
                devices=run.devices,
                reservation_mb=run.planned_mb,
                plan=self._plan_of(run),
                admitted_at=run.started,
            )
            for lease_id, run in self._runs.items()
        )
        waiting = tuple(self._submits[request_id] for request_id in self._waiting)
        return AdmissionSnapshot(leases=leases, waiting=waiting, taken_at=now)

    def open_leases(self) -> int:
        """Leases the core still holds plus requests it still has waiting (0 once every request has ended)."""
        return self.core.running + self.core.queue_length + len(self._runs)

    # ------------------------------------------------------------------ helpers

    def _plan_of(self, run: Run) -> Plan:
        plan = run.extra.get("plan")
        assert isinstance(plan, Plan)
        return plan

    def _tell(self, message: Message, now: float) -> None:
        """Give the request core ``message``, and carry what it sends until nothing is left: its questions to the
        estimator and optimizer cores (their answers back to it), its submits, cancels and releases to admission
        (admission's events back to it), its ends before admission to the simulation."""
        pending: collections.deque[Message] = collections.deque((message,))
        while pending:
            for send in self.requests.handle(pending.popleft(), now):
                out = send.message
                answering = self._answering.get(send.to)
                if answering is not None:
                    if send.to == OPTIMIZER and type(out) is ObserveRun:
                        continue  # the optimizer plans with the estimator that learns it
                    pending.extend(reply.message for reply in answering.handle(out, now))
                elif send.to == ADMISSION:
                    if type(out) is SubmitRequest:
                        self._note_submit(out)
                    self._handle(out, now)
                elif send.to == CLIENT and type(out) is RequestEnded:
                    job = self._jobs.pop(out.request_id)
                    self._waiting.pop(out.request_id, None)
                    if out.state == "rejected":
                        self.sim.reject_upfront(job, out.reason)
                    else:
                        self.sim.finish(job, out.state, out.reason)

    def _note_submit(self, message: SubmitRequest) -> None:
        job = self._jobs[message.request_id]
        if message.max_wait_s is not None:
            deadline = job.arrival + message.max_wait_s
            self._deadline = min(self._deadline, deadline)
            self.sim.wake_at(deadline)
        self._submits[job.request_id] = message

    def _forget_samples(self) -> None:
        """A new core has seen no sample: the next delivery gives it every device."""
        devices = len(self.sim.specs)
        self._sent = [-1] * devices
        self._sent_at = [-math.inf] * devices
        self._refresh_due = -math.inf

    def _sample(self, now: float, *, ages: bool = True) -> ResourceSample | None:
        """The changed samples, and with ``ages`` the unchanged ones the core would find stale, re-stamped."""
        sim = self.sim
        versions = sim.sample_versions()
        sent = self._sent
        if versions == sent and (not ages or now < self._refresh_due):
            return None
        stale = self.config.stale_after_s
        refresh = stale if stale is not None and ages else math.inf
        sent_at = self._sent_at
        due = now - refresh
        current = sim.current_versions()
        changed = []
        for i, version in enumerate(versions):
            if version != sent[i] or (sent_at[i] <= due and version == current[i]):
                sent[i] = version
                sent_at[i] = now
                idle = sim.sample_reclaimable_mb(i)
                changed.append(without_idle_weights(sim.sample(i), idle) if idle else sim.sample(i))
        if ages:
            self._refresh_due = min(sent_at) + refresh
        if not changed:
            return None
        return ResourceSample(at=now, devices=tuple(changed))

    def _flush(self, now: float, *, ages: bool = True) -> bool:
        """Give the core the samples that changed since it last had them (with ``ages``, and those it would find
        stale); ``False`` when there were none."""
        sample = self._sample(now, ages=ages)
        if sample is None:
            return False
        self._deliver(sample, now)
        return True

    def _handle(self, message: Message, now: float) -> None:
        """Handle a decision message, with the latest samples delivered first. Samples' ages matter only to a
        decision that places work: a submit, or anything while requests wait."""
        self._flush(now, ages=bool(self.core.queue_length) or isinstance(message, SubmitRequest))
        self._deliver(message, now)

    def _deliver(self, message: Message, now: float) -> None:
        self._apply(self.core.handle(message, now), now)

    def _apply(self, events: list[Message], now: float) -> None:
        """Act on admission's events, then tell the request core (as admission's actor tells the gate)."""
        self._act(events, now)
        for event in events:
            self._tell(event, now)

    def _act(self, events: list[Message], now: float) -> None:
        """Act on the admission core's events: start admitted runs, record ends."""
        sim = self.sim
        for out in events:
            if isinstance(out, RequestAdmitted):
                job = self._jobs[out.request_id]
                self._waiting.pop(out.request_id, None)
                self._submits.pop(out.request_id, None)
                run = sim.start(
                    job,
                    out.devices,
                    out.plan.params,
                    out.reservation_mb,
                    lease_id=out.lease_id,
                    level=out.plan.level,
                    pin=self.pin,
                    keep_weights=self.keep_weights,
                )
                run.extra["plan"] = out.plan
                self._runs[out.lease_id] = run
            elif isinstance(out, RequestEnded):
                job = self._jobs.pop(out.request_id)
                self._waiting.pop(out.request_id, None)
                self._submits.pop(out.request_id, None)
                if out.state == "rejected" and job.first_start is None:
                    sim.reject_upfront(job, out.reason)
                else:
                    sim.finish(job, out.state, out.reason)
        if self._deadline <= now:
            self._deadline = math.inf if not self._waiting else self._next_deadline()

    def _next_deadline(self) -> float:
        deadlines = [
            j.arrival + j.request.max_wait_s for j in self._waiting.values() if j.request.max_wait_s is not None
        ]
        return min(deadlines, default=math.inf)
