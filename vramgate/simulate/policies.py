"""The baseline policies: what operators do today, judged side by side with vramgate.

* ``serial``: one run at a time per device, first come first served, the request as given;
* ``check-then-run``: start when the measured free memory is at least the estimate plus 1 GiB, with no
  reservations (concurrent starts race: memory rises only once a run is under way);
* ``retry-on-oom``: start when anything is free; on an out-of-memory error shrink one step (the optimizer's next
  level) and retry, as accelerate's ``find_executable_batch_size`` does for batches;
* ``seed``: the system vramgate replaces: base VRAM 6500/6000/4500 MB for t2v-A14B/i2v-A14B/ti2v-5B, times a
  resolution factor (480p 0.6, 720p 1.0, 1080p 2.4), ``1 + (steps-50)/50*0.3`` and ``1 + 0.15*loras``; admitted
  when ``free >= estimate + 1024`` MB, with no reservations.

All are first come first served with head-of-line blocking, and run the request as given unless they say
otherwise. Their estimates (where they use one) only decide when to start; what a run really needs is the
engine's truth.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from vramgate.errors import VramgateError
from vramgate.messages.plans import Plan, RunParams
from vramgate.simulate._model import Job, Run

if TYPE_CHECKING:
    from vramgate.policy.optimize import Optimizer
    from vramgate.simulate.engine import Simulation

_HEADROOM_MB = 1024
_TERMINAL = {"ok": "completed", "oom": "failed", "error": "failed", "cancelled": "cancelled"}


class FcfsPolicy:
    """First come first served with head-of-line blocking; subclasses say where (and whether) the head starts."""

    name = "fcfs"

    def __init__(self) -> None:
        self.queue: deque[Job] = deque()
        self._sim: Simulation | None = None

    @property
    def sim(self) -> Simulation:
        assert self._sim is not None, "the policy is not attached to a simulation"
        return self._sim

    def attach(self, sim: Simulation) -> None:
        self._sim = sim

    def arrive(self, job: Job, now: float) -> None:
        params = self.sim.as_given(job)
        if not self.admissible(job, params):
            self.sim.reject_upfront(job, f"{self.name}: the request can never start on these devices")
            return
        self.queue.append(job)

    def cancel(self, job: Job, now: float) -> None:
        # Removed lazily: pump skips jobs that already have a terminal state.
        self.sim.finish(job, "cancelled", "cancelled while queued")

    def run_ended(self, run: Run, outcome: str, now: float) -> None:
        self.sim.finish(run.job, _TERMINAL[outcome], outcome)

    def pump(self, now: float) -> None:
        queue = self.queue
        while queue:
            job = queue[0]
            if job.state is not None:
                queue.popleft()
                continue
            if not self.place(job):
                return
            queue.popleft()

    def core_crash(self, now: float) -> None:
        return None

    def open_leases(self) -> int:
        return 0

    # ------------------------------------------------------------------ what subclasses decide

    def admissible(self, job: Job, params: RunParams) -> bool:
        """Whether the request could ever start (else it is rejected up front)."""
        return True

    def place(self, job: Job) -> bool:
        """Start ``job`` if it can start now; ``False`` leaves it at the head of the queue."""
        raise NotImplementedError

    def _live(self, index: int) -> bool:
        return not self.sim.sample(index).lost

    def _pick(self, job: Job, world: int, ok: object) -> tuple[int, ...] | None:
        devices: list[int] = []
        for index in range(len(self.sim.specs)):
            if self._live(index) and ok(index):  # type: ignore[operator]
                devices.append(index)
                if len(devices) == world:
                    return tuple(devices)
        return None


class SerialPolicy(FcfsPolicy):
    """One run at a time per device, the request as given."""

    name = "serial"

    def admissible(self, job: Job, params: RunParams) -> bool:
        return params.options.gpus <= len(self.sim.specs)

    def place(self, job: Job) -> bool:
        params = self.sim.as_given(job)
        devices = self._pick(job, params.options.gpus, lambda i: self.sim.is_running(i) == 0)
        if devices is None:
            return False
        self.sim.start(job, devices, params, 0)
        return True


class _ThresholdPolicy(FcfsPolicy):
    """Start when the measured free memory is at least the policy's estimate plus 1 GiB."""

    def estimate_mb(self, job: Job, params: RunParams, device: int) -> int:
        raise NotImplementedError

    def admissible(self, job: Job, params: RunParams) -> bool:
        sim = self.sim
        if params.options.gpus > len(sim.specs):
            return False
        fitting = sum(
            1
            for i, spec in enumerate(sim.specs)
            if self.estimate_mb(job, params, i) + _HEADROOM_MB <= spec.memory_mib - sim.gpus[i].context_overhead_mb
        )
        return fitting >= params.options.gpus

    def place(self, job: Job) -> bool:
        sim = self.sim
        params = sim.as_given(job)
        devices = self._pick(
            job,
            params.options.gpus,
            lambda i: sim.sample(i).free_mb >= self.estimate_mb(job, params, i) + _HEADROOM_MB,
        )
        if devices is None:
            return False
        sim.start(job, devices, params, self.estimate_mb(job, params, devices[0]))
        return True


