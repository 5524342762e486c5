"""The embedding API: open a gate, submit requests, hold leases while runs use the memory they were admitted for.

::

    async with vramgate.open_gate(config) as gate:            # starts the actor system; stops it on exit
        async with gate.admit(request) as lease:              # preflight, optimize, wait for admission
            run_generation(lease.params, device=lease.device) # the server's own code
            lease.report(peak_vram_mb=..., outcome="ok")      # optional: observed peak

A request flows through the actors as messages: the estimator's preflight (``RequirementEstimated``), the
optimizer's plan for each kind of GPU the gate manages (``PlanOptimized``), admission's ledger and queue
(``RequestQueued`` / ``RequestAdmitted``), and after the run ``RunFinished`` to the estimator (it learns) and
to cleanup, and ``ReleaseLease`` to admission. Every message is recorded when the gate has a log.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import anyio
import msgspec

from vramgate._residency import EvictHandler, GateResidency
from vramgate._ticket import Lease, RequestCancelled, RequestFailed, Ticket
from vramgate.actors import Actor, ActorSystem, Envelope, Recorder
from vramgate.actors.admission import AdmissionActor, admission_actor
from vramgate.actors.cleanup import CleanupActor
from vramgate.actors.estimator import estimator_actor
from vramgate.actors.monitor import MonitorActor
from vramgate.actors.optimizer import optimizer_actor
from vramgate.clock import Clock, MonotonicClock
from vramgate.config import GateConfig, parse_size_mb
from vramgate.errors import ActorStopped, DoesNotFit, InvalidParameter, QueueFull
from vramgate.hardware import DeviceSet, SimulatedGpu, detect
from vramgate.messages import (
    CleanupReport,
    CleanupRequest,
    GenerationRequest,
    LeaseReleased,
    Message,
    ObservedPeak,
    OptimizationSuggestion,
    Outcome,
    Plan,
    PlanOptimized,
    RequestAccepted,
    RequestAdmitted,
    RequestEnded,
    RequestQueued,
    RequestRejected,
    ResourceRequirement,
    ResourceSample,
    RunFinished,
    RunParams,
    RunProgress,
    decode_json,
)
from vramgate.messages.admission import AdmissionStatistics, CancelRequest, ReleaseLease, SubmitRequest
from vramgate.messages.estimation import CorrectionLearned, EstimateRequirement, ObserveRun
from vramgate.messages.gate import DeviceStatistics, GateStatistics
from vramgate.messages.optimization import OptimizePlan, PlanDoesNotFit, ShrinkPlan
from vramgate.messages.quote import Quote
from vramgate.messages.residency import EvictModel
from vramgate.policy._standing import Standing
from vramgate.policy.admission import AdmissionConfig
from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG
from vramgate.policy.learning import copy_estimator
from vramgate.policy.ledger import DeviceConfig

T = TypeVar("T")
_log = logging.getLogger("vramgate.gate")
#: The error a run that was cancelled reports (``RunFinished.error``): a fixed phrase, so that the message log holds
#: no cancel scope's address and a replay of it compares byte for byte.
CANCELLED_RUN = "the run was cancelled"

#: Actor names (they are the senders and recipients in the message log).
MONITOR, ESTIMATOR, OPTIMIZER, ADMISSION, CLEANUP, ROUTER = (
    "monitor",
    "estimator",
    "optimizer",
    "admission",
    "cleanup",
    "gate",
)
#: How long the gate waits for a core to answer a preflight or plan ask (real seconds).
ASK_TIMEOUT_S = 30.0


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is a GPU out-of-memory error (torch's, a CUDA ``RuntimeError``, or a simulated one)."""
    from vramgate.hardware import SimulatedOutOfMemory

    if isinstance(error, SimulatedOutOfMemory):
        return True
    torch = sys.modules.get("torch")
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, (RuntimeError, MemoryError)) and "out of memory" in str(error).lower()


