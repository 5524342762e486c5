"""vramgate: a GPU-memory resource manager for async video generation servers.

A request flows through preflight -> optimize -> admit -> run -> post-run cleanup; separate actors do each step
and talk only through the typed messages in :mod:`vramgate.messages`.
"""

from vramgate._ticket import Lease, RequestCancelled, RequestFailed, Ticket
from vramgate._version import __version__
from vramgate.actors import ActorRef, ActorSystem, Recorder
from vramgate.clock import Clock, ManualClock, MonotonicClock
from vramgate.config import GateConfig, load_config
from vramgate.errors import (
    ActorCrashed,
    ActorStopped,
    AskTimeout,
    BadRequest,
    CapacityError,
    ConfigError,
    DecodeError,
    DoesNotFit,
    HostRamDoesNotFit,
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
from vramgate.gate import Gate, open_gate
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
from vramgate.replay import replay

__all__ = [
    "ActorRef",
    "ActorSystem",
    "Gate",
    "GateConfig",
    "Lease",
    "Recorder",
    "RequestCancelled",
    "RequestFailed",
    "Ticket",
    "load_config",
    "open_gate",
    "replay",
    "ActorCrashed",
    "ActorStopped",
    "AskTimeout",
    "BadRequest",
    "CapacityError",
    "Clock",
    "ConfigError",
    "DecodeError",
    "DoesNotFit",
    "HostRamDoesNotFit",
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