class CheckThenRunPolicy(_ThresholdPolicy):
    """The check-and-go approach with the real estimator's figures, and no reservations."""

    name = "check-then-run"

    def estimate_mb(self, job: Job, params: RunParams, device: int) -> int:
        return self.sim.truth.estimate(params, self.sim.specs[device])[0]


#: The replaced system's base VRAM estimates (MB) and factors.
SEED_BASE_MB = {"t2v-A14B": 6500, "i2v-A14B": 6000, "ti2v-5B": 4500}
SEED_RESOLUTION = ((480, 0.6), (720, 1.0), (1080, 2.4))


def seed_estimate_mb(model: str, width: int, height: int, steps: int, loras: int) -> int:
    """The replaced system's VRAM estimate."""
    base = SEED_BASE_MB.get(model, SEED_BASE_MB["t2v-A14B"])
    short = min(width, height)
    factor = SEED_RESOLUTION[-1][1]
    for limit, value in SEED_RESOLUTION:
        if short <= limit:
            factor = value
            break
    return int(base * factor * (1 + (steps - 50) / 50 * 0.3) * (1 + 0.15 * loras))


class SeedPolicy(_ThresholdPolicy):
    """The system vramgate replaces: its own (far too low) estimates, free >= estimate + 1 GiB."""

    name = "seed"

    def estimate_mb(self, job: Job, params: RunParams, device: int) -> int:
        return max(0, seed_estimate_mb(params.model, params.width, params.height, params.steps, len(params.lora)))


class RetryOnOomPolicy(FcfsPolicy):
    """Start whenever anything is free; after an out-of-memory error retry one optimizer level smaller."""

    name = "retry-on-oom"

    def __init__(self, optimizer: Optimizer) -> None:
        super().__init__()
        self.optimizer = optimizer
        self._plans: dict[int, Plan] = {}

    def admissible(self, job: Job, params: RunParams) -> bool:
        return params.options.gpus <= len(self.sim.specs)

    def place(self, job: Job) -> bool:
        sim = self.sim
        plan = self._plans.get(job.index)
        params = plan.params if plan is not None else sim.as_given(job)
        best: list[int] = sorted(
            (i for i in range(len(sim.specs)) if self._live(i) and sim.sample(i).free_mb > 0),
            key=lambda i: (-sim.sample(i).free_mb, i),
        )
        world = params.options.gpus
        if len(best) < world:
            return False
        devices = tuple(sorted(best[:world]))
        sim.start(job, devices, params, 0, level=plan.level if plan is not None else "none")
        return True

    def run_ended(self, run: Run, outcome: str, now: float) -> None:
        job = run.job
        if outcome != "oom":
            self._plans.pop(job.index, None)
            super().run_ended(run, outcome, now)
            return
        gpu = self.sim.specs[run.devices[0]]
        plan = self._plans.get(job.index)
        try:
            if plan is None:
                plan = self.optimizer.optimize(
                    job.request, gpu=gpu, budget_mb=1 << 30, ram_budget_mb=None, max_level="none"
                )
            shrunk = self.optimizer.next_level(plan, gpu=gpu, max_level=job.request.max_level)
        except VramgateError:
            shrunk = None
        if shrunk is None:
            self._plans.pop(job.index, None)
            self.sim.finish(job, "failed", "out of memory at the smallest plan allowed")
            return
        self._plans[job.index] = shrunk
        self.queue.appendleft(job)


BASELINES = ("serial", "check-then-run", "retry-on-oom", "seed")
