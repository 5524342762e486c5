"""The embedding API: open a gate, submit requests, hold leases while runs use the memory they were admitted for.

::

    async with vramgate.open_gate(config) as gate:            # starts the actor system; stops it on exit
        async with gate.admit(request) as lease:              # preflight, optimize, wait for admission
            run_generation(lease.params, device=lease.device) # the server's own code
            lease.report(peak_vram_mb=..., outcome="ok")      # optional: observed peak

The gate is a thin async facade. Every decision about a request is the request core's
(:mod:`vramgate.policy.request`, run by the ``gate`` actor): the preflight, the planning passes, the plan to
publish, rejections, the queue limit, retries after an OOM, cancellation and waits before admission. The gate
sends it the client's messages (sender ``client``: requests, cancellations, run ends), hands its answers and
admission's events to tickets, and does the effects at the edge: pinning a lease's memory, reading a run's peak.
Every message is recorded when the gate has a log, and ``vramgate replay`` checks every core's decisions.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import msgspec

from vramgate import compat
from vramgate._quote import quote, submit_or_decline
from vramgate._residency import EvictHandler, GateResidency
from vramgate._shell import CANCELLED_RUN, LeaseBlock, RequestShell, is_oom
from vramgate._ticket import Lease, RequestCancelled, RequestFailed, Ticket
from vramgate.actors import ActorSystem, Recorder
from vramgate.actors.admission import AdmissionActor, admission_actor
from vramgate.actors.cleanup import CleanupActor
from vramgate.actors.estimator import estimator_actor
from vramgate.actors.monitor import MonitorActor
from vramgate.actors.optimizer import optimizer_actor
from vramgate.actors.requests import ClientInbox, request_actor
from vramgate.clock import Clock, MonotonicClock
from vramgate.config import GateConfig, parse_size_mb
from vramgate.hardware import DeviceSet, SimulatedGpu, detect
from vramgate.hardware.backend import Backend, select_backend
from vramgate.messages import (
    CleanupReport,
    CleanupRequest,
    GenerationRequest,
    Message,
    OptimizationSuggestion,
    RequestRejected,
    ResourceRequirement,
    ResourceSample,
    RunParams,
    decode_json,
)
from vramgate.messages.admission import SubmitRequest
from vramgate.messages.gate import DeviceStatistics, GateStatistics
from vramgate.messages.quote import Quote
from vramgate.policy._standing import Standing
from vramgate.policy.admission import AdmissionCore
from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import GpuCatalog
from vramgate.policy.ledger import DeviceConfig
from vramgate.policy.registered import header_config
from vramgate.policy.request import CLIENT, RequestConfig, RequestCore, device_budgets

T = TypeVar("T")
_log = logging.getLogger("vramgate.gate")

#: Actor names (they are the senders and recipients in the message log). ``ROUTER`` runs the request core.
MONITOR, ESTIMATOR, OPTIMIZER, ADMISSION, CLEANUP, ROUTER = (
    "monitor",
    "estimator",
    "optimizer",
    "admission",
    "cleanup",
    "gate",
)
#: How long the gate waits for a cleanup it asked for (real seconds).
ASK_TIMEOUT_S = 30.0


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
        backend: Backend | None = None,
        on_evict: EvictHandler | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.devices = devices
        #: the effects on the devices: pins, peaks, caches, telling an OOM apart (:mod:`vramgate.hardware.backend`)
        self.backend = backend if backend is not None else select_backend(devices.simulated)
        self.estimator = estimator
        self.latest_sample = first_sample
        self._simulated = {gpu.index: gpu for gpu in devices.simulated}
        self._device_configs = _device_configs(config, first_sample, estimator.gpus)
        self.ram_budget_mb = _ram_budget(config, first_sample)
        self.requests = RequestCore(_request_config(config))
        self.shell = RequestShell(self, self.requests)
        self.system: ActorSystem | None = None
        self._recorder: Recorder | None = None
        self._admission: AdmissionActor | None = None
        #: Resident models: what the server declared loaded, and who carries out evictions.
        self.residency = GateResidency(
            estimator.models, lambda: [d.index for d in self.device_configs], self._tell_admission, on_evict
        )
        self.declare_loaded = self.residency.declare_loaded
        self.declare_unloaded = self.residency.declare_unloaded

    # ================================================================== public API

    @property
    def device_configs(self) -> tuple[DeviceConfig, ...]:
        """The devices the gate admits on: index, GPU, capacity and safety margin."""
        return self._device_configs

    @property
    def admission_core(self) -> AdmissionCore | None:
        """The admission core (to read; only its actor feeds it), or ``None`` when no device is usable."""
        return self._admission.admission if self._admission is not None else None

    @property
    def queue_length(self) -> int:
        """Requests waiting in admission's queue."""
        core = self.admission_core
        return core.queue_length if core is not None else 0

    def simulated_device(self, index: int) -> SimulatedGpu | None:
        """The simulated GPU with this index, or ``None`` for a real device."""
        return self._simulated.get(index)

    def add_listener(self, listener: Callable[[Message], None]) -> None:
        """Call ``listener`` with every lifecycle event, sample and cleanup report the gate routes."""
        self.shell.listeners.append(listener)

    def decode_request(self, body: bytes | str) -> GenerationRequest:
        """Decode a request body; bad input raises :class:`~vramgate.errors.DecodeError` naming the field."""
        return decode_json(body, GenerationRequest)

    def submit_nowait(self, request: GenerationRequest) -> Ticket:
        """Submit ``request``, or raise :class:`~vramgate.errors.QueueFull` at once when the request core has no
        room (requests accepted and neither admitted nor ended reach ``[admission] queue_limit``).

        Returns a :class:`Ticket` whose events follow the request to its terminal state. A request that cannot
        run anywhere ends at once (the ticket's ``wait_admitted`` raises the typed reason).
        """
        return self.shell.submit_nowait(request)

    async def submit(self, request: GenerationRequest) -> Ticket:
        """Like :meth:`submit_nowait`, but wait for room while the request core has none (backpressure)."""
        return await self.shell.submit(request)

    def admit(self, request: GenerationRequest) -> LeaseBlock:
        """``async with gate.admit(request) as lease``: wait for admission and hold the lease for the block; it is
        released on every exit path.

        An exception in the block is reported as the run's outcome (``oom`` for a GPU out-of-memory error,
        ``cancelled`` for a cancellation, else ``error``) and re-raised.
        """
        return LeaseBlock(self.shell, request, None)

    def hold(self, lease: Lease) -> LeaseBlock:
        """``async with gate.hold(lease)``: hold a lease (from :meth:`Ticket.wait_admitted`) for the block; release
        it on every exit path."""
        return LeaseBlock(self.shell, None, lease)

    async def run(self, request: GenerationRequest, runner: Callable[[Lease], Awaitable[T]]) -> T:
        """Admit ``request``, await ``runner(lease)`` inside the lease, and return its result.

        With ``run.retry_on_oom`` configured, the request core answers an out-of-memory failure with a retry at a
        plan one level further (at least 10% less VRAM, within the request's ``max_level``), at most
        ``run.max_oom_retries`` times; the failure is re-raised when it gives none.
        """
        ticket: Ticket | None = await self.submit(request)
        while ticket is not None:
            lease = await self.shell.wait_admitted(ticket)
            try:
                async with self.hold(lease):
                    return await runner(lease)
            except Exception as error:
                if not self.backend.is_oom(error):
                    raise
                ticket = await self.shell.retry(ticket, lease.plan, error)
                if ticket is None:
                    raise
        raise AssertionError("unreachable")

    async def wait_idle(self) -> None:
        """Wait until every message sent so far was handled (a release has reached the ledger, say)."""
        self.shell.require()
        assert self.system is not None
        await self.system.wait_idle()

    def plan_budgets(self, *, others: bool = True) -> dict[str, int]:
        """VRAM per GPU that a plan may need, for each kind of GPU: the best device's capacity less its safety
        margin and less what others use on it now (with ``others``) or what they never gave back (without:
        the ledger's ``attainable_mb``), rounded down to 256 MiB (:func:`vramgate.policy.request.device_budgets`,
        the budgets the request core plans at)."""
        core = self.admission_core
        if core is None:
            return {}
        budgets = device_budgets(core.statistics().devices, self.ram_budget_mb)
        return dict(budgets.now if others else budgets.attainable)

    def retry_after_s(self) -> float:
        """When the request core is expected to have room again (0: it has room now)."""
        return self.requests.retry_after(self.clock.now())

    def standing(self, request_id: str) -> Standing | None:
        """Where a waiting request stands in admission's queue: position, what it waits for, expected start."""
        core = self.admission_core
        return core.standing(request_id, self.clock.now()) if core is not None else None

    def queue_position(self, request_id: str) -> int | None:
        """``standing(request_id).position``: where a waiting request is as the queue moves (``None`` when it is
        not waiting). A ticket's ``position`` is where its request was queued."""
        standing = self.standing(request_id)
        return None if standing is None else standing.position

    async def quote(self, request: GenerationRequest, *, time_scale: float = 1.0, node: str = "") -> Quote:
        """What ``request`` would get here now (plan, memory, expected start and finish); reserves nothing.

        ``time_scale`` scales the plans' estimated seconds (for runs in compressed time). See :mod:`vramgate._quote`.
        """
        return await quote(self, request, time_scale=time_scale, node=node)

    async def submit_or_decline(
        self, request: GenerationRequest, *, within_s: float | None = 0.0, time_scale: float = 1.0, node: str = ""
    ) -> Ticket:
        """Submit ``request`` if it is expected to be admitted within ``within_s`` seconds (0: at once), else raise
        :class:`vramgate._quote.Declined` having kept and reserved nothing."""
        return await submit_or_decline(
            self, self.submit_nowait, request, within_s=within_s, time_scale=time_scale, node=node
        )

    async def plans(self, request: GenerationRequest) -> SubmitRequest | RequestRejected:
        """The plans the request core would submit for ``request`` now (one per kind of GPU), or the rejection it
        would end with; nothing is kept or reserved."""
        return await self.shell.plans(request)

    async def cancel(self, request_id: str, reason: str = "cancelled by the client") -> None:
        """Cancel a request: a waiting one leaves the queue; a running one is marked and ends on release."""
        await self.shell.cancel(request_id, reason)

    async def report_progress(self, lease: Lease, step: int, total: int) -> None:
        """Tell the request's ticket that its run is at ``step`` of ``total`` (:meth:`Lease.progress`)."""
        await self.shell.progress(lease, step, total)

    def report_progress_nowait(self, lease: Lease, step: int, total: int) -> None:
        """Like :meth:`report_progress`; dropped when the gate is busy (progress is advisory)."""
        self.shell.progress_nowait(lease, step, total)

    def statistics(self) -> GateStatistics:
        """Per-device ledgers and samples, the queue, waits, admissions, rejections, OOMs and cleanups."""
        core = self.admission_core
        core_stats = core.statistics() if core is not None else None
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
        shell = self.shell
        counts = shell.counts
        ratios = sorted(shell.estimate_ratios)
        stall = core.stalled(self.clock.now()) if core is not None else None
        return GateStatistics(
            devices=tuple(devices),
            queue_length=core_stats.queue_length if core_stats is not None else 0,
            queue_limit=self.config.admission.queue_limit,
            running=core_stats.running if core_stats is not None else 0,
            tickets=len(shell.tickets),
            mean_wait_s=shell.wait_total_s / counts["admitted"] if counts["admitted"] else 0.0,
            max_wait_s=shell.wait_max_s,
            cleanup_freed_mb=shell.cleanup_freed_mb,
            estimate_ratio_p50=ratios[len(ratios) // 2] if ratios else None,
            estimate_ratio_max=ratios[-1] if ratios else None,
            queue_stalled_s=max(0.0, self.clock.now() - stall[0]) if stall is not None else None,
            stall_reason=stall[1] if stall is not None else "",
            log=self._recorder.statistics() if self._recorder is not None else None,
            host=core_stats.host if core_stats is not None else None,
            evictions=core_stats.evictions if core_stats is not None else 0,
            **counts,
        )

    def ticket(self, request_id: str) -> Ticket | None:
        """The ticket of a request that has not ended yet."""
        return self.shell.tickets.get(request_id)

    def tickets(self) -> tuple[Ticket, ...]:
        """The tickets of the requests that have not ended yet."""
        return tuple(self.shell.tickets.values())

    async def cleanup(self, *, aggressive: bool = False, device: int | None = None) -> CleanupReport:
        """Run a cleanup now (gc, the torch CUDA cache) and report what it freed."""
        self.shell.require()
        assert self.system is not None
        reply = await self.system.ref(CLEANUP).ask(
            CleanupRequest(device=device, aggressive=aggressive), timeout=ASK_TIMEOUT_S, sender=CLIENT
        )
        assert isinstance(reply, CleanupReport)
        self.shell.counts["cleanups"] += 1
        self.shell.cleanup_freed_mb += reply.freed_mb
        return reply

    # ------------------------------------------------------------------ the replaced manager's calls (compat)

    def check_vram_availability(self, required_mb: int, *, device: int | None = None) -> tuple[bool, str]:
        """See :func:`vramgate.compat.check_vram_availability`."""
        return compat.check_vram_availability(self, required_mb, device=device)

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
        """See :func:`vramgate.compat.estimate_resource_requirements`."""
        return compat.estimate_resource_requirements(self, model_type, resolution, steps, duration, lora_count, gpu=gpu)

    def optimize_parameters_for_resources(
        self, params: GenerationRequest | dict[str, Any]
    ) -> tuple[RunParams, list[OptimizationSuggestion]]:
        """See :func:`vramgate.compat.optimize_parameters_for_resources`."""
        return compat.optimize_parameters_for_resources(self, params)

    async def cleanup_memory(self, aggressive: bool = False, *, device: int | None = None) -> CleanupReport:
        """The replaced manager's name for :meth:`cleanup`."""
        return await self.cleanup(aggressive=aggressive, device=device)

    async def _tell_admission(self, message: Message) -> None:
        """Tell admission a declaration (a model loaded or unloaded); nothing when no device is usable."""
        self.shell.require()
        if self._admission is not None and self.system is not None:
            await self.system.ref(ADMISSION).tell(message, sender=CLIENT)

    async def save_learned(self) -> None:
        """Write what the estimator learned to ``learned_path`` (atomically, in a worker thread)."""
        if self.config.learned_path is None:
            return
        from vramgate.policy.learning import write_atomic

        data = self.estimator.learned.dumps()  # a consistent snapshot: the cores run on this thread
        try:
            await anyio.to_thread.run_sync(write_atomic, self.config.learned_path, data)
        except OSError as error:  # the lesson stays in memory; the next one tries again
            _log.warning("cannot save learned corrections to %s: %s", self.config.learned_path, error)


# ====================================================================== opening


def _device_configs(config: GateConfig, sample: ResourceSample, gpus: GpuCatalog) -> tuple[DeviceConfig, ...]:
    configs: list[DeviceConfig] = []
    for device in sample.devices:
        if device.lost or device.total_mb <= 0:
            continue
        spec = gpus.find(device.name)
        gpu = spec.name if spec is not None else f"{device.total_mb}MiB"
        configs.append(
            DeviceConfig(
                index=device.index,
                gpu=gpu,
                capacity_mb=device.total_mb,
                margin_mb=config.admission.margin_mb(device.total_mb),
            )
        )
    return tuple(configs)


def _ram_budget(config: GateConfig, sample: ResourceSample) -> int | None:
    budget = config.admission.ram_budget_mb()
    if budget is not None:
        return budget
    host = sample.host
    if host is None:
        return None
    return host.ram_total_mb if host.cgroup_limit_mb is None else min(host.ram_total_mb, host.cgroup_limit_mb)


def _request_config(config: GateConfig) -> RequestConfig:
    return RequestConfig(
        admission=config.admission,
        time_scale=config.run.time_scale,
        min_run_s=config.run.min_seconds,
        retry_on_oom=config.run.retry_on_oom,
        max_oom_retries=config.run.max_oom_retries,
        cleanup_after_run=config.cleanup.after_run,
        forwards_lessons=True,
    )


@asynccontextmanager
async def open_gate(
    config: GateConfig | None = None,
    *,
    clock: Clock | None = None,
    devices: DeviceSet | None = None,
    estimator: Estimator | None = None,
    recorder: Recorder | None = None,
    backend: Backend | None = None,
    on_evict: EvictHandler | None = None,
) -> AsyncIterator[Gate]:
    """Start a gate: detect (or take) the devices, start the actors, and stop them all on exit.

    ``config`` defaults to :class:`~vramgate.config.GateConfig` (real GPUs, no simulated ones). Pass ``devices``
    (from :func:`vramgate.hardware.detect`) to manage simulated GPUs built by the caller, ``clock`` for a virtual
    clock, and ``recorder`` to record every message (``config.log_path`` does the same with a file). ``backend``
    does the effects on the devices (pins, peaks, caches, telling an OOM apart); by default
    :func:`~vramgate.hardware.backend.select_backend` picks it from the devices and ``[devices] use_real_gpus``.
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
        if backend is None:
            backend = select_backend(devices.simulated, real_gpus=config.devices.use_real_gpus)
        gate = Gate(config, devices, first, clock=clock, estimator=estimator, backend=backend, on_evict=on_evict)
        if recorder is None and config.log_path is not None:
            recorder = Recorder(config.log_path, max_bytes=config.log_max_bytes, backups=config.log_backups)
        gate._recorder = recorder
        system = ActorSystem(
            clock=clock,
            recorder=recorder,
            note="vramgate gate",
            config={"config": msgspec.to_builtins(config), **header_config(estimator.models, estimator.gpus)},
        )
        gate.system = system
        # Room for every request the core may hold, with its questions and answers, and the samples.
        mailbox = 4 * config.admission.queue_limit + 4096
        core_actor = request_actor(gate.requests.config, observe=gate.shell.observe, core=gate.requests)
        gate.shell.ref = system.spawn(core_actor, name=ROUTER, mailbox_size=mailbox)
        system.spawn(ClientInbox(), name=CLIENT, mailbox_size=mailbox)
        system.spawn(estimator_actor(estimator, holdings=True), name=ESTIMATOR, mailbox_size=mailbox)
        system.spawn(optimizer_actor(estimator), name=OPTIMIZER, mailbox_size=mailbox)
        if gate.device_configs:
            gate._admission = admission_actor(
                gate.device_configs,
                config.admission,
                events_to=ROUTER,
                tick_s=config.monitor.interval_s,
                time_scale=config.run.time_scale,
                min_run_s=config.run.min_seconds,
                catalog=estimator.gpus,
                release_events=False,  # the gate knows its leases: a request's end after a release says it
            )
            system.spawn(gate._admission, name=ADMISSION, mailbox_size=mailbox)
        cleanup = CleanupActor(
            reports_to=ROUTER,
            after_run=config.cleanup.after_run,
            aggressive=config.cleanup.aggressive,
            below_fraction=config.cleanup.proactive_below_fraction,
            after_s=config.cleanup.proactive_after_s,
            min_unused_mb=parse_size_mb(config.cleanup.proactive_min_unused, field="cleanup.proactive_min_unused"),
            min_interval_s=config.cleanup.min_interval_s,
            backend=backend,
        )
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
                await system.ref(ADMISSION).tell(first, sender=MONITOR)
                await system.wait_idle()
            try:
                yield gate
            finally:
                with anyio.CancelScope(shield=True):
                    await gate.shell.close()
        with anyio.CancelScope(shield=True):
            await gate.save_learned()
    finally:
        if owns_devices:
            devices.close()


def _estimator(config: GateConfig) -> Estimator:
    if config.learned_path is None:
        return Estimator()
    from vramgate.policy.learning import open_corrections

    return Estimator(learned=open_corrections(config.learned_path))


__all__ = [
    "CANCELLED_RUN",
    "Gate",
    "Lease",
    "RequestCancelled",
    "RequestFailed",
    "Ticket",
    "is_oom",
    "open_gate",
]
