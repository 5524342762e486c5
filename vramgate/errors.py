"""The vramgate error hierarchy.

Errors are split by who is at fault, so that a server can map them to a response without inspecting text:

* :class:`BadRequest` - the caller sent something invalid (a 4xx in HTTP terms);
* :class:`CapacityError` - the request is valid but there is not (or not yet) enough memory or queue room;
* :class:`SystemFault` - vramgate itself, or the machine it measures, failed.

Each error carries the fields a user needs to act on it, not only a message.
"""

from __future__ import annotations


class VramgateError(Exception):
    """Base class of every error vramgate raises on purpose."""


# --------------------------------------------------------------------------- caller's fault


class BadRequest(VramgateError):
    """The input is invalid. Nothing was accepted from it."""


class DecodeError(BadRequest):
    """A message, file or request body failed to decode or validate.

    ``path`` is the field path in msgspec's notation (``$``, ``$.width``, ``$.lora[0].rank``), ``reason`` says
    what is wrong with it, and ``line`` is the 1-based line of a JSON Lines or multi-line file, when known.
    """

    def __init__(self, reason: str, *, path: str = "$", line: int | None = None, source: str | None = None):
        self.reason = reason
        self.path = path
        self.line = line
        self.source = source
        where = f"{source}:" if source else ""
        where += f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{path}: {reason}")


class InvalidParameter(BadRequest):
    """A field decoded but its value is not valid for the model or device it names."""

    def __init__(self, field: str, value: object, reason: str, *, valid: str | None = None):
        self.field = field
        self.value = value
        self.reason = reason
        self.valid = valid
        text = f"{field}={value!r}: {reason}"
        if valid:
            text += f" (valid: {valid})"
        super().__init__(text)


class UnknownModel(InvalidParameter):
    """The request names a model profile that is not registered."""

    def __init__(self, model: str, known: list[str]):
        self.known = known
        super().__init__("model", model, "unknown model profile", valid=", ".join(sorted(known)))


class UnknownGPU(InvalidParameter):
    """A GPU name is not in the catalog."""

    def __init__(self, gpu: str, known: list[str]):
        self.known = known
        super().__init__("gpu", gpu, "unknown GPU", valid=", ".join(sorted(known)))


class ConfigError(BadRequest):
    """A configuration file or environment variable is invalid."""


# --------------------------------------------------------------------------- not enough capacity


class CapacityError(VramgateError):
    """The request is valid, but there is not enough memory or queue room for it."""


class DoesNotFit(CapacityError):
    """No plan within the request's ``max_level`` fits any device; the request was rejected.

    ``needed_mb`` is the VRAM the best plan found needs per GPU, ``available_mb`` the largest budget seen, and
    ``smallest_gpu`` the smallest catalog GPU the best plan fits (``None`` when none does).
    """

    def __init__(
        self,
        reason: str,
        *,
        needed_mb: int | None = None,
        available_mb: int | None = None,
        smallest_gpu: str | None = None,
    ):
        self.reason = reason
        self.needed_mb = needed_mb
        self.available_mb = available_mb
        self.smallest_gpu = smallest_gpu
        super().__init__(reason)


class HostRamDoesNotFit(DoesNotFit):
    """The request needs more host RAM than the host can ever give (code ``host_ram_does_not_fit``).

    ``needed_ram_mb`` is the host RAM its plan needs, ``available_ram_mb`` the most the host ledger can give.
    """

    def __init__(self, reason: str, *, needed_ram_mb: int | None = None, available_ram_mb: int | None = None):
        self.needed_ram_mb = needed_ram_mb
        self.available_ram_mb = available_ram_mb
        super().__init__(reason)


class QueueFull(CapacityError):
    """The admission queue is full. Try again after ``retry_after_s`` seconds."""

    def __init__(self, retry_after_s: float, *, queue_length: int):
        self.retry_after_s = retry_after_s
        self.queue_length = queue_length
        super().__init__(f"admission queue is full ({queue_length} waiting); retry after {retry_after_s:.1f} s")


class WaitTimeout(CapacityError):
    """The request waited longer than its ``max_wait_s`` and left the queue."""

    def __init__(self, request_id: str, waited_s: float):
        self.request_id = request_id
        self.waited_s = waited_s
        super().__init__(f"request {request_id} waited {waited_s:.1f} s without being admitted")


# --------------------------------------------------------------------------- vramgate's or the machine's fault


class SystemFault(VramgateError):
    """vramgate, or the hardware it measures, failed."""


class ActorStopped(SystemFault):
    """The actor was stopped (or the system shut down) before it could handle or answer a message."""


class AskTimeout(SystemFault):
    """An ``ask`` got no reply within its timeout."""


class MailboxFull(SystemFault):
    """``tell_nowait`` found the actor's mailbox full."""


class ActorCrashed(SystemFault):
    """An actor crashed more often than its supervisor allows; the system stops with this error."""


class ProbeError(SystemFault):
    """A hardware probe failed. Probes report most failures as warnings in the sample; this is the rest."""


class ReplayError(SystemFault):
    """A message log could not be replayed (other than a decode error, which is a :class:`DecodeError`)."""


class RequestStateError(SystemFault):
    """A message that a request in its state cannot take (:mod:`vramgate.policy.request`): ``request_id``, its
    ``state`` and the ``event`` the message meant."""

    def __init__(self, request_id: str, state: str, event: str):
        self.request_id = request_id
        self.state = state
        self.event = event
        super().__init__(f"request {request_id} is {state}: it cannot take {event!r}")
