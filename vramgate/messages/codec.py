"""One reusable encoder/decoder pair for JSON and msgpack, with typed errors that name the field path.

Everything that enters vramgate from outside (request bodies, files, logs) is decoded here, so bad input always
becomes a :class:`~vramgate.errors.DecodeError` with the field path (``$.width``) and the reason.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any, Generic, TypeVar, Union

import msgspec

from vramgate.errors import DecodeError
from vramgate.messages._base import Message, message_types
from vramgate.messages.log import LogHeader, LogRecord

T = TypeVar("T")

#: The reason given for input nested deeper than the decoder can follow.
TOO_DEEP = "nested too deeply to decode"

_PATH = re.compile(r"^(?P<reason>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)


def decode_error(exc: msgspec.DecodeError, *, line: int | None = None, source: str | None = None) -> DecodeError:
    """Turn msgspec's error into a :class:`DecodeError` with ``path`` and ``reason`` split apart."""
    match = _PATH.match(str(exc))
    reason = str(exc)
    path = "$"
    if match is not None:
        reason = match.group("reason")
        path = match.group("path") or "$"
    return DecodeError(reason, path=path, line=line, source=source)


class Codec(Generic[T]):
    """A reusable JSON and msgpack encoder/decoder pair for one type.

    Encoders and decoders are built once (msgspec caches the type's plan in them) and reused for every call.
    JSON output has sorted keys so that the same message always encodes to the same bytes.
    """

    def __init__(self, type_: Any) -> None:
        self.type = type_
        self._json_decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type_)
        self._msgpack_decoder: msgspec.msgpack.Decoder[T] = msgspec.msgpack.Decoder(type_)
        self._json_encoder = msgspec.json.Encoder(order="deterministic")
        self._msgpack_encoder = msgspec.msgpack.Encoder(order="deterministic")

    def encode_json(self, value: T) -> bytes:
        return self._json_encoder.encode(value)

    def encode_msgpack(self, value: T) -> bytes:
        return self._msgpack_encoder.encode(value)

    def decode_json(self, data: bytes | str, *, line: int | None = None, source: str | None = None) -> T:
        try:
            return self._json_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise decode_error(exc, line=line, source=source) from None
        except RecursionError:  # msgspec's answer to nesting deeper than the interpreter's recursion limit
            raise DecodeError(TOO_DEEP, line=line, source=source) from None

    def decode_msgpack(self, data: bytes, *, source: str | None = None) -> T:
        try:
            return self._msgpack_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise decode_error(exc, source=source) from None
        except RecursionError:
            raise DecodeError(TOO_DEEP, source=source) from None

    def convert(self, obj: object, *, line: int | None = None, source: str | None = None) -> T:
        """Validate an already-parsed object (a dict from TOML, say) into the type."""
        try:
            result: T = msgspec.convert(obj, self.type, strict=False)
        except msgspec.ValidationError as exc:
            raise decode_error(exc, line=line, source=source) from None
        except RecursionError:
            raise DecodeError(TOO_DEEP, line=line, source=source) from None
        return result

    def iter_json_lines(self, data: bytes, *, source: str | None = None) -> Iterator[tuple[int, T]]:
        """Decode JSON Lines: yields ``(line_number, value)``; blank lines are skipped."""
        for number, raw in enumerate(data.splitlines(), start=1):
            if raw.strip():
                yield number, self.decode_json(raw, line=number, source=source)


@functools.cache
def any_message_type() -> Any:
    """The tagged union of every registered message type (decodes any message by its ``type``)."""
    types = tuple(t for t in message_types() if t is not LogRecord)
    return Union[types]


@functools.cache
def message_codec() -> Codec[Message]:
    """Codec for any single message."""
    return Codec(any_message_type())


@functools.cache
def log_record_codec() -> Codec[LogRecord[Message]]:
    """Codec for one log record whose ``message`` is any registered message."""
    return Codec(LogRecord[any_message_type()])  # type: ignore[misc]


@functools.cache
def log_line_codec() -> Codec[LogHeader | LogRecord[Message]]:
    """Codec for one line of a message log: the header or a record."""
    return Codec(Union[LogHeader, LogRecord[any_message_type()]])  # type: ignore[misc]


_CODECS: dict[Any, Codec[Any]] = {}


def codec_for(type_: type[T]) -> Codec[T]:
    """A cached codec for ``type_``."""
    codec = _CODECS.get(type_)
    if codec is None:
        codec = _CODECS[type_] = Codec(type_)
    return codec


def decode_json(data: bytes | str, type_: type[T], *, line: int | None = None, source: str | None = None) -> T:
    """Decode JSON into ``type_``, raising :class:`DecodeError` with the field path on bad input."""
    result: T = codec_for(type_).decode_json(data, line=line, source=source)
    return result


def encode_json(value: Any) -> bytes:
    """Encode a message (or any msgspec-encodable value) to deterministic JSON."""
    return _JSON.encode(value)


_JSON = msgspec.json.Encoder(order="deterministic")
