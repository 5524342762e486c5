"""The message log: one header line, then one :class:`LogRecord` per delivered message (JSON Lines)."""

from __future__ import annotations

from typing import Generic, TypeVar

from vramgate.messages._base import Message, Seconds

#: Version of the log format. Bump it when a recorded log could no longer be read as before.
SCHEMA_VERSION = 1


class LogHeader(Message, frozen=True):
    """The first line of every message log."""

    schema_version: int = SCHEMA_VERSION
    vramgate_version: str = ""
    note: str = ""


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
