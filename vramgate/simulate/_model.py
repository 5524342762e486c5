"""The simulator's mutable records: a job (one request of the trace) and a run (one attempt on devices)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vramgate.messages.plans import RunParams
from vramgate.messages.requests import GenerationRequest

# Milestone kinds of a run, in the order they happen at equal progress.
NO_START = 0  # the run could not start (its weights or host RAM did not fit): it ends at once
ALLOC = 1  # also: its weights are loaded (a run's memory rises once it computes)
SPIKE = 2
CRASH = 3
DONE = 4


@dataclass(eq=False, slots=True)
class JobFaults:
    """What the fault plan holds for one request: a crash point, an unforeseen spike, a client cancel."""

    crash_at: float | None = None  # fraction of the run's work
    spike_at: float | None = None  # fraction of the run's work
    spike_fraction: float = 0.0  # extra memory, as a fraction of the run's peak
    cancel_after_s: float | None = None  # seconds after arrival


@dataclass(eq=False, slots=True)
class Job:
    """One request of the trace and what happened to it."""

    index: int
    request_id: str
    arrival: float
    request: GenerationRequest
    priority: int
    mem_ratio: float
    time_ratio: float
    faults: JobFaults
    first_start: float | None = None
    end: float | None = None
    state: str | None = None
    reason: str = ""
    terminals: int = 0
    run: Run | None = None
    attempts: int = 0
    ooms: int = 0


@dataclass(eq=False, slots=True)
class Run:
    """One attempt of a job on one or more devices, progressing at the speed its devices give it."""

    job: Job
    devices: tuple[int, ...]
    params: RunParams
    planned_mb: int
    true_peak_mb: int
    work: float
    started: float
    milestones: list[tuple[float, int]]
    lease_id: str = ""
    level: str = "none"
    done: float = 0.0
    rate: float = 1.0
    updated: float = 0.0
    next: int = 0
    version: int = 0
    held_mb: int = 0
    alive: bool = True
    end: float | None = None
    outcome: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    weights_key: str = ""  # the resident weights it uses (see vramgate.simulate._weights)
    weights_mb: int = 0  # on each of its devices
    weights_on: tuple[int, ...] = ()  # the devices whose weights it acquired
    keep_weights: bool = False
    load_work: float = 0.0  # work (seconds at full speed) spent loading, before it computes
    ram_mb: int = 0  # host RAM it holds
    no_start: tuple[str, str] | None = None  # the outcome and reason it ends with at once, when it cannot start