class _Router(Actor[Message]):
    """The gate's actor: receives lifecycle events, samples and cleanup reports, and hands them to tickets."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def receive(self, message: Message, envelope: Envelope) -> None:
        await self.gate._route(message)


class Gate:
    """A running gate. Use :func:`open_gate`; do not construct it directly."""

    def __init__(
        self,
        config: GateConfig,
        devices: DeviceSet,
        first_sample: ResourceSample,
        *,
        clock: Clock,
        estimator: Estimator,
        on_evict: EvictHandler | None = None,
    ) -> None:
        #: Resident models: what the server declared loaded, and who carries out evictions.
        self.residency = GateResidency(self, on_evict)
        self.declare_loaded = self.residency.declare_loaded
        self.declare_unloaded = self.residency.declare_unloaded
        self.config = config
        self.clock = clock
        self.devices = devices
        self.estimator = estimator
        self.latest_sample = first_sample
        self._simulated = {gpu.index: gpu for gpu in devices.simulated}
        self._device_configs = _device_configs(config, first_sample)
        self.ram_budget_mb = _ram_budget(config, first_sample)
        self._tickets: dict[str, Ticket] = {}
        self._counter = 0
        self._slots = anyio.Semaphore(config.admission.queue_limit)
        self._system: ActorSystem | None = None
        self._recorder: Recorder | None = None
        self._admission: AdmissionActor | None = None
        self._cleanup_actor: CleanupActor | None = None
        self._closing = False
        self._answers: dict[bytes, Message] = {}
        self._corrections: dict[tuple[str, str], float] = {}
        self._counts = dict.fromkeys(
            (
                "submitted",
                "admitted",
                "rejected",
                "completed",
                "failed",
                "cancelled",
                "timed_out",
                "ooms",
                "oom_retries",
                "cleanups",
            ),
            0,
        )
        self._cleanup_freed_mb = 0
        self._wait_total_s = 0.0
        self._wait_max_s = 0.0
        self._estimate_ratios: list[float] = []
        self._listeners: list[Callable[[Message], None]] = []

    # ================================================================== public API

    @property
    def device_configs(self) -> tuple[DeviceConfig, ...]:
        """The devices the gate admits on: index, GPU, capacity and safety margin."""
        return self._device_configs

    @property
    def queue_length(self) -> int:
        admission = self._admission
        return admission.admission.queue_length if admission is not None else 0

    def simulated_device(self, index: int) -> SimulatedGpu | None:
        """The simulated GPU with this index, or ``None`` for a real device."""
        return self._simulated.get(index)

    def add_listener(self, listener: Callable[[Message], None]) -> None:
        """Call ``listener`` with every lifecycle event, sample and cleanup report the gate routes."""
        self._listeners.append(listener)

    def decode_request(self, body: bytes | str) -> GenerationRequest:
        """Decode a request body; bad input raises :class:`~vramgate.errors.DecodeError` naming the field."""
        return decode_json(body, GenerationRequest)

    async def submit(self, request: GenerationRequest) -> Ticket:
        """Preflight, optimize and queue ``request``; wait while the queue is full (backpressure).

        Returns a :class:`Ticket` whose events follow the request to its terminal state. A request that cannot
        run anywhere ends at once (the ticket's ``wait_admitted`` raises the typed reason).
        """
        ticket = self._accept(request)
        try:
            await self._slots.acquire()
            ticket.holds_slot = True
            await self._pipeline(ticket)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abort(ticket, "the client stopped waiting")
            raise
        return ticket

    def submit_nowait(self, request: GenerationRequest) -> Ticket:
        """Like :meth:`submit`, but raise :class:`~vramgate.errors.QueueFull` at once when the queue is full.

        The preflight and planning continue in the gate's task group; the ticket reports them as events.
        """
        self._check_open()
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            raise QueueFull(self.retry_after_s(), queue_length=self.queue_length) from None
        try:
            ticket = self._accept(request)
        except BaseException:
            self._slots.release()
            raise
        ticket.holds_slot = True
        system = self._system
        assert system is not None
        system._start_task(lambda: self._pipeline(ticket))
        return ticket

    @asynccontextmanager
    async def admit(self, request: GenerationRequest) -> AsyncIterator[Lease]:
        """Wait for admission and hold the lease for the block; it is released on every exit path.

        An exception in the block is reported as the run's outcome (``oom`` for a GPU out-of-memory error,
        ``cancelled`` for a cancellation, else ``error``) and re-raised.
        """
        ticket = await self.submit(request)
        try:
            lease = await ticket.wait_admitted()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abort(ticket, "the client stopped waiting")
            raise
        async with self.hold(lease) as held:
            yield held

    @asynccontextmanager
    async def hold(self, lease: Lease) -> AsyncIterator[Lease]:
        """Hold a lease (from :meth:`Ticket.wait_admitted`) for the block; release it on every exit path."""
        try:
            yield lease
        except BaseException as error:
            with anyio.CancelScope(shield=True):
                await self._finish(lease, error)
            raise
        else:
            with anyio.CancelScope(shield=True):
                await self._finish(lease, None)

    async def run(self, request: GenerationRequest, runner: Callable[[Lease], Awaitable[T]]) -> T:
        """Admit ``request``, await ``runner(lease)`` inside the lease, and return its result.

        With ``run.retry_on_oom`` configured, an out-of-memory failure is re-planned one level further (at least
        10% less VRAM, within the request's ``max_level``) and retried, at most ``run.max_oom_retries`` times.
        """
        attempts = self.config.run.max_oom_retries if self.config.run.retry_on_oom else 0
        current = request
        for attempt in range(attempts + 1):
            try:
                async with self.admit(current) as lease:
                    return await runner(lease)
            except Exception as error:
                if attempt >= attempts or not is_oom(error):
                    raise
                plan = lease.plan
                current = await self._shrink(request, plan, attempt + 1)
        raise AssertionError("unreachable")

    async def wait_idle(self) -> None:
        """Wait until every message sent so far was handled (a release has reached the ledger, say)."""
        await self._require_system().wait_idle()

    def plan_budgets(self, *, others: bool = True) -> dict[str, int]:
        """VRAM per GPU that a plan may need, for each kind of GPU: the best device's capacity less its safety
        margin and less what others use on it now (with ``others``) or what they never gave back (without:
        the ledger's ``attainable_mb``), rounded down to 256 MiB so that small changes in others' use do not
        re-plan every request. A plan within it can be admitted once this system's own leases end (and, without
        ``others``, once the other processes that may leave have left)."""
        admission = self._admission
        if admission is None:
            return {}
        budgets: dict[str, int] = {}
        for ledger in admission.admission.statistics().devices:
            if ledger.lost:
                continue
            used = ledger.others_mb if others else ledger.permanent_mb
            budget = max(0, ledger.capacity_mb - ledger.margin_mb - used) // 256 * 256
            budgets[ledger.gpu] = max(budgets.get(ledger.gpu, 0), budget)
        return budgets

    def retry_after_s(self) -> float:
        """When the queue is expected to have room again, from the queue and the running leases' expected ends."""
        admission = self._admission
        if admission is None:
            return 1.0
        return admission.admission.retry_after(self.clock.now())

    def queue_position(self, request_id: str) -> int | None:
        """Shorthand for ``standing(request_id).position`` (``None`` when it is not waiting), without working out
        what the request waits for.

        A ticket's ``position`` is where its request was queued; this is where it is as the queue moves.
        """
        admission = self._admission
        return None if admission is None else admission.admission.queue_position(request_id)

    async def quote(self, request: GenerationRequest, *, time_scale: float = 1.0, node: str = "") -> Quote:
        """What ``request`` would get here now (plan, memory, expected start and finish); reserves nothing.

        ``time_scale`` scales the plans' estimated seconds (for runs in compressed time). See :mod:`vramgate._quote`.
        """
        from vramgate._quote import quote

        return await quote(self, request, time_scale=time_scale, node=node)

    async def submit_or_decline(
        self, request: GenerationRequest, *, within_s: float | None = 0.0, time_scale: float = 1.0, node: str = ""
    ) -> Ticket:
        """Submit ``request`` if it is expected to be admitted within ``within_s`` seconds (0: at once), else raise
        :class:`vramgate._quote.Declined` having kept and reserved nothing."""
        from vramgate._quote import submit_or_decline

        return await submit_or_decline(self, request, within_s=within_s, time_scale=time_scale, node=node)

    def statistics(self) -> GateStatistics:
        """Per-device ledgers and samples, the queue, waits, admissions, rejections, OOMs and cleanups."""
        admission = self._admission
        core_stats: AdmissionStatistics | None = admission.admission.statistics() if admission is not None else None
        latest = {d.index: d for d in self.latest_sample.devices}
        devices: list[DeviceStatistics] = []
        for ledger in core_stats.devices if core_stats is not None else ():
            sample = latest.get(ledger.index)
            devices.append(
                DeviceStatistics(
                    ledger=ledger,
                    simulated=ledger.index in self._simulated,
                    measured_used_mb=sample.used_mb if sample is not None else None,
                    measured_free_mb=sample.free_mb if sample is not None else None,
                )
            )
        ratios = sorted(self._estimate_ratios)
        stall = admission.admission.stalled(self.clock.now()) if admission is not None else None
        return GateStatistics(
            devices=tuple(devices),
            queue_length=core_stats.queue_length if core_stats is not None else 0,
            queue_limit=self.config.admission.queue_limit,
            running=core_stats.running if core_stats is not None else 0,
            tickets=len(self._tickets),
            mean_wait_s=self._wait_total_s / self._counts["admitted"] if self._counts["admitted"] else 0.0,
            max_wait_s=self._wait_max_s,
            cleanup_freed_mb=self._cleanup_freed_mb,
            estimate_ratio_p50=ratios[len(ratios) // 2] if ratios else None,
            estimate_ratio_max=ratios[-1] if ratios else None,
            queue_stalled_s=max(0.0, self.clock.now() - stall[0]) if stall is not None else None,
            stall_reason=stall[1] if stall is not None else "",
            log=self._recorder.statistics() if self._recorder is not None else None,
            host=core_stats.host if core_stats is not None else None,
            evictions=core_stats.evictions if core_stats is not None else 0,
            **self._counts,
        )

    def standing(self, request_id: str) -> Standing | None:
        """Where a waiting request stands in admission's queue: position, what it waits for, expected start."""
        admission = self._admission
        return admission.admission.standing(request_id, self.clock.now()) if admission is not None else None

    def ticket(self, request_id: str) -> Ticket | None:
        """The ticket of a request that has not ended yet."""
        return self._tickets.get(request_id)

    # ------------------------------------------------------------------ the seed's convenience calls

    def check_vram_availability(self, required_mb: int, *, device: int | None = None) -> tuple[bool, str]:
        """Whether ``required_mb`` fits now on ``device`` (or on any device), with a sentence saying why."""
        stats = self.statistics()
        rows = [d.ledger for d in stats.devices if device is None or d.ledger.index == device]
        if not rows:
            return False, f"no device {device}" if device is not None else "no GPU is managed"
        best = max(rows, key=lambda r: r.free_mb)
        if best.free_mb >= required_mb:
            return True, f"{required_mb} MiB fits on device {best.index} ({best.free_mb} MiB free for admission)"
        return False, (
            f"{required_mb} MiB does not fit: at most {best.free_mb} MiB is free for admission "
            f"(device {best.index}: capacity {best.capacity_mb}, margin {best.margin_mb}, "
            f"others {best.others_mb}, reserved {best.reserved_mb} MiB)"
        )

    def estimate_resource_requirements(
        self,
        model_type: str,
        resolution: str,
        steps: int | None = None,
        duration: float | None = None,
        lora_count: int = 0,
        *,
        gpu: str | None = None,
    ) -> ResourceRequirement:
        """The requirement of a run given the seed's way: model, ``"720p"``-style resolution, steps, seconds."""
        from vramgate.compat import request_from_legacy

        request = request_from_legacy(self.estimator, model_type, resolution, steps, duration, lora_count)
        target = gpu or (self._device_configs[0].gpu if self._device_configs else "H100-80GB")
        return self.estimator.estimate(self.estimator.resolve(request), target)

    def optimize_parameters_for_resources(
        self, params: GenerationRequest | dict[str, Any]
    ) -> tuple[RunParams, list[OptimizationSuggestion]]:
        """The seed's call: the parameters that fit the largest managed device, and the changes made."""
        from vramgate.policy.optimize import Optimizer

        request = params if isinstance(params, GenerationRequest) else msgspec.convert(params, GenerationRequest)
        budgets = self.plan_budgets()
        if not budgets:
            raise DoesNotFit("the gate manages no usable GPU")
        gpu, budget = max(budgets.items(), key=lambda item: (item[1], item[0]))
        plan = Optimizer(self.estimator).optimize(
            request, gpu=gpu, budget_mb=budget, ram_budget_mb=self.ram_budget_mb, max_level=request.max_level
        )
        return plan.params, list(plan.suggestions)

    async def cleanup_memory(self, aggressive: bool = False, *, device: int | None = None) -> CleanupReport:
        """Run a cleanup now and report what it freed."""
        system = self._require_system()
        reply = await system.ref(CLEANUP).ask(
            CleanupRequest(device=device, aggressive=aggressive), timeout=ASK_TIMEOUT_S, sender=ROUTER
        )
        assert isinstance(reply, CleanupReport)
        self._counts["cleanups"] += 1
        self._cleanup_freed_mb += reply.freed_mb
        return reply

    # ================================================================== the pipeline

    def _check_open(self) -> None:
        if self._closing or self._system is None or self._system.state != "running":
            raise ActorStopped("the gate is closed")

    def _require_system(self) -> ActorSystem:
        self._check_open()
        system = self._system
        assert system is not None
        return system

    def _accept(self, request: GenerationRequest) -> Ticket:
        self._check_open()
        request_id = request.request_id
        if not request_id:
            self._counter += 1
            request_id = f"r{self._counter:06d}"
            while request_id in self._tickets:
                self._counter += 1
                request_id = f"r{self._counter:06d}"
            request = msgspec.structs.replace(request, request_id=request_id)
        elif request_id in self._tickets:
            raise InvalidParameter("request_id", request_id, "a request with this id has not ended yet")
        ticket = Ticket(self, request)
        self._tickets[request_id] = ticket
        self._counts["submitted"] += 1
        return ticket

    async def _pipeline(self, ticket: Ticket) -> None:
        """Preflight, plan on each kind of GPU, and submit to admission. Events reach the ticket via the router."""
        system = self._require_system()
        request = ticket.request
        rid = ticket.request_id
        router = system.ref(ROUTER)
        ticket.pipeline_running = True
        try:
            await router.tell(RequestAccepted(request_id=rid, request=request), sender=ROUTER)
            budgets = self.plan_budgets()
            if not budgets:
                await self._reject(ticket, "does_not_fit", "the gate manages no usable GPU")
                return
            largest = max(budgets.items(), key=lambda item: (item[1], item[0]))[0]
            estimated = await self._ask_cached(
                ESTIMATOR, EstimateRequirement(request=_anonymous(request), gpu=largest), rid
            )
            if isinstance(estimated, RequestRejected):
                await router.tell(estimated, sender=ROUTER)
                await self._end(ticket, "rejected", estimated.reason)
                return
            plans: dict[str, Plan] = {}
            closest: PlanDoesNotFit | None = None
            # Plan for what the devices have now (less others' use); if nothing fits that, plan for the devices
            # as they are when others leave, and wait for them (bounded by the request's max_wait_s).
            attempts = [budgets]
            when_others_leave = self.plan_budgets(others=False)
            if when_others_leave != budgets:
                attempts.append(when_others_leave)
            for attempt in attempts:
                for gpu, budget in sorted(attempt.items()):
                    answer = await self._plan(request, gpu, budget)
                    if isinstance(answer, PlanOptimized):
                        plans[gpu] = answer.plan
                    elif isinstance(answer, PlanDoesNotFit):
                        if closest is None or answer.needed_mb < closest.needed_mb:
                            closest = answer
                    elif isinstance(answer, RequestRejected):
                        await router.tell(answer, sender=ROUTER)
                        await self._end(ticket, "rejected", answer.reason)
                        return
                if plans:
                    budgets = attempt
                    break
            if not plans:
                assert closest is not None
                await router.tell(
                    RequestRejected(
                        request_id=rid,
                        code="does_not_fit",
                        reason=closest.reason,
                        needed_mb=closest.needed_mb,
                        smallest_gpu=closest.smallest_gpu,
                        best_plan=closest.best_plan,
                    ),
                    sender=ROUTER,
                )
                await self._end(ticket, "rejected", closest.reason)
                return
            chosen = plans[max(plans, key=lambda g: (budgets[g], g))]
            await router.tell(PlanOptimized(request_id=rid, plan=chosen), sender=ROUTER)
            if ticket.abandoned or ticket.cancel_requested:
                await self._end(ticket, "cancelled", "cancelled before it was queued")
                return
            await system.ref(ADMISSION).tell(
                SubmitRequest(
                    request_id=rid,
                    plans=plans,
                    priority=request.priority,
                    max_wait_s=request.max_wait_s,
                    fallback=False,
                ),
                sender=ROUTER,
            )
            ticket.in_admission = True
        except ActorStopped:
            self._release_slot(ticket)
            if ticket.ended is None:
                ticket._push(RequestEnded(request_id=rid, state="rejected", reason="the gate is shutting down"))
                self._tickets.pop(rid, None)
            raise
        finally:
            ticket.pipeline_running = False

    async def _plan(self, request: GenerationRequest, gpu: str, budget: int) -> Message:
        """The optimizer's answer for ``request`` on ``gpu`` within ``budget`` MiB per GPU."""
        ask = OptimizePlan(request=_anonymous(request), gpu=gpu, budget_mb=budget, ram_budget_mb=self.ram_budget_mb)
        return await self._ask_cached(OPTIMIZER, ask, request.request_id)

    async def _ask_cached(self, actor: str, ask: Message, rid: str) -> Message:
        """Ask a core a question that does not depend on the request's id, priority or prompt.

        Cores are deterministic, so an identical question gets the identical answer until the cores learn from a
        run (which clears the cache); the answer is re-addressed to ``rid``.
        """
        key = _KEY.encode((actor, ask))
        answer = self._answers.get(key)
        if answer is None:
            answer = await self._require_system().ref(actor).ask(ask, timeout=ASK_TIMEOUT_S, sender=ROUTER)
            if len(self._answers) >= 4096:
                self._answers.clear()
            self._answers[key] = answer
        if isinstance(answer, PlanOptimized):
            return PlanOptimized(request_id=rid, plan=msgspec.structs.replace(answer.plan, request_id=rid))
        if hasattr(answer, "request_id"):
            return msgspec.structs.replace(answer, request_id=rid)
        return answer

    async def _shrink(self, request: GenerationRequest, plan: Plan, attempt: int) -> GenerationRequest:
        """After an OOM: a request pinned to a plan that needs less VRAM (raises the OOM's typed rejection)."""
        system = self._require_system()
        self._counts["oom_retries"] += 1
        answer = await system.ref(OPTIMIZER).ask(
            ShrinkPlan(plan=plan, request_id=request.request_id, max_level=request.max_level),
            timeout=ASK_TIMEOUT_S,
            sender=ROUTER,
        )
        if not isinstance(answer, PlanOptimized):
            reason = getattr(answer, "reason", "no smaller plan")
            raise DoesNotFit(f"out of memory, and no smaller plan within {request.max_level!r}: {reason}")
        return _pinned_request(request, answer.plan, attempt)

    async def _reject(self, ticket: Ticket, code: Any, reason: str) -> None:
        system = self._require_system()
        await system.ref(ROUTER).tell(
            RequestRejected(request_id=ticket.request_id, code=code, reason=reason), sender=ROUTER
        )
        await self._end(ticket, "rejected", reason)

    async def _end(self, ticket: Ticket, state: Any, reason: str) -> None:
        """Send the request's terminal event (the gate ends requests that never reached admission)."""
        system = self._require_system()
        ticket.end_sent = True
        await system.ref(ROUTER).tell(
            RequestEnded(request_id=ticket.request_id, state=state, reason=reason), sender=ROUTER
        )

    async def _route(self, message: Message) -> None:
        """Called by the router actor for every message it receives."""
        if isinstance(message, ResourceSample):
            self.latest_sample = message
        elif isinstance(message, CorrectionLearned):
            # The estimator answers each lesson with its corrections. Cached plans were made with the previous
            # ones; drop them when one moved by more than half a percent (well inside the safety margin).
            moved = {
                (message.model, message.gpu): message.factor,
                ("time", message.gpu): message.time_factor,
                ("time_high", message.gpu): message.time_factor * message.time_high,
            }
            for key, factor in moved.items():
                previous = self._corrections.get(key, 1.0)
                if abs(factor - previous) > 0.005 * previous:
                    self._corrections[key] = factor
                    self._answers.clear()
            await self._save_learned()
        elif isinstance(message, CleanupReport):
            self._counts["cleanups"] += 1
            self._cleanup_freed_mb += message.freed_mb
        elif isinstance(message, EvictModel):
            await self.residency.carry_out(message)
        rid = getattr(message, "request_id", None)
        ticket = self._tickets.get(rid) if isinstance(rid, str) else None
        if ticket is not None:
            ticket._push(message)
        for listener in self._listeners:
            listener(message)
        if ticket is None:
            return
        if isinstance(message, RequestAdmitted):
            self._release_slot(ticket)
            self._counts["admitted"] += 1
            self._wait_total_s += message.waited_s
            self._wait_max_s = max(self._wait_max_s, message.waited_s)
            lease = ticket.lease = Lease(self, ticket, message)
            if ticket.abandoned:
                await self._release(lease, "cancelled", "the client stopped waiting")
            elif self._pins(lease):
                lease.pin()
        elif isinstance(message, RequestRejected):
            self._counts["rejected"] += 1
        elif isinstance(message, RequestEnded):
            self._release_slot(ticket)
            self._tickets.pop(ticket.request_id, None)
            if message.state in ("completed", "failed", "cancelled", "timed_out"):
                self._counts[message.state] += 1
        elif isinstance(message, RequestQueued | LeaseReleased | RunProgress | RunFinished):
            pass

    async def _tell_admission(self, message: Message) -> None:
        if self._admission is not None:
            await self._require_system().ref(ADMISSION).tell(message, sender=ROUTER)

    async def _save_learned(self) -> None:
        """Write what the estimator learned to ``learned_path`` (atomically, in a worker thread)."""
        if self.config.learned_path is None:
            return
        from vramgate.policy.learning import write_atomic

        data = self.estimator.learned.dumps()  # a consistent snapshot: the cores run on this thread
        try:
            await anyio.to_thread.run_sync(write_atomic, self.config.learned_path, data)
        except OSError as error:  # the lesson stays in memory; the next one tries again
            _log.warning("cannot save learned corrections to %s: %s", self.config.learned_path, error)

    def _release_slot(self, ticket: Ticket) -> None:
        if ticket.holds_slot:
            ticket.holds_slot = False
            self._slots.release()

    async def _abort(self, ticket: Ticket, reason: str) -> None:
        """The client is gone: end a request still in preflight, leave the queue, or release an unused lease."""
        ticket.abandoned = True
        if ticket.ended is not None or ticket.end_sent or self._system is None or self._system.state != "running":
            return
        if ticket.lease is not None:
            await self._release(ticket.lease, "cancelled", reason)
        elif ticket.in_admission:
            await self._system.ref(ADMISSION).tell(
                CancelRequest(request_id=ticket.request_id, reason=reason), sender=ROUTER
            )
        elif not ticket.pipeline_running:
            self._release_slot(ticket)
            await self._end(ticket, "cancelled", reason)

    async def _cancel(self, ticket: Ticket, reason: str) -> None:
        """Cancel a request: it leaves the queue; a running one is marked and ends cancelled on release."""
        if ticket.ended is not None or ticket.end_sent:
            return
        system = self._require_system()
        ticket.cancel_requested = True
        if ticket.in_admission:
            await system.ref(ADMISSION).tell(CancelRequest(request_id=ticket.request_id, reason=reason), sender=ROUTER)

    async def _progress(self, lease: Lease, step: int, total: int) -> None:
        system = self._require_system()
        await system.ref(ROUTER).tell(
            RunProgress(request_id=lease.request_id, lease_id=lease.lease_id, step=step, total_steps=total),
            sender=ROUTER,
        )

    def _progress_nowait(self, lease: Lease, step: int, total: int) -> None:
        system = self._require_system()
        try:
            system.ref(ROUTER).tell_nowait(
                RunProgress(request_id=lease.request_id, lease_id=lease.lease_id, step=step, total_steps=total),
                sender=ROUTER,
            )
        except Exception:  # progress is advisory: a full mailbox drops it
            return

    async def _finish(self, lease: Lease, error: BaseException | None) -> None:
        """Report the run, start cleanup, and release the reservation."""
        outcome: Outcome
        if error is None:
            outcome = lease.reported_outcome or "ok"
        elif isinstance(error, anyio.get_cancelled_exc_class()):
            outcome = "cancelled"
        elif is_oom(error):
            outcome = "oom"
        else:
            outcome = "error"
        if outcome == "oom":
            self._counts["ooms"] += 1
        if lease.reported_error:
            text = lease.reported_error
        elif outcome == "cancelled" and error is not None:
            text = CANCELLED_RUN
        else:
            text = f"{type(error).__name__}: {error}" if error is not None else ""
        await self._release(lease, outcome, text)

    def _pins(self, lease: Lease) -> bool:
        """Whether ``[run] pin_reservation`` pins this lease (``"auto"``: when all its devices are simulated)."""
        simulated = all(self.simulated_device(index) is not None for index in lease.devices)
        return self.config.run.pins(simulated=simulated)

    def _timed(self, finished: RunFinished) -> RunFinished:
        """``finished`` with its seconds on the estimate's time scale (``[run] time_scale``) for learning, or none
        when they teach no time: the run did not run to the end, or it lasted the ``min_seconds`` floor."""
        run = self.config.run
        seconds = finished.seconds
        if finished.outcome != "ok" or seconds is None or seconds <= 0.0 or seconds <= run.min_seconds:
            return msgspec.structs.replace(finished, seconds=None)
        return msgspec.structs.replace(finished, seconds=seconds / run.time_scale)

    async def _release(self, lease: Lease, outcome: Outcome, error: str) -> None:
        pinned = lease.unpin() > 0  # on every exit: the run is over, its block goes back first
        if lease.released or self._system is None or self._system.state != "running":
            return
        lease.released = True
        system = self._system
        observed = self._observed(lease, pinned=pinned)
        finished = RunFinished(
            request_id=lease.request_id,
            lease_id=lease.lease_id,
            outcome=outcome,
            observed=observed,
            seconds=max(0.0, self.clock.now() - lease.started_at),
            error=error[:2000],
        )
        best = observed.best_mb()
        if best is not None and lease.plan.requirement.vram_mb > 0:
            if len(self._estimate_ratios) >= 10_000:
                del self._estimate_ratios[: len(self._estimate_ratios) // 2]
            self._estimate_ratios.append(best / lease.plan.requirement.vram_mb)
        await system.ref(ROUTER).tell(finished, sender=ROUTER)
        timed = self._timed(finished)
        if best is not None or outcome == "oom" or timed.seconds is not None:
            # Both cores learn from the run, so that their estimates stay the same (and replay the same).
            lesson = ObserveRun(finished=timed, plan=lease.plan)
            await system.ref(ESTIMATOR).tell(lesson, sender=ROUTER)
            await system.ref(OPTIMIZER).tell(lesson, sender=ROUTER)
        if self.config.cleanup.after_run:
            await system.ref(CLEANUP).tell(finished, sender=ROUTER)
        await system.ref(ADMISSION).tell(
            ReleaseLease(lease_id=lease.lease_id, outcome=outcome, reason=error[:500]), sender=ROUTER
        )

    def _observed(self, lease: Lease, *, pinned: bool = False) -> ObservedPeak:
        if lease.reported_peak is not None:
            return lease.reported_peak
        simulated = self.simulated_device(lease.device)
        if simulated is not None:
            peak = simulated.peak_mb(lease.lease_id)
            if peak == 0:  # the run allocated nothing on the device: nothing was observed
                return ObservedPeak()
            return ObservedPeak(torch_peak_allocated_mb=peak, torch_peak_reserved_mb=peak)
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            mib = 1 << 20
            if pinned:  # the pinned segment is reserved whatever the run used: only allocations tell
                return ObservedPeak(torch_peak_allocated_mb=int(torch.cuda.max_memory_allocated(lease.device)) // mib)
            return ObservedPeak(
                torch_peak_allocated_mb=int(torch.cuda.max_memory_allocated(lease.device)) // mib,
                torch_peak_reserved_mb=int(torch.cuda.max_memory_reserved(lease.device)) // mib,
            )
        return ObservedPeak()

    async def _close(self) -> None:
        """End every request still waiting (shutting down) before the actors stop."""
        self._closing = True
        system = self._system
        if system is None:
            return
        for ticket in list(self._tickets.values()):
            if ticket.lease is not None and not ticket.lease.released:
                continue
            if ticket.ended is None:
                ticket.abandoned = True
                with anyio.CancelScope(shield=True):
                    with suppress(ActorStopped):
                        await system.ref(ADMISSION).tell(
                            CancelRequest(request_id=ticket.request_id, reason="the gate is shutting down"),
                            sender=ROUTER,
                        )


_KEY = msgspec.msgpack.Encoder(order="deterministic")


def _anonymous(request: GenerationRequest) -> GenerationRequest:
    """The request without what does not change its estimate or plan (id, priority, wait bound, prompt)."""
    if not (request.request_id or request.priority or request.max_wait_s is not None or request.prompt):
        return request
    return msgspec.structs.replace(request, request_id="", priority=0, max_wait_s=None, prompt="")


def _pinned_request(request: GenerationRequest, plan: Plan, attempt: int) -> GenerationRequest:
    """The request that runs ``plan`` exactly: its parameters, and every option pinned to the plan's."""
    from vramgate.messages import RunOptions

    params = plan.params
    pinned = RunOptions(**msgspec.structs.asdict(params.options))
    return msgspec.structs.replace(
        request,
        request_id=f"{request.request_id}.{attempt + 1}" if request.request_id else "",
        width=params.width,
        height=params.height,
        frames=params.frames,
        duration_s=None,
        fps=None,
        steps=params.steps,
        options=pinned,
    )


def _device_configs(config: GateConfig, sample: ResourceSample) -> tuple[DeviceConfig, ...]:
    margin = parse_size_mb(config.admission.margin, field="admission.margin") if config.admission.margin else None
    configs: list[DeviceConfig] = []
    for device in sample.devices:
        if device.lost or device.total_mb <= 0:
            continue
        spec = DEFAULT_GPU_CATALOG.find(device.name)
        gpu = spec.name if spec is not None else f"{device.total_mb}MiB"
        fraction_margin = max(1024, math.ceil(device.total_mb * config.admission.margin_fraction))
        configs.append(
            DeviceConfig(
                index=device.index,
                gpu=gpu,
                capacity_mb=device.total_mb,
                margin_mb=margin if margin is not None else fraction_margin,
            )
        )
    return tuple(configs)


def _ram_budget(config: GateConfig, sample: ResourceSample) -> int | None:
    if config.admission.ram_budget is not None:
        return parse_size_mb(config.admission.ram_budget, field="admission.ram_budget")
    host = sample.host
    if host is None:
        return None
    return host.ram_total_mb if host.cgroup_limit_mb is None else min(host.ram_total_mb, host.cgroup_limit_mb)


def _admission_config(config: GateConfig) -> AdmissionConfig:
    settings = config.admission
    return AdmissionConfig(
        queue_limit=settings.queue_limit,
        stale_after_s=settings.stale_after_s,
        aging=settings.aging_per_s,
        permanent_after_s=settings.permanent_after_s,
        placement=settings.placement,
        backfill=settings.backfill,
        time_scale=config.run.time_scale,
        min_run_s=config.run.min_seconds,
        host_ram_mb=parse_size_mb(settings.ram_budget, field="admission.ram_budget") if settings.ram_budget else None,
    )


@asynccontextmanager
async def open_gate(
    config: GateConfig | None = None,
    *,
    clock: Clock | None = None,
    devices: DeviceSet | None = None,
    estimator: Estimator | None = None,
    recorder: Recorder | None = None,
    on_evict: EvictHandler | None = None,
) -> AsyncIterator[Gate]:
    """Start a gate: detect (or take) the devices, start the actors, and stop them all on exit.

    ``config`` defaults to :class:`~vramgate.config.GateConfig` (real GPUs, no simulated ones). Pass ``devices``
    (from :func:`vramgate.hardware.detect`) to manage simulated GPUs built by the caller, ``clock`` for a virtual
    clock, and ``recorder`` to record every message (``config.log_path`` does the same with a file).
    ``on_evict`` carries out admission's eviction orders of resident models (see :mod:`vramgate._residency`).
    """
    config = config if config is not None else GateConfig()
    clock = clock if clock is not None else MonotonicClock()
    owns_devices = devices is None
    if devices is None:
        devices = detect(
            config.devices.simulate,
            disk_path=config.monitor.disk_path,
            nvml=config.devices.use_real_gpus,
            torch="auto" if config.devices.use_real_gpus else False,
            clock=clock,
            context_overhead_mb=parse_size_mb(config.devices.context_overhead, field="devices.context_overhead"),
        )
    try:
        first = await anyio.to_thread.run_sync(devices.sample, clock.now())
        estimator = estimator if estimator is not None else _estimator(config)
        gate = Gate(config, devices, first, clock=clock, estimator=estimator, on_evict=on_evict)
        if recorder is None and config.log_path is not None:
            recorder = Recorder(config.log_path, max_bytes=config.log_max_bytes, backups=config.log_backups)
        gate._recorder = recorder
        system = ActorSystem(
            clock=clock,
            recorder=recorder,
            note="vramgate gate",
            config={"config": msgspec.to_builtins(config)},
        )
        gate._system = system
        system.spawn(_Router(gate), name=ROUTER, mailbox_size=4096)
        system.spawn(estimator_actor(estimator), name=ESTIMATOR)
        system.spawn(optimizer_actor(copy_estimator(estimator)), name=OPTIMIZER)
        if gate.device_configs:
            gate._admission = admission_actor(
                gate.device_configs, _admission_config(config), events_to=ROUTER, tick_s=config.monitor.interval_s
            )
            system.spawn(gate._admission, name=ADMISSION, mailbox_size=4096)
        cleanup = CleanupActor(
            reports_to=ROUTER,
            after_run=config.cleanup.after_run,
            aggressive=config.cleanup.aggressive,
            below_fraction=config.cleanup.proactive_below_fraction,
            after_s=config.cleanup.proactive_after_s,
            min_unused_mb=parse_size_mb(config.cleanup.proactive_min_unused, field="cleanup.proactive_min_unused"),
            min_interval_s=config.cleanup.min_interval_s,
        )
        gate._cleanup_actor = cleanup
        system.spawn(cleanup, name=CLEANUP)
        subscribers = [ROUTER, CLEANUP] + ([ADMISSION] if gate.device_configs else [])
        system.spawn(
            MonitorActor(
                devices,
                interval_s=config.monitor.interval_s,
                history_s=config.monitor.history_s,
                probe_timeout_s=config.monitor.probe_timeout_s,
                subscribers=subscribers,
                memory_only=(CLEANUP, ADMISSION),
            ),
            name=MONITOR,
        )
        async with system:
            if gate._admission is not None:
                # Admission starts from the sample taken at opening, not from nothing.
                await system.ref(ADMISSION).tell(first, sender=ROUTER)
                await system.wait_idle()
            try:
                yield gate
            finally:
                with anyio.CancelScope(shield=True):
                    await gate._close()
        with anyio.CancelScope(shield=True):
            await gate._save_learned()
    finally:
        if owns_devices:
            devices.close()


def _estimator(config: GateConfig) -> Estimator:
    if config.learned_path is None:
        return Estimator()
    from vramgate.policy.learning import open_corrections

    return Estimator(learned=open_corrections(config.learned_path))


__all__ = [
    "Gate",
    "Lease",
    "RequestCancelled",
    "RequestFailed",
    "Ticket",
    "is_oom",
    "open_gate",
]
