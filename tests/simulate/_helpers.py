"""Small traces and a minimal policy for the simulator tests."""

from __future__ import annotations

from vramgate.messages.requests import GenerationRequest, RunOptions
from vramgate.messages.trace import Arrival, Outside, TraceLine
from vramgate.simulate import Trace, decode_trace, encode_trace
from vramgate.simulate._model import Job, Run
from vramgate.simulate.engine import Simulation

A14B_FLAGS = RunOptions(offload_model=True, convert_model_dtype=True)


def small(index: int, **kw: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "model": "ti2v-5B",
        "width": 1280,
        "height": 704,
        "frames": 49,
        "steps": 20,
        "request_id": f"r{index}",
    }
    fields.update(kw)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def trace(*records: TraceLine) -> Trace:
    """Encode and decode, as a file would be."""
    return decode_trace(encode_trace(records))


def arrivals(count: int, *, every: float = 0.0, **kw: object) -> list[TraceLine]:
    return [Arrival(at=i * every, request=small(i), **kw) for i in range(count)]  # type: ignore[arg-type]


def outside(at: float, device: int, mb: int, until: float) -> Outside:
    return Outside(at=at, device=device, mb=mb, until=until)


class StartAll:
    """Starts every request at once on device 0 as given, counting ``planned_mb`` as declared (and pinning it with
    ``pin``; with ``keep_weights`` its weights stay resident after it)."""

    name = "start-all"

    def __init__(self, planned_mb: int = 0, *, pin: bool = False, keep_weights: bool = False) -> None:
        self.planned_mb = planned_mb
        self.pin = pin
        self.keep_weights = keep_weights
        self.sim: Simulation | None = None
        self.ended: list[tuple[str, str, float]] = []

    def attach(self, sim: Simulation) -> None:
        self.sim = sim

    def arrive(self, job: Job, now: float) -> None:
        assert self.sim is not None
        self.sim.start(job, (0,), self.sim.as_given(job), self.planned_mb, pin=self.pin, keep_weights=self.keep_weights)

    def cancel(self, job: Job, now: float) -> None:
        assert self.sim is not None
        self.sim.finish(job, "cancelled")

    def run_ended(self, run: Run, outcome: str, now: float) -> None:
        assert self.sim is not None
        self.ended.append((run.job.request_id, outcome, now))
        state = {"ok": "completed", "cancelled": "cancelled"}.get(outcome, "failed")
        self.sim.finish(run.job, state, outcome)

    def pump(self, now: float) -> None:
        return None

    def core_crash(self, now: float) -> None:
        return None

    def open_leases(self) -> int:
        return 0
