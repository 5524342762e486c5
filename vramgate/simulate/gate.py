"""The ``vramgate`` policy: the gate's own cores, fed by the simulator.

Each request gets one plan per GPU model from the real :class:`~vramgate.policy.optimize.Optimizer` (at the
budget a dedicated device offers: capacity less the safety margin and what the monitor shows in use by others
when idle), and is submitted to the real :class:`~vramgate.policy.admission.AdmissionCore`, which is fed
``ResourceSample`` messages built from the simulated devices' samples. The engine allocates each admitted run's
true peak on its device, so an estimate that is too low makes vramgate run out of memory as well: the policy
never sees the truth.

When the admission core crashes (a fault), a new core is built, the live leases are submitted to it again pinned
to their devices (before any sample, so that their memory is not mistaken for other processes'), then the
latest samples, then every waiting request in its original order: no request is lost.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import msgspec

from vramgate.errors import VramgateError
from vramgate.messages._base import Message
from vramgate.messages.admission import AdmissionTick, CancelRequest, ReleaseLease, SubmitRequest
from vramgate.messages.lifecycle import RequestAdmitted, RequestEnded
from vramgate.messages.plans import Plan
from vramgate.messages.requests import GenerationRequest
from vramgate.messages.resources import ResourceSample
from vramgate.policy.admission import AdmissionConfig, AdmissionCore
from vramgate.policy.ledger import DeviceConfig, default_margin_mb
from vramgate.policy.optimize import Optimizer
from vramgate.simulate._model import Job, Run

if TYPE_CHECKING:
    from vramgate.simulate.engine import Simulation

#: Samples reach the core at every decision, so a device is never refused for stale samples in the simulation
#: (stale and failing samples are injected as faults instead, and the ledger keeps its last figures). A rebuilt
#: core also needs this to take back the live leases before its first sample.
SIMULATED_ADMISSION = AdmissionConfig(stale_after_s=None, queue_limit=10_000_000)


class VramgatePolicy:
    """Plans from the real optimizer, admission by the real admission core."""

    name = "vramgate"

    def __init__(self, optimizer: Optimizer, config: AdmissionConfig = SIMULATED_ADMISSION) -> None:
        self.optimizer = optimizer
        self.config = config
        self._sim: Simulation | None = None
        self._core: AdmissionCore | None = None
        self._devices: tuple[DeviceConfig, ...] = ()
        self._plans: dict[tuple[GenerationRequest, str], Plan] = {}
        self._budgets: dict[str, int] = {}
        self._jobs: dict[str, Job] = {}
        self._runs: dict[str, Run] = {}  # lease id -> run
        self._waiting: dict[str, Job] = {}
        self._sent: list[int] = []
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
            DeviceConfig(index=i, gpu=spec.name, capacity_mb=spec.memory_mib) for i, spec in enumerate(sim.specs)
        )
        for i, spec in enumerate(sim.specs):
            if spec.name not in self._budgets:
                idle_others = sim.measured_other_mb(i)
                self._budgets[spec.name] = max(0, spec.memory_mib - default_margin_mb(spec.memory_mib) - idle_others)
        self._core = AdmissionCore(self._devices, self.config)
        self._sent = [-1] * len(sim.specs)

    # ------------------------------------------------------------------ events from the engine

    def arrive(self, job: Job, now: float) -> None:
        self._jobs[job.request_id] = job
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
        reason = "" if outcome == "ok" else f"the run ended with {outcome}"
        self._handle(ReleaseLease(lease_id=run.lease_id, outcome=outcome, reason=reason), now)  # type: ignore[arg-type]

    def pump(self, now: float) -> None:
        # New samples matter now only to waiting requests; otherwise they go in before the next decision.
        if self.core.queue_length and self._flush(now):
            return
        if now >= self._deadline:
            self._handle(AdmissionTick(), now)

    def core_crash(self, now: float) -> None:
        """The core crashed: rebuild it from the live leases, the latest samples and the waiting requests."""
        self.rebuilds += 1
        self._core = AdmissionCore(self._devices, self.config)
        self._sent = [-1] * len(self.sim.specs)
        live = sorted(self._runs.values(), key=lambda r: (r.started, r.job.index))
        self._runs = {}
        for run in live:
            job = run.job
            plan = msgspec.structs.replace(self._plan_of(run), budget_mb=None)
            message = SubmitRequest(
                request_id=job.request_id,
                plans={str(d): plan for d in run.devices},
                priority=job.priority,
                arrival=job.arrival,
                fallback=False,
            )
            admitted = [m for m in self.core.handle(message, now) if isinstance(m, RequestAdmitted)]
            if not admitted:
                self.lost_leases += 1
                continue
            run.lease_id = admitted[0].lease_id
            self._runs[run.lease_id] = run
        self._flush(now)
        waiting = sorted(self._waiting.values(), key=lambda j: (j.arrival, j.index))
        for job in waiting:
            self._submit(job, self._plans_for(job.request), now)

    def open_leases(self) -> int:
        """Leases the core still holds plus requests it still has waiting (0 once every request has ended)."""
        return self.core.running + self.core.queue_length + len(self._runs)

    # ------------------------------------------------------------------ helpers

    def _plan_of(self, run: Run) -> Plan:
        plan = run.extra.get("plan")
        assert isinstance(plan, Plan)
        return plan

    def _plans_for(self, request: GenerationRequest) -> dict[str, Plan]:
        key_request = msgspec.structs.replace(request, request_id="", priority=0, prompt="", max_wait_s=None)
        plans: dict[str, Plan] = {}
        for gpu_name, budget in self._budgets.items():
            key = (key_request, gpu_name)
            plan = self._plans.get(key)
            if plan is None:
                plan = self._plans[key] = self.optimizer.optimize(
                    request, gpu=gpu_name, budget_mb=budget, ram_budget_mb=None, max_level=request.max_level
                )
            plans[gpu_name] = plan
        return plans

    def _submit(self, job: Job, plans: dict[str, Plan], now: float) -> None:
        fitting = {name: plan for name, plan in plans.items() if plan.fits}
        message = SubmitRequest(
            request_id=job.request_id,
            plans=fitting or plans,
            priority=job.priority,
            arrival=job.arrival,
            max_wait_s=job.request.max_wait_s,
        )
        if job.request.max_wait_s is not None:
            deadline = job.arrival + job.request.max_wait_s
            self._deadline = min(self._deadline, deadline)
            self.sim.wake_at(deadline)
        self._handle(message, now)

    def _sample(self, now: float) -> ResourceSample | None:
        sim = self.sim
        versions = sim.sample_versions()
        sent = self._sent
        if versions == sent:
            return None
        changed = []
        for i, version in enumerate(versions):
            if version != sent[i]:
                sent[i] = version
                changed.append(sim.sample(i))
        return ResourceSample(at=now, devices=tuple(changed))

    def _flush(self, now: float) -> bool:
        """Give the core the samples that changed since it last had them; ``False`` when none did."""
        sample = self._sample(now)
        if sample is None:
            return False
        self._deliver(sample, now)
        return True

    def _handle(self, message: Message, now: float) -> None:
        """Handle a decision message, with the latest samples delivered first."""
        self._flush(now)
        self._deliver(message, now)

    def _deliver(self, message: Message, now: float) -> None:
        sim = self.sim
        for out in self.core.handle(message, now):
            if isinstance(out, RequestAdmitted):
                job = self._jobs[out.request_id]
                self._waiting.pop(out.request_id, None)
                run = sim.start(
                    job, out.devices, out.plan.params, out.reservation_mb, lease_id=out.lease_id, level=out.plan.level
                )
                run.extra["plan"] = out.plan
                self._runs[out.lease_id] = run
            elif isinstance(out, RequestEnded):
                job = self._jobs.pop(out.request_id)
                self._waiting.pop(out.request_id, None)
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
