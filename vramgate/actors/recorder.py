"""Recording: every message the runtime sends, as JSON Lines, for replay."""

from __future__ import annotations

import os
from types import TracebackType
from typing import IO

from vramgate.actors.envelope import Envelope
from vramgate.messages import LogHeader, log_line_codec


class Recorder:
    """Writes a :class:`LogHeader` line, then one :class:`LogRecord` line per message sent in the system.

    ``target`` is a path (opened, and closed by :meth:`close`) or a binary stream (flushed, left open). Lines
    are encoded with the reusable log codec into a buffer and written in batches of ``buffer_bytes``, so
    recording costs a few microseconds a message. The same inputs under a
    :class:`~vramgate.clock.ManualClock` give byte-identical logs.
    """

    def __init__(self, target: str | os.PathLike[str] | IO[bytes], *, buffer_bytes: int = 1 << 16) -> None:
        self._owns = isinstance(target, (str, os.PathLike))
        self._target: str | os.PathLike[str] | IO[bytes] = target
        self._stream: IO[bytes] | None = None
        self._encode = log_line_codec().encode_json
        self._buffer = bytearray()
        self._limit = buffer_bytes
        self.records = 0
        self.closed = False

    def start(self, header: LogHeader) -> None:
        """Open the target and write ``header``. Called by the actor system when it starts."""
        if self._stream is not None or self.closed:
            raise RuntimeError("a Recorder records one run")
        if isinstance(self._target, (str, os.PathLike)):
            self._stream = open(self._target, "wb")  # noqa: SIM115 - closed in close()
        else:
            self._stream = self._target
        self._buffer += self._encode(header)
        self._buffer += b"\n"

    def record(self, envelope: Envelope) -> None:
        """Append one message."""
        buffer = self._buffer
        buffer += self._encode(envelope.to_record())
        buffer += b"\n"
        self.records += 1
        if len(buffer) >= self._limit:
            self.flush()

    def flush(self) -> None:
        """Write out what is buffered."""
        if self._stream is not None and self._buffer:
            self._stream.write(self._buffer)
            self._buffer.clear()
            self._stream.flush()

    def close(self) -> None:
        """Flush, and close the file if this recorder opened it."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.closed = True
            if self._owns and self._stream is not None:
                self._stream.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
