"""The discrete-event engine: simulated GPUs on a virtual clock, runs that share compute and can run out of memory.

Execution model:

* a run's memory rises to its true peak once it has done ``ramp_fraction`` of its work, and stays there;
* the runs on a GPU share its compute: each of ``k`` runs progresses at ``1/k`` speed (a run on several GPUs at
  the speed of its most crowded one);
* an allocation past capacity is an out-of-memory error that kills the run that made it at that moment; the GPU
  time it had used is wasted;
* a policy may *pin* a run's planned memory when it starts it (vramgate does; the baselines do not): the block is
  taken from the device at once (:meth:`~vramgate.hardware.SimulatedGpu.pin`), so an outside consumer that
  arrives later and does not fit beside it is refused, and the run's allocations draw from it first; only what
  the run needs above its pin may still run out of memory. A pin that does not fit when the run starts is not
  taken (counted in ``pin_failures``), and the run goes on unprotected.
* a run's weights (the estimator's DiT, LoRA, text encoder and VAE weights) are a load before it computes, unless
  they are resident on its devices (:mod:`vramgate.simulate._weights`): the load occupies the run's devices like
  its compute does (counted in ``load_gpu_s``), and a run started with ``keep_weights`` leaves them resident; loads
  and allocations evict idle resident weights, least recently used first, when that makes them fit. Each run holds
  its host RAM peak on the simulated host from its start; one that does not fit is killed at once, as the host's OOM
  killer would (``host_oom_kills``; it ends with outcome ``error``). ``load_weights=False`` leaves weights out (a
  run's whole peak is its own allocation, and it computes at once), for tests that time compute alone.

The engine is plain synchronous code: a heap of events ordered by (time, sequence number), so the same trace,
policy, seed and faults always give the same events in the same order. Policies see the devices only through
samples (what a monitor would measure) and start runs through :meth:`Simulation.start`; the truth of each run
(its real peak and time) is the engine's, derived from the estimator's figures for what actually runs.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Sequence
from typing import Protocol

from vramgate.errors import BadRequest, CapacityError, SystemFault
from vramgate.hardware.simulated import SimulatedGpu
from vramgate.messages.plans import RunParams
from vramgate.messages.resources import DeviceSample
from vramgate.policy.gpus import GpuSpec
from vramgate.simulate._model import ALLOC, CRASH, DONE, NO_START, SPIKE, Job, JobFaults, Run
from vramgate.simulate._truth import EstimatorLike, Truth
from vramgate.simulate._weights import SimulatedHost, WeightStore
from vramgate.simulate.faults import FaultPlan, FaultSpec
from vramgate.simulate.trace import Trace

# Event kinds (ties at one time are broken by the sequence number, i.e. the order they were scheduled).
_OUTSIDE_START = 1
_OUTSIDE_END = 2
_MILESTONE = 3
_CANCEL = 4
_DEVICE_LOST = 5
_DEVICE_BACK = 6
_CORE_CRASH = 7
_WAKE = 8
_ARRIVAL = 9


class Policy(Protocol):
    """A scheduling policy. It reacts to events and starts runs through the simulation it is attached to."""

    name: str

    def attach(self, sim: Simulation) -> None: ...

    def arrive(self, job: Job, now: float) -> None: ...

    def cancel(self, job: Job, now: float) -> None: ...

    def run_ended(self, run: Run, outcome: str, now: float) -> None: ...

    def pump(self, now: float) -> None: ...

    def core_crash(self, now: float) -> None: ...

    def open_leases(self) -> int: ...


class Counters:
    """Event counts of one simulation."""

    __slots__ = (
        "core_crashes",
        "device_losses",
        "disk_loads",
        "failed_samples",
        "faults",
        "host_oom_kills",
        "load_gpu_s",
        "loads",
        "oom_events",
        "outside_denied_mb",
        "overcommits",
        "pin_failures",
        "runs",
        "stale_samples",
        "useful_gpu_s",
        "wasted_gpu_s",
    )

    def __init__(self) -> None:
        self.oom_events = 0
        self.overcommits = 0
        self.runs = 0
        self.wasted_gpu_s = 0.0
        self.useful_gpu_s = 0.0
        self.outside_denied_mb = 0
        self.pin_failures = 0
        self.stale_samples = 0
        self.failed_samples = 0
        self.device_losses = 0
        self.core_crashes = 0
        self.loads = 0
        self.disk_loads = 0
        self.load_gpu_s = 0.0
        self.host_oom_kills = 0
        self.faults: dict[str, int] = {}


class Timeline:
    """Per-device memory over time (for plots): points (t, true used, planned) and run bars."""

    def __init__(self, devices: int) -> None:
        self.points: list[list[tuple[float, int, int]]] = [[] for _ in range(devices)]
        self.bars: list[tuple[int, float, float, str, str]] = []  # device, start, end, outcome, request id
        self.ooms: list[tuple[int, float]] = []


class Simulation:
    """One policy against one trace on simulated devices. Create it, then call :meth:`run` once."""

    def __init__(
        self,
        trace: Trace,
        devices: Sequence[GpuSpec],
        policy: Policy,
        *,
        estimator: EstimatorLike,
        seed: int = 0,
        mem_spread: float = 0.02,
        time_spread: float = 0.1,
        ramp_fraction: float = 0.05,
        faults: FaultSpec | None = None,
        timeline: bool = False,
        truth: Truth | None = None,
        host: SimulatedHost | None = None,
        load_weights: bool = True,
    ) -> None:
        trace.check_devices(len(devices))
        self.trace = trace
        self.specs = tuple(devices)
        self.policy = policy
        self.estimator = estimator
        self.seed = seed
        self.ramp_fraction = ramp_fraction
        self.truth = truth or Truth(estimator, self.specs[0], mem_spread=mem_spread, time_spread=time_spread)
        self.gpus = [SimulatedGpu(spec, index=i) for i, spec in enumerate(self.specs)]
        self.weights = WeightStore(self.gpus, host or SimulatedHost())
        self.load_weights = load_weights
        self.now = 0.0
        self.counters = Counters()
        self.timeline = Timeline(len(devices)) if timeline else None
        self.faults = FaultPlan(faults or FaultSpec(), seed=seed, devices=len(devices), trace=trace)
        self.jobs: list[Job] = []
        self.rejected_upfront = 0
        self._heap: list[tuple[float, int, int, object, int]] = []
        self._seq = 0
        self._runs: list[list[Run]] = [[] for _ in devices]
        self._committed = [0] * len(devices)
        self._area = [0.0] * len(devices)
        self._area_at = [0.0] * len(devices)
        self._samples: list[DeviceSample] = [gpu.sample() for gpu in self.gpus]
        self._reclaimable = [0] * len(devices)
        self._sample_version = [0] * len(devices)
        self._mem_version = [0] * len(devices)
        self._fault_rng = random.Random(f"samples:{seed}")
        self._digest = hashlib.sha256()
        self._pending: list[str] = []  # event lines not yet hashed (hashed in batches: the same digest)
        self._first_arrival: float | None = None
        self._last_end = 0.0
        self._wake_pending: set[float] = set()
        self._build_jobs()

    # ------------------------------------------------------------------ set-up

    def _build_jobs(self) -> None:
        rng = random.Random(f"truth:{self.seed}")
        for index, record in enumerate(self.trace.arrivals):
            request = record.request
            rid = request.request_id or f"r{index}"
            try:
                mem, time = self.truth.ratios(request, record.true_peak_mb, record.true_seconds, rng)
            except BadRequest as exc:
                mem, time = 1.0, 1.0
                job = Job(index, rid, record.at, request, request.priority, mem, time, JobFaults())
                job.reason = f"bad request: {exc}"
                self.jobs.append(job)
                continue
            self.jobs.append(Job(index, rid, record.at, request, request.priority, mem, time, self.faults.job(index)))

    def _push(self, at: float, kind: int, obj: object, version: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, obj, version))

    def _log(self, text: str) -> None:
        pending = self._pending
        pending.append(f"{self.now!r} {text}\n")
        if len(pending) >= 4096:
            self._digest.update("".join(pending).encode())
            pending.clear()

    @property
    def digest(self) -> str:
        """SHA-256 of every event the simulation processed, in order: equal digests mean identical runs."""
        if self._pending:
            self._digest.update("".join(self._pending).encode())
            self._pending.clear()
        return self._digest.hexdigest()

    # ------------------------------------------------------------------ what policies may call

    def sample(self, index: int) -> DeviceSample:
        """The latest sample of a device (what a monitor measured; may be stale under faults)."""
        return self._samples[index]

    def samples(self) -> list[DeviceSample]:
        return self._samples

    def sample_changed(self, index: int) -> int:
        """A number that changes whenever the sample of ``index`` is refreshed."""
        return self._sample_version[index]

    def sample_current(self, index: int) -> bool:
        """Whether the latest sample of ``index`` still shows what the device holds (no refresh was missed)."""
        return self._sample_version[index] == self._mem_version[index]

    def current_versions(self) -> list[int]:
        """The version each device's sample has once refreshed: equal to :meth:`sample_versions`'s entry when the
        sample is current (the engine's own list: read it, do not keep or change it)."""
        return self._mem_version

    def sample_versions(self) -> list[int]:
        """:meth:`sample_changed` of every device (the engine's own list: read it, do not keep or change it)."""
        return self._sample_version

    def sample_reclaimable_mb(self, index: int) -> int:
        """MiB of the latest sample of ``index`` that idle resident weights held (this system's memory that making
        room evicts before anything of this system's would run out of memory)."""
        return self._reclaimable[index]

    def measured_other_mb(self, index: int) -> int:
        """Memory the latest sample shows in use by anything but this system's runs (context, outside); what the
        runs hold, pinned blocks included, is torch's ``reserved``."""
        sample = self._samples[index]
        ours = sample.torch.reserved_mb if sample.torch is not None else 0
        return max(0, sample.used_mb - ours)

    def is_running(self, index: int) -> int:
        """Number of runs on device ``index``."""
        return len(self._runs[index])

    def wake_at(self, at: float) -> None:
        """Make the engine call the policy's :meth:`Policy.pump` at ``at`` (at most one wake per time)."""
        if at not in self._wake_pending:
            self._wake_pending.add(at)
            self._push(at, _WAKE, None)

    def as_given(self, job: Job) -> RunParams:
        return self.truth.as_given(job.request)

    def start(
        self,
        job: Job,
        devices: tuple[int, ...],
        params: RunParams,
        planned_mb: int,
        *,
        lease_id: str = "",
        level: str = "none",
        pin: bool = False,
        keep_weights: bool = False,
    ) -> Run:
        """Start a run of ``job`` with ``params`` on ``devices``; ``planned_mb`` is what the policy counts per GPU,
        the run's weights included.

        The run first loads its weights on the devices where they are not resident (:mod:`._weights`); with
        ``keep_weights`` they stay resident after it. With ``pin``, ``planned_mb`` less the weights is pinned on
        each device at once (see the module documentation)."""
        if job.state is not None or (job.run is not None and job.run.alive):
            raise AssertionError(f"{job.request_id}: started while {job.state or 'running'}")
        now = self.now
        spec = self.specs[devices[0]]
        vram, seconds = self.truth.estimate(params, spec)
        weights_mb, ram_mb = self.truth.footprint(params, spec)
        true_peak = max(1, math.ceil(vram * job.mem_ratio))
        compute = max(1e-6, seconds * job.time_ratio)
        for d in devices:
            if self._committed[d] + planned_mb + self.measured_other_mb(d) > self.specs[d].memory_mib:
                self.counters.overcommits += 1
            self._committed[d] += planned_mb
        run = Run(job, devices, params, planned_mb, true_peak, compute, now, [], lease_id=lease_id, level=level)
        run.updated = now
        run.keep_weights = keep_weights
        run.weights_mb = min(weights_mb, true_peak) if self.load_weights else 0
        run.weights_key = f"{params.model}:{params.options.dit_dtype}"
        failure = self._acquire(run, ram_mb)
        if failure is not None:
            run.no_start = failure
            run.milestones.append((0.0, NO_START))
        else:
            load = run.load_work
            run.work = load + compute
            milestones = run.milestones
            milestones.append((load + self.ramp_fraction * compute, ALLOC))
            jf = job.faults
            if jf.spike_at is not None:
                milestones.append((load + max(self.ramp_fraction, jf.spike_at) * compute, SPIKE))
            if jf.crash_at is not None:
                milestones.append((load + jf.crash_at * compute, CRASH))
            milestones.append((load + compute, DONE))
            milestones.sort()
            if pin and planned_mb > 0:
                self._pin(run)
        job.run = run
        job.attempts += 1
        if job.first_start is None:
            job.first_start = now
        self.counters.runs += 1
        self._log(f"start {job.request_id} {devices} {planned_mb} {true_peak} {run.work!r}")
        for d in devices:
            self._runs[d].append(run)
        self._reschedule(devices)
        return run

    def finish(self, job: Job, state: str, reason: str = "") -> None:
        """Record the terminal state of a job (``completed``, ``rejected``, ``failed``, ``cancelled``, ...)."""
        job.terminals += 1
        if job.state is None:
            job.state = state
            job.reason = reason
            job.end = self.now
            if self.now > self._last_end:
                self._last_end = self.now
        self._log(f"end {job.request_id} {state}")

    def reject_upfront(self, job: Job, reason: str) -> None:
        self.rejected_upfront += 1
        self.finish(job, "rejected", reason)

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Process every event; afterwards every job has a terminal state (a stranded one is marked failed)."""
        for i, record in enumerate(self.trace.outside):
            self._push(record.at, _OUTSIDE_START, (f"trace-{i}", record.device, record.mb, record.until))
        for at, what, payload in self.faults.device_events():
            if what == "outside":
                assert isinstance(payload, tuple)
                name, device, share, until = payload
                payload = (name, device, int(share * self.specs[device].memory_mib), until)
            self._push(at, {"lost": _DEVICE_LOST, "outside": _OUTSIDE_START, "core": _CORE_CRASH}[what], payload)
        arrivals = self.jobs
        n = len(arrivals)
        i = 0
        heap = self._heap
        policy = self.policy
        policy.attach(self)
        while i < n or heap:
            if i < n and (not heap or arrivals[i].arrival <= heap[0][0]):
                at = arrivals[i].arrival
                self._advance_clock(at)
                while i < n and arrivals[i].arrival == at:
                    self._arrive(arrivals[i])
                    i += 1
            else:
                at, _, kind, obj, version = heapq.heappop(heap)
                self._advance_clock(at)
                self._dispatch(kind, obj, version)
                while heap and heap[0][0] == at and (i >= n or arrivals[i].arrival > at):
                    _, _, kind, obj, version = heapq.heappop(heap)
                    self._dispatch(kind, obj, version)
            self._refresh_samples()
            policy.pump(self.now)
        for job in self.jobs:
            if job.state is None:
                self.finish(job, "failed", "stranded: never admitted before the simulation ended")
        for d in range(len(self.gpus)):
            self._account(d)

    def _advance_clock(self, at: float) -> None:
        if at < self.now:
            raise AssertionError("time went backwards")
        self.now = at

    def _arrive(self, job: Job) -> None:
        if self._first_arrival is None:
            self._first_arrival = job.arrival
        self._log(f"arrive {job.request_id}")
        if job.reason.startswith("bad request"):
            self.reject_upfront(job, job.reason)
            return
        if job.faults.cancel_after_s is not None:
            self._push(job.arrival + job.faults.cancel_after_s, _CANCEL, job)
        self.policy.arrive(job, self.now)

    def _dispatch(self, kind: int, obj: object, version: int) -> None:
        if kind == _MILESTONE:
            assert isinstance(obj, Run)
            if obj.alive and obj.version == version:
                self._milestone(obj)
        elif kind == _OUTSIDE_START:
            assert isinstance(obj, tuple)
            name, device, mb, until = obj
            self._outside_start(name, device, mb, until)
        elif kind == _OUTSIDE_END:
            assert isinstance(obj, tuple)
            self._account(obj[1])
            self.gpus[obj[1]].remove_outside(obj[0])
            self._mem_version[obj[1]] += 1
            self._log(f"outside-end {obj[0]}")
        elif kind == _CANCEL:
            assert isinstance(obj, Job)
            self._cancel(obj)
        elif kind == _DEVICE_LOST:
            assert isinstance(obj, tuple)
            self._device_lost(obj[0], obj[1])
        elif kind == _DEVICE_BACK:
            assert isinstance(obj, int)
            self._account(obj)
            self.gpus[obj].recover()
            self._mem_version[obj] += 1
            self._log(f"device-back {obj}")
        elif kind == _CORE_CRASH:
            self.counters.core_crashes += 1
            self._count_fault("admission_crash")
            self._log("core-crash")
            self.policy.core_crash(self.now)
        elif kind == _WAKE:
            assert isinstance(self.now, float)
            self._wake_pending.discard(self.now)

    def _count_fault(self, kind: str) -> None:
        self.counters.faults[kind] = self.counters.faults.get(kind, 0) + 1

    def _outside_start(self, name: str, device: int, mb: int, until: float) -> None:
        gpu = self.gpus[device]
        if name.startswith("fault-"):
            self._count_fault("outside_grab")
        if gpu.lost:
            return
        self._account(device)
        if mb > gpu.free_mb:  # the other process's allocation fails, as a CUDA allocation would
            self.counters.outside_denied_mb += mb
            self._log(f"outside-denied {name} {device} {mb}")
            return
        gpu.add_outside(name, mb)
        take = mb
        self._mem_version[device] += 1
        self._log(f"outside {name} {device} {take}")
        self._push(until, _OUTSIDE_END, (name, device))

    def _cancel(self, job: Job) -> None:
        if job.state is not None:
            return
        self._count_fault("client_cancel")
        self._log(f"cancel {job.request_id}")
        run = job.run
        if run is not None and run.alive:
            self._stop(run, "cancelled")
        else:
            self.policy.cancel(job, self.now)

    def _device_lost(self, device: int, duration: float) -> None:
        gpu = self.gpus[device]
        if gpu.lost:
            return
        self.counters.device_losses += 1
        self._count_fault("device_lost")
        self._log(f"device-lost {device}")
        for run in list(self._runs[device]):
            self._stop(run, "error", reason="device lost")
        self._account(device)
        self.weights.drop_device(device)
        gpu.lose()
        self._mem_version[device] += 1
        self._push(self.now + duration, _DEVICE_BACK, device)

    # ------------------------------------------------------------------ runs

    def _acquire(self, run: Run, ram_mb: int) -> tuple[str, str] | None:
        """Take the run's host RAM and its weights on each device (loading those not resident); the outcome and
        reason it ends with at once when either does not fit."""
        weights = self.weights
        owner = run.job.request_id
        if not weights.take_ram(ram_mb):
            self.counters.host_oom_kills += 1
            self._log(f"host-oom {owner} {ram_mb}")
            free = weights.host_capacity_mb - weights.host_used_mb
            return "error", f"killed by the host's OOM killer: {ram_mb} MiB of host RAM, {free} MiB free"
        run.ram_mb = ram_mb
        if run.weights_mb <= 0:
            return None
        missing: list[int] = []
        load_mb = 0
        acquired: list[int] = []
        failure: tuple[str, str] | None = None
        for d in run.devices:
            self._account(d)
            try:
                loads = weights.acquire(d, run.weights_key, run.weights_mb)
            except CapacityError:
                self._count_oom(run, d, run.weights_mb)
                failure = "oom", f"out of memory on device {d} loading the weights"
                break
            except SystemFault:
                failure = "error", f"device {d} is lost"
                break
            acquired.append(d)
            self._mem_version[d] += 1
            if loads:
                missing.append(d)
                load_mb = max(load_mb, loads)
        run.weights_on = tuple(acquired)
        if failure is None and missing:
            run.load_work, from_disk = weights.load_seconds(run.params.model, load_mb, missing)
            self.counters.loads += 1
            self.counters.disk_loads += from_disk
            self._log(f"load {owner} {missing} {run.weights_key} {run.load_work!r}")
        return failure

    def _grab(self, device: int, owner: str, mb: int, *, pin: bool = False) -> None:
        """Allocate (or with ``pin``, pin) ``mb`` MiB for ``owner``, evicting idle resident weights when that makes
        it fit; raises the device's error when it does not."""
        gpu = self.gpus[device]
        take = gpu.pin if pin else gpu.allocate
        try:
            take(owner, mb)
        except CapacityError:
            held = gpu.allocations().get(owner, 0)
            pinned = gpu.pins().get(owner, 0)
            grow = max(0, mb - held) if pin else max(held + mb, pinned) - max(held, pinned)
            if not self.weights.make_room(device, grow):
                raise
            self._log(f"evicted {device} for {owner}")
            take(owner, mb)

    def _pin(self, run: Run) -> None:
        """Pin the run's planned memory, less the weights it holds there, on each of its devices: all, or none."""
        owner = run.job.request_id
        pinned: list[int] = []
        for d in run.devices:
            self._account(d)
            mb = max(0, run.planned_mb - (run.weights_mb if d in run.weights_on else 0))
            try:
                self._grab(d, owner, mb, pin=True)
            except (CapacityError, SystemFault):
                for p in pinned:
                    self.gpus[p].unpin(owner)
                self.counters.pin_failures += 1
                self._log(f"pin-failed {owner} {d} {run.planned_mb}")
                return
            pinned.append(d)
        for d in pinned:
            self._mem_version[d] += 1
        self._log(f"pin {owner} {run.devices} {run.planned_mb}")

    def _reschedule(self, devices: tuple[int, ...]) -> None:
        now = self.now
        seen: set[int] = set()
        for d in devices:
            for run in self._runs[d]:
                if id(run) in seen:
                    continue
                seen.add(id(run))
                run.done += (now - run.updated) * run.rate
                run.updated = now
                crowd = max(len(self._runs[x]) for x in run.devices) if len(run.devices) > 1 else len(self._runs[d])
                run.rate = 1.0 / crowd
                run.version += 1
                target = run.milestones[run.next][0]
                self._push(now + max(0.0, target - run.done) / run.rate, _MILESTONE, run, run.version)

    def _milestone(self, run: Run) -> None:
        target, kind = run.milestones[run.next]
        run.done = target
        run.updated = self.now
        run.next += 1
        if kind == ALLOC:
            for d in run.weights_on:
                self.weights.loaded(d, run.weights_key)
            if not self._allocate(run, run.true_peak_mb - run.weights_mb):
                return
        elif kind == SPIKE:
            self._count_fault("unforeseen_oom")
            extra = max(1, math.ceil(run.true_peak_mb * run.job.faults.spike_fraction))
            if not self._allocate(run, extra):
                return
        elif kind == CRASH:
            self._count_fault("run_crash")
            self._stop(run, "error", reason="the run crashed")
            return
        elif kind == NO_START:
            assert run.no_start is not None
            self._stop(run, run.no_start[0], reason=run.no_start[1])
            return
        else:
            self._stop(run, "ok")
            return
        target = run.milestones[run.next][0]
        run.version += 1
        self._push(self.now + max(0.0, target - run.done) / run.rate, _MILESTONE, run, run.version)

    def _allocate(self, run: Run, mb: int) -> bool:
        owner = run.job.request_id
        for d in run.devices:
            self._account(d)
            try:
                self._grab(d, owner, mb)
            except CapacityError:
                self._count_oom(run, d, mb)
                self._stop(run, "oom", reason=f"out of memory on device {d}")
                return False
            except SystemFault:
                self._stop(run, "error", reason=f"device {d} is lost")
                return False
            self._mem_version[d] += 1
        run.held_mb += mb
        return True

    def _count_oom(self, run: Run, device: int, mb: int) -> None:
        self.counters.oom_events += 1
        run.job.ooms += 1
        if self.timeline is not None:
            self.timeline.ooms.append((device, self.now))
        self._log(f"oom {run.job.request_id} {device} {mb}")

    def _stop(self, run: Run, outcome: str, *, reason: str = "") -> None:
        if not run.alive:
            return
        now = self.now
        run.done += (now - run.updated) * run.rate
        run.updated = now
        run.alive = False
        run.end = now
        run.outcome = outcome
        owner = run.job.request_id
        for d in run.devices:
            self._account(d)
            self._runs[d].remove(run)
            self._committed[d] -= run.planned_mb
            gpu = self.gpus[d]
            if not gpu.lost:
                gpu.free(owner)
                gpu.unpin(owner)
            if d in run.weights_on and self.weights.release(d, run.weights_key, run.weights_mb, keep=run.keep_weights):
                self._log(f"unload {d} {run.weights_key}")
            self._mem_version[d] += 1
            if self.timeline is not None:
                self.timeline.bars.append((d, run.started, now, outcome, owner))
        self.weights.give_ram(run.ram_mb)
        run.ram_mb = 0
        load_s = min(run.done, run.load_work) * len(run.devices)
        self.counters.load_gpu_s += load_s
        gpu_s = min(run.done, run.work) * len(run.devices) - load_s
        if outcome == "ok":
            self.counters.useful_gpu_s += gpu_s
        else:
            self.counters.wasted_gpu_s += gpu_s
        self._log(f"stop {owner} {outcome} {reason}")
        self._reschedule(run.devices)
        self.policy.run_ended(run, outcome, now)

    # ------------------------------------------------------------------ sampling and accounting

    def _account(self, device: int) -> None:
        now = self.now
        last = self._area_at[device]
        if now > last:
            gpu = self.gpus[device]
            used = 0 if gpu.lost else gpu.used_mb
            self._area[device] += used * (now - last)
            self._area_at[device] = now
            if self.timeline is not None:
                self.timeline.points[device].append((last, used, self._committed[device]))

    def _refresh_samples(self) -> None:
        if self._sample_version == self._mem_version:
            return
        stale = self.faults.spec.stale_sample
        failing = self.faults.spec.failed_sample
        for d, gpu in enumerate(self.gpus):
            if self._sample_version[d] == self._mem_version[d]:
                continue
            if stale or failing:
                draw = self._fault_rng.random()
                if draw < stale:
                    self.counters.stale_samples += 1
                    self._count_fault("stale_sample")
                    self.wake_at(self.now + 1.0)
                    continue
                if draw < stale + failing:
                    self.counters.failed_samples += 1
                    self._count_fault("failed_sample")
                    self.wake_at(self.now + 1.0)
                    continue
            self._samples[d] = gpu.sample()
            self._reclaimable[d] = self.weights.idle_mb(d)
            self._sample_version[d] = self._mem_version[d]

    # ------------------------------------------------------------------ results

    @property
    def makespan(self) -> float:
        start = self._first_arrival if self._first_arrival is not None else 0.0
        return max(0.0, self._last_end - start)

    def mean_memory_use(self) -> float:
        """Time-weighted memory in use over capacity, over all devices, from the first arrival to the last end."""
        span = self._last_end - (self._first_arrival or 0.0)
        if span <= 0:
            return 0.0
        total = sum(spec.memory_mib for spec in self.specs)
        return sum(self._area) / (span * total)

    def leaked_allocations(self) -> int:
        """Runs still holding or pinning memory, or still registered on a device, after the simulation (must be 0)."""
        held = sum(
            sum(1 for owner in gpu.allocations() if not owner.startswith("weights:")) + len(gpu.pins())
            for gpu in self.gpus
        )
        return sum(len(runs) for runs in self._runs) + held + self.weights.in_use() + (self.weights.host_used_mb > 0)
