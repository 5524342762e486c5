"""The typed message protocol. Every message is a frozen, tagged msgspec Struct."""

from vramgate.messages import admission as admission
from vramgate.messages import cluster as cluster  # a router and its node gates (NodeResult, RouteDecision, ...)
from vramgate.messages import estimation as estimation  # the estimator's messages (EstimateRequirement, ...)
from vramgate.messages import gate as gate  # the gate's statistics (GateStatistics, ...)
from vramgate.messages import monitor as monitor  # the monitor's messages (Subscribe, GetTrend, ...)
from vramgate.messages import optimization as optimization  # the optimizer's messages (OptimizePlan, ...)
from vramgate.messages import quote as quote  # a gate's quote and its declines (Quote, SubmitDeclined)
from vramgate.messages import trace as trace  # the simulator's trace records (Arrival, Outside)
from vramgate.messages._base import MB, Message, message_types
from vramgate.messages.codec import (
    Codec,
    any_message_type,
    decode_json,
    encode_json,
    log_line_codec,
    log_record_codec,
    message_codec,
)
from vramgate.messages.lifecycle import (
    CleanupReport,
    CleanupRequest,
    LeaseReleased,
    ObservedPeak,
    Outcome,
    PlanOptimized,
    RejectCode,
    RequestAccepted,
    RequestAdmitted,
    RequestEnded,
    RequestQueued,
    RequestRejected,
    RequirementEstimated,
    RunFinished,
    RunProgress,
    TerminalState,
)
from vramgate.messages.log import SCHEMA_VERSION, LogHeader, LogRecord
from vramgate.messages.plans import (
    Component,
    OptimizationSuggestion,
    Plan,
    QualityImpact,
    ResolvedOptions,
    ResourceRequirement,
    RunParams,
)
from vramgate.messages.requests import (
    LEVELS,
    GenerationRequest,
    LoraSpec,
    OptimizationLevel,
    ParamDtype,
    RunOptions,
    Task,
    level_index,
)
from vramgate.messages.resources import (
    Backend,
    DeviceSample,
    HostSample,
    ProcessMemory,
    ResourceSample,
    SystemResourceInfo,
    TorchMemory,
    VRAMInfo,
)

__all__ = [
    "LEVELS",
    "MB",
    "SCHEMA_VERSION",
    "Backend",
    "CleanupReport",
    "CleanupRequest",
    "Codec",
    "Component",
    "DeviceSample",
    "GenerationRequest",
    "HostSample",
    "LeaseReleased",
    "LogHeader",
    "LogRecord",
    "LoraSpec",
    "Message",
    "ObservedPeak",
    "OptimizationLevel",
    "OptimizationSuggestion",
    "Outcome",
    "ParamDtype",
    "Plan",
    "PlanOptimized",
    "ProcessMemory",
    "QualityImpact",
    "RejectCode",
    "RequestAccepted",
    "RequestAdmitted",
    "RequestEnded",
    "RequestQueued",
    "RequestRejected",
    "RequirementEstimated",
    "ResolvedOptions",
    "ResourceRequirement",
    "ResourceSample",
    "RunFinished",
    "RunOptions",
    "RunParams",
    "RunProgress",
    "SystemResourceInfo",
    "Task",
    "TerminalState",
    "TorchMemory",
    "VRAMInfo",
    "any_message_type",
    "decode_json",
    "encode_json",
    "level_index",
    "log_line_codec",
    "log_record_codec",
    "message_codec",
    "message_types",
]
