"""The generation a server runs inside a lease: pluggable, chosen by name.

* ``simulated`` - :class:`~vramgate.runners.SimulatedRun` on a simulated GPU (no GPU needed);
* ``torch`` - :class:`~vramgate.runners.TorchWorkload`: really allocates the admitted amount on CUDA;
* ``auto`` (the default) - per lease: simulated on a simulated device, torch on a real one;
* ``diffusers`` - a diffusers pipeline run with :func:`vramgate.integrations.diffusers.run_in_lease`, the
  request's prompt as its prompt.

A runner is any ``async (lease) -> object``; pass your own to :func:`vramgate.server.create_app`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from vramgate.config import GateConfig
from vramgate.errors import ConfigError
from vramgate.runners import RunTruth, SimulatedRun, TorchWorkload

if TYPE_CHECKING:
    from vramgate._ticket import Lease
    from vramgate.gate import Gate

Runner = Callable[["Lease"], Awaitable[object]]
RunnerKind = Literal["auto", "simulated", "torch", "diffusers"]
RUNNER_KINDS: tuple[RunnerKind, ...] = ("auto", "simulated", "torch", "diffusers")


class AutoRunner:
    """Simulate on simulated devices, allocate with torch on real ones."""

    def __init__(self, simulated: SimulatedRun, torch: TorchWorkload) -> None:
        self.simulated = simulated
        self.torch = torch

    async def __call__(self, lease: Lease) -> object:
        if lease.simulated is not None:
            return await self.simulated(lease)
        return await self.torch(lease)


class DiffusersRunner:
    """Run a diffusers pipeline in the lease with its plan applied; the request's prompt is the prompt."""

    def __init__(self, pipe: Any, **call_kwargs: Any) -> None:
        self.pipe = pipe
        self.call_kwargs = call_kwargs

    async def __call__(self, lease: Lease) -> object:
        from vramgate.integrations.diffusers import run_in_lease

        prompt = lease.ticket.request.prompt
        return await run_in_lease(self.pipe, lease, prompt=prompt, **self.call_kwargs)


def load_pipeline(path: str) -> Any:
    """A diffusers pipeline from a local directory (never downloads)."""
    try:
        from diffusers import DiffusionPipeline
    except ImportError:
        hint = "pip install -e '.[diffusers]' from a clone of vramgate"
        raise ConfigError(f"the diffusers runner needs diffusers: {hint}") from None
    pipeline_class: Any = DiffusionPipeline
    return pipeline_class.from_pretrained(path, local_files_only=True)


def timed_config(config: GateConfig, kind: RunnerKind, *, time_scale: float, min_seconds: float) -> GateConfig:
    """``config`` told how long the runs of the runner ``kind`` take (``[run] time_scale`` and ``min_seconds``):
    simulated and torch runs last their plan's estimate times ``time_scale``, at least ``min_seconds``; a
    diffusers run takes what it takes. Admission then expects runs to end when they really do, and a full
    queue's ``Retry-After`` says when this server will have room."""
    if kind == "diffusers":
        return config
    run = msgspec.structs.replace(config.run, time_scale=time_scale, min_seconds=min_seconds)
    return msgspec.structs.replace(config, run=run)


def make_runner(
    kind: RunnerKind,
    gate: Gate,
    *,
    time_scale: float = 0.01,
    min_seconds: float = 0.5,
    pipeline: Any = None,
) -> Runner:
    """The runner called ``kind`` for ``gate`` (``pipeline``: a diffusers pipeline or a local path to one)."""
    if time_scale <= 0:
        raise ConfigError(f"time_scale must be positive, not {time_scale}")
    truth = RunTruth(gate.estimator)
    simulated = SimulatedRun(gate.clock, time_scale=time_scale, min_seconds=min_seconds, truth=truth)
    if kind == "simulated":
        return simulated
    torch = TorchWorkload(time_scale=time_scale, min_seconds=min_seconds, truth=truth)
    if kind == "torch":
        return torch
    if kind == "auto":
        return AutoRunner(simulated, torch)
    if kind == "diffusers":
        if pipeline is None:
            raise ConfigError("the diffusers runner needs a pipeline (serve --pipeline PATH)")
        return DiffusersRunner(load_pipeline(pipeline) if isinstance(pipeline, str) else pipeline)
    raise ConfigError(f"unknown runner {kind!r} (one of {', '.join(RUNNER_KINDS)})")
