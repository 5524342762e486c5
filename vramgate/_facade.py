"""What the gate's helpers need of a gate, as typing Protocols: tickets and leases (:mod:`vramgate._ticket`), the
shell around the request core (:mod:`vramgate._shell`), quotes (:mod:`vramgate._quote`) and the replaced manager's
calls on a running gate (:mod:`vramgate.compat`). :class:`vramgate.gate.Gate` satisfies all three, and mypy checks
that where the gate hands itself to a helper; the helpers know these Protocols, not the gate, so ``gate.py``
imports them without a ring.

The Protocols name no ticket or lease type: :class:`TicketGate` takes the lease type as a parameter (a lease
passes itself when it reports progress), so that this module imports none of the helpers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from vramgate._residency import GateResidency
    from vramgate.actors import ActorSystem
    from vramgate.clock import Clock
    from vramgate.config import GateConfig
    from vramgate.hardware import SimulatedGpu
    from vramgate.hardware.backend import Backend
    from vramgate.messages import GenerationRequest, RequestRejected, ResourceSample
    from vramgate.messages.admission import SubmitRequest
    from vramgate.messages.gate import GateStatistics
    from vramgate.policy._standing import Standing
    from vramgate.policy.admission import AdmissionCore
    from vramgate.policy.estimate import Estimator
    from vramgate.policy.ledger import DeviceConfig

LeaseT = TypeVar("LeaseT", contravariant=True)


class TicketGate(Protocol[LeaseT]):
    """What a ticket and its lease (of type ``LeaseT``) need of their gate."""

    @property
    def config(self) -> GateConfig: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def backend(self) -> Backend: ...

    @property
    def queue_length(self) -> int: ...

    def standing(self, request_id: str) -> Standing | None: ...

    def simulated_device(self, index: int) -> SimulatedGpu | None: ...

    async def cancel(self, request_id: str, reason: str = ...) -> None: ...

    async def report_progress(self, lease: LeaseT, step: int, total: int) -> None: ...

    def report_progress_nowait(self, lease: LeaseT, step: int, total: int) -> None: ...


class ShellGate(TicketGate[LeaseT], Protocol[LeaseT]):
    """What the shell around the request core needs of its gate, besides what its tickets and leases need."""

    #: the latest resource sample the gate routed (the shell sets it)
    latest_sample: ResourceSample

    @property
    def system(self) -> ActorSystem | None: ...

    @property
    def residency(self) -> GateResidency: ...

    @property
    def admission_core(self) -> AdmissionCore | None: ...

    @property
    def ram_budget_mb(self) -> int | None: ...

    async def save_learned(self) -> None: ...


class ReadGate(Protocol):
    """What quotes and the replaced manager's calls read of a running gate; they reserve nothing."""

    @property
    def clock(self) -> Clock: ...

    @property
    def estimator(self) -> Estimator: ...

    @property
    def device_configs(self) -> tuple[DeviceConfig, ...]: ...

    @property
    def ram_budget_mb(self) -> int | None: ...

    @property
    def admission_core(self) -> AdmissionCore | None: ...

    def statistics(self) -> GateStatistics: ...

    def plan_budgets(self, *, others: bool = True) -> dict[str, int]: ...

    def retry_after_s(self) -> float: ...

    async def plans(self, request: GenerationRequest) -> SubmitRequest | RequestRejected: ...
