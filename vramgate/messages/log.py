"""The message log: one header line, then one :class:`LogRecord` per delivered message (JSON Lines)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from vramgate.messages._base import Message, Seconds

#: Version of the log format. Bump it when a recorded log could no longer be read as before.
SCHEMA_VERSION = 1


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
    """The first line of every message log: the format version, the cores it can replay, and a config blob."""

    schema_version: int = SCHEMA_VERSION
    vramgate_version: str = ""
    note: str = ""
    cores: tuple[CoreSpec, ...] = ()
    config: dict[str, Any] = msgspec.field(default_factory=dict)

    def core(self, name: str) -> CoreSpec | None:
        """The core recorded for actor ``name``, or ``None``."""
        for spec in self.cores:
            if spec.name == name:
                return spec
        return None


M = TypeVar("M", bound=Message)


class LogRecord(Message, Generic[M], frozen=True):
    """One delivered message: global sequence number, the clock's time, sender, recipient, correlation id.

    ``message`` is any registered message (decoded by its ``type`` tag, see :mod:`vramgate.messages.codec`).
    """

    seq: int
    at: Seconds
    sender: str
    recipient: str
    message: M
    correlation_id: int | None = None
