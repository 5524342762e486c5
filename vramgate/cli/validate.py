"""``vramgate validate FILE --kind KIND``: decode a JSON or JSON Lines file and report every error.

Kinds live in a small registry, :data:`KINDS`: a name maps to a :class:`Kind` whose ``decode`` is either a
type (each item is decoded into it) or a function from one item's bytes to a value, raising
:class:`~vramgate.errors.DecodeError`. A kind with ``whole_file=True`` decodes the whole file in one call
(TOML configs, say). Add one with :func:`register_kind`.

A file is one JSON value (an object, or an array of items) or JSON Lines (one item a line, blank lines
skipped). Every error is printed as ``FILE:LINE: PATH: REASON``; the exit status is 1 if there was any.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import msgspec

from vramgate.errors import DecodeError
from vramgate.messages import GenerationRequest, LogHeader, LogRecord, log_line_codec
from vramgate.messages.codec import codec_for

Decoder = Callable[[bytes], object]


@dataclass(frozen=True)
class Kind:
    """What ``validate --kind NAME`` checks. ``decode`` is a type or a decoder of one item's bytes."""

    decode: type[Any] | Decoder
    help: str
    whole_file: bool = False
    #: ``decode`` is a class whose instances decode one file's items in order (a fresh one per file).
    stateful: bool = False

    def decoder(self) -> Decoder:
        if self.stateful:
            assert isinstance(self.decode, type)
            decoder: Decoder = self.decode()
            return decoder
        if isinstance(self.decode, type):
            return codec_for(self.decode).decode_json
        return self.decode


class _LogLines:
    """Decodes a log's lines in order: the first must be a LogHeader, the rest LogRecords."""

    def __init__(self) -> None:
        self.first = True

    def __call__(self, data: bytes) -> object:
        first, self.first = self.first, False
        value = log_line_codec().decode_json(data)
        if first and not isinstance(value, LogHeader):
            raise DecodeError("the first line of a log must be a LogHeader")
        if not first and not isinstance(value, LogRecord):
            raise DecodeError("a LogHeader may only be the first line")
        return value


def _config(data: bytes) -> object:
    """A gate configuration file (TOML), as :func:`vramgate.config.load_config` reads it, without the environment."""
    import tempfile

    from vramgate.config import load_config

    with tempfile.NamedTemporaryFile(suffix=".toml") as handle:
        handle.write(data)
        handle.flush()
        return load_config(handle.name, environ={})


def _trace_line(data: bytes) -> object:
    from vramgate.messages.trace import TraceLine

    return codec_for(TraceLine).decode_json(data)  # type: ignore[arg-type]


def _profile(data: bytes) -> object:
    from vramgate.policy.models import decode_profile

    text = data.lstrip()
    return decode_profile(data, toml=not text.startswith(b"{"))


#: name -> kind. Other modules add theirs with :func:`register_kind`.
KINDS: dict[str, Kind] = {
    "request": Kind(GenerationRequest, "generation request bodies (GenerationRequest)"),
    "log": Kind(_LogLines, "a message log: a LogHeader line, then LogRecord lines", stateful=True),
    "config": Kind(_config, "a gate configuration file (TOML)", whole_file=True),
    "trace": Kind(_trace_line, "a simulator trace: arrival and outside records, one a line"),
    "profile": Kind(_profile, "a model profile (JSON or TOML)", whole_file=True),
}


def register_kind(
    name: str, decode: type[Any] | Decoder, help: str, *, whole_file: bool = False, stateful: bool = False
) -> None:
    """Make ``vramgate validate --kind NAME`` available (see :class:`Kind`)."""
    KINDS[name] = Kind(decode, help, whole_file, stateful)


@dataclass(frozen=True)
class Problem:
    line: int | None
    path: str
    reason: str


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _items(data: bytes) -> Iterator[tuple[int, str, bytes]]:
    """Split a file into ``(line, path prefix, item bytes)``: a JSON value, a JSON array, or JSON Lines."""
    stripped = data.lstrip()
    try:
        whole = msgspec.json.decode(data, type=msgspec.Raw)
    except msgspec.DecodeError:
        whole = None
    if whole is not None:
        if stripped.startswith(b"["):
            items = msgspec.json.decode(data, type=list[msgspec.Raw])
            position = 0
            for index, raw in enumerate(items):
                item = bytes(raw)
                offset = data.find(item, position)
                position = offset + len(item)
                yield _line_of(data, offset), f"$[{index}]", item
        else:
            yield _line_of(data, len(data) - len(stripped)), "", data
        return
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield number, "", line


def check(data: bytes, kind: Kind) -> tuple[int, list[Problem]]:
    """Decode ``data`` as items of ``kind``: ``(items seen, problems)``."""
    decode = kind.decoder()
    if kind.whole_file:
        try:
            decode(data)
        except DecodeError as exc:
            return 1, [Problem(exc.line, exc.path, exc.reason)]
        return 1, []
    problems: list[Problem] = []
    count = 0
    for line, prefix, item in _items(data):
        count += 1
        try:
            decode(item)
        except DecodeError as exc:
            path = prefix + exc.path[1:] if prefix else exc.path
            problems.append(Problem(line, path, exc.reason))
        except (ValueError, TypeError) as exc:  # a __post_init__ check that msgspec did not wrap
            problems.append(Problem(line, prefix or "$", str(exc)))
    return count, problems


@click.command(name="validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--kind",
    default="request",
    show_default=True,
    metavar="KIND",
    help="What the file holds: request (GenerationRequest bodies), log (a message log), or a registered kind.",
)
def command(file: Path, kind: str) -> None:
    """Decode FILE (JSON or JSON Lines) and print every error with its line and field path."""
    entry = KINDS.get(kind)
    if entry is None:
        raise click.BadParameter(f"unknown kind {kind!r}; known: {', '.join(sorted(KINDS))}", param_hint="--kind")
    count, problems = check(file.read_bytes(), entry)
    for problem in problems:
        where = f"{file}:{problem.line}" if problem.line is not None else str(file)
        click.echo(f"{where}: {problem.path}: {problem.reason}")
    if problems:
        click.echo(f"{len(problems)} error(s) in {count} {kind} item(s)", err=True)
        raise SystemExit(1)
    click.echo(f"ok: {count} {kind} item(s)")
