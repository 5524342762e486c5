"""Recording: every message the runtime delivers, as JSON Lines, for replay.

Each record is written (one ``write`` call, whole lines) before the message it describes can be handled, so a
process killed at any instant leaves every decision it acted on in the log, and at worst one torn last line.
A log that cannot be written (a full disk) never stops the system: the recorder stops recording and says so in
its :meth:`Recorder.statistics`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Sequence
from types import TracebackType
from typing import IO

import msgspec

from vramgate._logfile import Compactor, backup_path
from vramgate.actors.envelope import Envelope
from vramgate.errors import ConfigError
from vramgate.messages import LogClosed, LogHeader, LogRecord, LogStatistics, Message, log_line_codec

log = logging.getLogger("vramgate.actors")

#: Default size at which a log file is rotated (bytes), and how many rotated files are kept.
DEFAULT_MAX_BYTES = 100 * (1 << 20)
DEFAULT_BACKUPS = 5
#: The sender and recipient of the record that closes a run's log.
LOG = "log"


class Recorder:
    """Writes a :class:`LogHeader` line, then one :class:`LogRecord` line per message delivered in the system.

    ``target`` is a path or a binary stream (written and flushed per record, left open). A path is opened for
    appending: a restarted process adds a run after the previous one (ending a torn last line first), never
    erasing it. A file that reaches ``max_bytes`` (``None`` or 0: no limit) is rotated: it becomes ``PATH.1``
    (older ones ``PATH.2`` ... up to ``backups``; the oldest is then removed) and the run goes on in a fresh
    ``PATH`` that starts with a continuation header. Unchanged samples and repeated long prompts are written
    compactly (see :mod:`vramgate._logfile`; ``compact=False`` writes every one in full); readers expand them.
    The same inputs under a :class:`~vramgate.clock.ManualClock` give byte-identical logs.

    An ``OSError`` while writing (``ENOSPC``, ``EIO``...) stops recording: nothing raises into the system,
    :meth:`statistics` reports ``degraded`` with the error, and ``lost`` counts what was not written.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | IO[bytes],
        *,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        compact: bool = True,
    ) -> None:
        if backups < 1:
            raise ValueError("backups must be >= 1")
        self._path: str | None = os.fspath(target) if isinstance(target, (str, os.PathLike)) else None
        self._stream: IO[bytes] | None = None if self._path is not None else target  # type: ignore[assignment]
        self._owns = self._path is not None
        self._encode = log_line_codec().encode_json
        self._compactor: Compactor | None = Compactor() if compact else None
        self._max_bytes = max_bytes or 0
        self._backups = backups
        self._header: LogHeader | None = None
        self._last: Envelope | None = None
        self._size = 0
        self.records = 0
        self.bytes = 0
        self.segments = 0
        self.lost = 0
        self.error = ""
        self.started = False
        self.closed = False

    @property
    def degraded(self) -> bool:
        """Whether recording stopped because the log could not be written."""
        return bool(self.error)

    # ------------------------------------------------------------------ lifecycle

    def start(self, header: LogHeader) -> None:
        """Open the target and write ``header``. Called by the actor system when it starts.

        Raises :class:`~vramgate.errors.ConfigError` when the path cannot be opened (no such folder, no
        permission); a failing write only degrades the recorder.
        """
        if self.started or self.closed:
            raise RuntimeError("a Recorder records one run")
        self.started = True
        self._header = header
        if self._path is not None:
            try:
                stream = open(self._path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise ConfigError(f"cannot open the message log {self._path}: {exc.strerror or exc}") from None
            stream.close()
        try:
            if self._path is not None:
                self._stream = self._open_append(self._path)
                if self._rotates() and self._size >= self._max_bytes:
                    self._stream.close()
                    self._stream = None
                    self._rotate_files()
                    self._stream = self._open_append(self._path)
                self._end_torn_line()
            self._write_header(header)
        except OSError as exc:
            self._fail(exc)

    def record(self, envelope: Envelope) -> None:
        """Write one delivered message (before it can take effect)."""
        self._last = envelope
        if self.error or self._stream is None:
            self.lost += 1
            return
        record = envelope.to_record()
        if self._compactor is not None:
            record = self._compactor.compact(record)
        line = self._encode(record)
        try:
            self._write(line + b"\n")
            self.records += 1
        except OSError as exc:
            self.lost += 1
            self._fail(exc)
            return
        try:
            if self._size >= self._max_bytes > 0 and self._rotates():
                self._rotate(envelope.seq + 1)
        except OSError as exc:
            self._fail(exc)

    def flush(self) -> None:
        """Nothing to do: every record is written when it is recorded (kept for callers that flush)."""

    def close(self, unfinished: Sequence[int] = ()) -> None:
        """Write the record that closes the run, and close the file if this recorder opened it.

        ``unfinished``: the seqs of delivered messages their actors did not finish handling (the system stopped at
        once), written into the closing record so that a replay does not expect their outputs.
        """
        if self.closed:
            return
        self.closed = True
        try:
            if self._stream is not None and not self.error and self._header is not None:
                last = self._last
                seq = (last.seq if last is not None else self._header.first_seq - 1) + 1
                at = last.at if last is not None else 0.0
                closing: LogRecord[Message] = LogRecord(
                    seq=seq,
                    at=at,
                    sender=LOG,
                    recipient=LOG,
                    message=LogClosed(records=self.records, unfinished=tuple(unfinished)),
                )
                self._write(self._encode(closing) + b"\n")
        except OSError as exc:
            self._fail(exc)
        finally:
            if self._owns and self._stream is not None:
                stream, self._stream = self._stream, None
                try:
                    stream.close()
                except OSError as exc:
                    self._fail(exc)

    def statistics(self) -> LogStatistics:
        """Where the log goes, what was written, and whether recording stopped."""
        return LogStatistics(
            path=self._path or "<stream>",
            records=self.records,
            bytes=self.bytes,
            segments=self.segments,
            degraded=self.degraded,
            error=self.error,
            lost=self.lost,
        )

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _open_append(self, path: str) -> IO[bytes]:
        stream = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        try:
            self._size = os.fstat(stream.fileno()).st_size
        except OSError:
            stream.close()
            raise
        return stream

    def _end_torn_line(self) -> None:
        """End a torn last line left by a crash, so that the new run starts on a line of its own."""
        assert self._path is not None
        if self._size and _last_byte(self._path) != b"\n":
            self._write(b"\n")

    def _rotates(self) -> bool:
        if self._path is None or self._max_bytes <= 0 or self._stream is None:
            return False
        return stat.S_ISREG(os.fstat(self._stream.fileno()).st_mode)  # never rename a device or a pipe

    def _rotate(self, next_seq: int) -> None:
        assert self._path is not None
        assert self._stream is not None
        assert self._header is not None
        self._stream.close()
        self._stream = None
        self._rotate_files()
        self._stream = self._open_append(self._path)
        header = msgspec.structs.replace(self._header, segment=self.segments, first_seq=next_seq)
        self._write_header(header)

    def _rotate_files(self) -> None:
        assert self._path is not None
        oldest = backup_path(self._path, self._backups)
        if oldest.exists():
            oldest.unlink()
        for index in range(self._backups - 1, 0, -1):
            source = backup_path(self._path, index)
            if source.exists():
                source.rename(backup_path(self._path, index + 1))
        os.replace(self._path, backup_path(self._path, 1))

    def _write_header(self, header: LogHeader) -> None:
        if self._compactor is not None:
            self._compactor.reset()
        self._write(self._encode(header) + b"\n")
        self.segments += 1

    def _write(self, data: bytes) -> None:
        assert self._stream is not None
        self._write_to(self._stream, data)
        self._size += len(data)
        self.bytes += len(data)

    @staticmethod
    def _write_to(stream: IO[bytes], data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = stream.write(view)
            if written is None:  # a non-blocking stream that took nothing
                raise BlockingIOError("the log stream would block")
            view = view[written:]
        stream.flush()

    def _fail(self, exc: OSError) -> None:
        if not self.error:
            where = self._path or "the log stream"
            self.error = f"{where}: {exc.strerror or exc}"
            log.error("message log %s cannot be written (%s); recording stopped, the system goes on", where, exc)
        if self._owns and self._stream is not None:
            stream, self._stream = self._stream, None
            with contextlib.suppress(OSError):
                stream.close()


def _last_byte(path: str) -> bytes:
    with open(path, "rb") as stream:
        stream.seek(-1, os.SEEK_END)
        return stream.read(1)
