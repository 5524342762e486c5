"""vramgate: a GPU-memory resource manager for async video generation servers.

A request flows through preflight -> optimize -> admit -> run -> post-run cleanup; separate actors do each step
and talk only through the typed messages in :mod:`vramgate.messages`.
"""

from vramgate._version import __version__
from vramgate.clock import Clock, ManualClock, MonotonicClock
from vramgate.errors import (
    ActorCrashed,
    ActorStopped,
    AskTimeout,
    BadRequest,
    CapacityError,
    ConfigError,
    DecodeError,
    DoesNotFit,
    InvalidParameter,
    MailboxFull,
    ProbeError,
    QueueFull,
    ReplayError,
    SystemFault,
    UnknownGPU,
    UnknownModel,
    VramgateError,
    WaitTimeout,
)
from vramgate.messages import (
    GenerationRequest,
    LoraSpec,
    OptimizationSuggestion,
    Plan,
    ResourceRequirement,
    ResourceSample,
    RunOptions,
    SystemResourceInfo,
    VRAMInfo,
)

__all__ = [
    "ActorCrashed",
    "ActorStopped",
    "AskTimeout",
    "BadRequest",
    "CapacityError",
    "Clock",
    "ConfigError",
    "DecodeError",
    "DoesNotFit",
    "GenerationRequest",
    "InvalidParameter",
    "LoraSpec",
    "MailboxFull",
    "ManualClock",
    "MonotonicClock",
    "OptimizationSuggestion",
    "Plan",
    "ProbeError",
    "QueueFull",
    "ReplayError",
    "ResourceRequirement",
    "ResourceSample",
    "RunOptions",
    "SystemFault",
    "SystemResourceInfo",
    "UnknownGPU",
    "UnknownModel",
    "VRAMInfo",
    "VramgateError",
    "WaitTimeout",
    "__version__",
]
