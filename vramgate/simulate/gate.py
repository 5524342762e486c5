"""The ``vramgate`` policy: the gate's own cores, fed by the simulator.

Each request gets one plan per GPU model from the real :class:`~vramgate.policy.optimize.Optimizer`, planned as the
gate plans (:meth:`~vramgate.policy.admission.AdmissionCore.plan_budgets`: the best device's capacity less the safety
margin and others' use now, and when nothing fits there, less only the memory others never gave back, such as the CUDA
context); the fitting plans are submitted (without falling back to another GPU kind's plan, as the gate submits) to
the real :class:`~vramgate.policy.admission.AdmissionCore` with the gate's ``[admission]`` defaults, which is fed
``ResourceSample`` messages built from the simulated devices' samples. Each admitted run's reservation is pinned on
its devices when it starts, as the gate does
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

Like a gate, the policy learns each GPU's times from the runs that end (``ok``), on its optimizer's estimator
(:func:`~vramgate.simulate.run.make_policy` gives it a copy of the simulation's, so that the truth, which is
defined by the uncorrected figures, stays put): later plans carry the corrected time and its narrower interval.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import msgspec

from vramgate.errors import DoesNotFit, VramgateError
from vramgate.messages._base import Message
from vramgate.messages.admission import (
    AdmissionSnapshot,
    AdmissionTick,
    CancelRequest,
    LeaseSnapshot,
    ReleaseLease,
    SubmitRequest,
)
from vramgate.messages.lifecycle import RequestAdmitted, RequestEnded, RunFinished
from vramgate.messages.plans import Plan
from vramgate.messages.requests import GenerationRequest
from vramgate.messages.resources import ResourceSample
from vramgate.policy.admission import AdmissionCore
from vramgate.policy.admission_config import DEFAULT_ADMISSION, AdmissionConfig
from vramgate.policy.estimate import Estimator
from vramgate.policy.ledger import DeviceConfig
from vramgate.policy.optimize import Optimizer
from vramgate.simulate._model import Job, Run
from vramgate.simulate._residency import without_idle_weights

if TYPE_CHECKING:
    from vramgate.simulate.engine import Simulation

#: The gate's ``[admission]`` defaults (the same struct: aging, staleness, placement, margins), but for a queue
#: long enough for any trace: the simulator measures waiting, not rejections for a full queue.
SIMULATED_ADMISSION = msgspec.structs.replace(DEFAULT_ADMISSION, queue_limit=10_000_000)


class VramgatePolicy:
    """Plans from the real optimizer, admission by the real admission core."""

    name = "vramgate"

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
        self._sim: Simulation | None = None
        self._core: AdmissionCore | None = None
        self._devices: tuple[DeviceConfig, ...] = ()
        self._plans: dict[tuple[GenerationRequest, str, int], Plan] = {}
        self._jobs: dict[str, Job] = {}
        self._runs: dict[str, Run] = {}  # lease id -> run
        self._waiting: dict[str, Job] = {}
        self._submitted: dict[str, SubmitRequest] = {}  # request id -> its submit, while it waits
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
        self._flush(now)  # the ledgers' latest figures decide what a device can ever give
        try:
            plans = self._plans_for(job.request)
        except VramgateError as exc:
            self.sim.reject_upfront(job, f"preflight: {exc}")
            return
        self._waiting[job.request_id] = job
        self._submit(job, plans, now)

    def cancel(self, job: Job, now: float) -> None:
        self._handle(CancelRequest(request_id=job.request_id, reason="the client cancelled"), now)

    def run_ended(self, run: Run, outcome: str, now: float) -> None:
        self._runs.pop(run.lease_id, None)
        if outcome == "ok":
            self._learn(run, now)
        reason = "" if outcome == "ok" else f"the run ended with {outcome}"
        self._handle(ReleaseLease(lease_id=run.lease_id, outcome=outcome, reason=reason), now)  # type: ignore[arg-type]

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
        waiting = tuple(self._submitted[request_id] for request_id in self._waiting)
        return AdmissionSnapshot(leases=leases, waiting=waiting, taken_at=now)

    def open_leases(self) -> int:
        """Leases the core still holds plus requests it still has waiting (0 once every request has ended)."""
        return self.core.running + self.core.queue_length + len(self._runs)

    # ------------------------------------------------------------------ helpers

    def _learn(self, run: Run, now: float) -> None:
        """Teach the estimator the time of a run that ended well; plans made before it moved are dropped."""
        estimator = self.optimizer.estimator
        computed = (now - run.started) * (1.0 - run.load_work / run.work)  # the time less its load: estimates have none
        if not isinstance(estimator, Estimator) or computed <= 0.0:
            return
        plan = self._plan_of(run)
        finished = RunFinished(request_id=run.job.request_id, lease_id=run.lease_id, outcome="ok", seconds=computed)
        gpu, world = self.sim.specs[run.devices[0]].name, plan.params.options.gpus
        before = estimator.learned.times.interval(plan.params.model, gpu, 1.0, world)
        estimator.observe(finished, plan)
        after = estimator.learned.times.interval(plan.params.model, gpu, 1.0, world)
        if any(abs(b - a) > 0.005 * a for a, b in zip(after, before, strict=True)):
            self._plans.clear()

    def _plan_of(self, run: Run) -> Plan:
        plan = run.extra.get("plan")
        assert isinstance(plan, Plan)
        return plan

    def _plans_for(self, request: GenerationRequest) -> dict[str, Plan]:
        """The plans a gate would submit, one per GPU kind that has a fitting one (as
        :meth:`vramgate.gate.Gate._pipeline` plans): at the budgets the devices have now, less others' use, and
        when no kind has a fitting plan there, at the budgets they have once others leave. Raises
        :class:`~vramgate.errors.DoesNotFit` for the closest plan when nothing fits either way."""
        key_request = msgspec.structs.replace(request, request_id="", priority=0, prompt="", max_wait_s=None)
        now = self.core.plan_budgets()
        attempts = [now]
        when_others_leave = self.core.plan_budgets(others=False)
        if when_others_leave != now:
            attempts.append(when_others_leave)
        closest: Plan | None = None
        for budgets in attempts:
            plans: dict[str, Plan] = {}
            for gpu_name, budget in sorted(budgets.items()):
                key = (key_request, gpu_name, budget)
                plan = self._plans.get(key)
                if plan is None:
                    plan = self._plans[key] = self.optimizer.optimize(
                        request, gpu=gpu_name, budget_mb=budget, ram_budget_mb=None, max_level=request.max_level
                    )
                if plan.fits:
                    plans[gpu_name] = plan
                elif closest is None or plan.requirement.vram_mb < closest.requirement.vram_mb:
                    closest = plan
            if plans:
                return plans
        if closest is None:
            raise DoesNotFit("no usable GPU", needed_mb=0)
        raise self.optimizer.rejection(closest)

    def _submit(self, job: Job, plans: dict[str, Plan], now: float) -> None:
        message = SubmitRequest(
            request_id=job.request_id,
            plans=plans,
            priority=job.priority,
            arrival=job.arrival,
            max_wait_s=job.request.max_wait_s,
            fallback=False,
        )
        if job.request.max_wait_s is not None:
            deadline = job.arrival + job.request.max_wait_s
            self._deadline = min(self._deadline, deadline)
            self.sim.wake_at(deadline)
        self._submitted[job.request_id] = message
        self._handle(message, now)

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
        """Act on the core's events: start admitted runs, record ends."""
        sim = self.sim
        for out in events:
            if isinstance(out, RequestAdmitted):
                job = self._jobs[out.request_id]
                self._waiting.pop(out.request_id, None)
                self._submitted.pop(out.request_id, None)
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
                self._submitted.pop(out.request_id, None)
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
