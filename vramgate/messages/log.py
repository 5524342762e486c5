"""The message log: one header line, then one :class:`LogRecord` per delivered message (JSON Lines)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from vramgate.messages._base import Message, Seconds
from vramgate.messages.resources import HostSample

#: Version of the log format. Bump it when a recorded log could no longer be read as before. From version 2 on,
#: the records of a run have consecutive sequence numbers (a gap means records were lost).
SCHEMA_VERSION = 2


class CoreSpec(Message, frozen=True):
    """A sans-io core that ran inside an actor of the recorded system, so that a replay can rebuild it.

        ``name`` is the actor's name (the ``recipient``/``sender`` of its records), ``kind`` the key under which a
        factory is registered (:func:`vramgate.replay.register_core_kind`), ``config`` whatever that factory needs
        to build the same core again, and ``module`` the module the core's class came from (for people: a replay
    never imports a module a log names).
    """

    name: str
    kind: str
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    module: str = ""


class LogHeader(Message, frozen=True):
    """The first line of every log segment: the format version, the cores it can replay, and a config blob.

    ``segment`` is 0 where a run starts; a log rotated for its size goes on in a segment 1, 2, ... whose header
    repeats the run's and whose ``first_seq`` is the sequence number of its first record.
    """

    schema_version: int = SCHEMA_VERSION
    vramgate_version: str = ""
    note: str = ""
    cores: tuple[CoreSpec, ...] = ()
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    segment: int = 0
    first_seq: int = 1

    def core(self, name: str) -> CoreSpec | None:
        """The core recorded for actor ``name``, or ``None``."""
        for spec in self.cores:
            if spec.name == name:
                return spec
        return None


M = TypeVar("M", bound=Message)


class LogRecord(Message, Generic[M], frozen=True, omit_defaults=True):
    """One delivered message: global sequence number, the clock's time, sender, recipient, correlation id.

    ``message`` is any registered message (decoded by its ``type`` tag, see :mod:`vramgate.messages.codec`).
    ``redelivery_of`` marks a message offered again after it crashed its actor (the seq of that delivery).
    ``refs`` (on disk only) names the record that holds a long prompt this record's request carries.
    """

    seq: int
    at: Seconds
    sender: str
    recipient: str
    message: M
    correlation_id: int | None = None
    redelivery_of: int | None = None
    refs: dict[str, int] | None = None


class SameSample(Message, frozen=True, omit_defaults=True):
    """In a log only: the previous ``ResourceSample`` to the same recipient in this segment, again, unchanged
    but for its time stamp ``at`` (and its ``host`` figures, when given).

    Readers (:func:`vramgate.replay.read_log`) give back the full sample; cores never see this message.
    """

    at: Seconds
    host: HostSample | msgspec.UnsetType | None = msgspec.UNSET


class LogClosed(Message, frozen=True):
    """The last record of a run whose log was closed cleanly (sender and recipient ``"log"``).

    A run that ends without it was cut short (a crash, a kill): outputs its cores would still have sent are
    not a divergence then. ``unfinished`` lists the records delivered to a mailbox that their actor had not
    finished handling when the system stopped at once (a cancellation, a stop past its timeout, a crash that
    stopped it): what a replay's cores produce for them was never sent, so it is not expected in the log.
    """

    records: int
    unfinished: tuple[int, ...] = ()


class ActorFailed(Message, frozen=True):
    """Logged (sender ``"supervisor"``) when an actor crashed on record ``seq`` once more than its restart policy
    allows, which stopped the system: a replay whose core raises there reproduces the run."""

    seq: int
    error: str = ""


class LogStatistics(Message, frozen=True):
    """A recorder: where it writes, what it wrote, and whether recording stopped.

    ``degraded`` is set when the log could not be written (a full disk, say): recording stops, the system goes
    on, ``error`` says why and ``lost`` counts the records not written since.
    """

    path: str
    records: int
    bytes: int
    segments: int
    degraded: bool = False
    error: str = ""
    lost: int = 0
