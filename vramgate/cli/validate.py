"""``vramgate validate FILE --kind KIND``: decode a JSON or JSON Lines file and report every error.

Kinds live in a small registry, :data:`KINDS`: a name maps to a :class:`Kind` whose ``decode`` is either a
type (each item is decoded into it) or a function from one item's bytes to a value, raising
:class:`~vramgate.errors.DecodeError`. A kind with ``whole_file=True`` decodes the whole file in one call
(TOML configs, say). Add one with :func:`register_kind`.

A file is one JSON value (an object, or an array of items) or JSON Lines (one item a line, blank lines
skipped). Without ``--kind`` the kind is recognised from the content (:func:`detect_kind`). Every error is printed
as ``FILE:LINE: PATH: REASON`` (an error repeated on many items is printed a few times, then counted); the exit
status is 1 if there was any, 2 when the file cannot be read as JSON at all (nested too deeply, say).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import msgspec

from vramgate.cli._errors import bad_input
from vramgate.errors import DecodeError, InvalidParameter, UnknownModel
from vramgate.messages import GenerationRequest, LogHeader, log_line_codec
from vramgate.messages.codec import TOO_DEEP, codec_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: How many times one identical error (same path and reason) is printed before the rest are only counted.
REPEATS_SHOWN = 3

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
    """Decodes a log's lines in order: the first must be a LogHeader, the rest LogRecords, or the LogHeader of a
    run appended by a restarted process (``segment`` 0; a rotated segment's header is only ever a file's first)."""

    def __init__(self) -> None:
        self.first = True

    def __call__(self, data: bytes) -> object:
        first, self.first = self.first, False
        value = log_line_codec().decode_json(data)
        if first and not isinstance(value, LogHeader):
            raise DecodeError("the first line of a log must be a LogHeader")
        if not first and isinstance(value, LogHeader) and value.segment != 0:
            raise DecodeError(
                f"a LogHeader after the first line starts a new run: its segment must be 0, not {value.segment}",
                path="$.segment",
            )
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


class _Requests:
    """Decodes request bodies and checks them against the model catalog (model, size, frames, task, options)."""

    #: fields of an InvalidParameter that live under ``$.options``
    _OPTIONS = frozenset({"gpus", "ulysses", "t5_cpu", "t5_fsdp", "dit_fsdp", "resident_blocks", "vae_tiling"})

    def __init__(self) -> None:
        from vramgate.policy.estimate import Estimator

        self.estimator = Estimator()

    def __call__(self, data: bytes) -> object:
        request = codec_for(GenerationRequest).decode_json(data)
        try:
            self.estimator.resolve(request)
        except UnknownModel as exc:
            known = ", ".join(sorted(exc.known))
            raise DecodeError(f"unknown model {request.model!r} (known: {known})", path="$.model") from None
        except InvalidParameter as exc:
            field = exc.field if exc.field.isidentifier() else ""
            path = f"$.options.{field}" if field in self._OPTIONS else (f"$.{field}" if field else "$.options")
            reason = f"{exc.value!r}: {exc.reason}" + (f" ({exc.valid})" if exc.valid else "")
            raise DecodeError(reason, path=path) from None
        return request


#: name -> kind. Other modules add theirs with :func:`register_kind`.
KINDS: dict[str, Kind] = {
    "request": Kind(
        _Requests, "generation request bodies (GenerationRequest), checked against the model catalog", stateful=True
    ),
    "log": Kind(
        _LogLines,
        "a message log: a LogHeader line, then LogRecord lines (each appended run with its header)",
        stateful=True,
    ),
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
    except RecursionError:
        raise DecodeError(TOO_DEEP) from None
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


def detect_kind(data: bytes) -> str:
    """The kind a file's content looks like: a log (its header line), a trace, a profile, a config, or requests."""
    text = data.lstrip()
    if text.startswith((b"{", b"[")):
        first_line = text.split(b"\n", 1)[0]
        for candidate in (first_line, text):
            try:
                value = msgspec.json.decode(candidate)
            except (msgspec.DecodeError, RecursionError):
                continue
            item = value[0] if isinstance(value, list) and value else value
            return _kind_of(item) if isinstance(item, dict) else "request"
    try:
        table = tomllib.loads(data.decode("utf-8", errors="replace"))
    except tomllib.TOMLDecodeError:
        return "request"
    except RecursionError:
        raise DecodeError(TOO_DEEP) from None
    return "profile" if "dit" in table else "config"


def _kind_of(item: dict[str, Any]) -> str:
    tag = item.get("type")
    if tag in ("LogHeader", "LogRecord"):
        return "log"
    if tag in ("arrival", "outside"):
        return "trace"
    if "dit" in item and "name" in item:
        return "profile"
    return "request"


def _report(file: Path, problems: list[Problem]) -> None:
    """Print each problem, an identical one (same path and reason) at most :data:`REPEATS_SHOWN` times."""
    seen: Counter[tuple[str, str]] = Counter()
    for problem in problems:
        key = (problem.path, problem.reason)
        seen[key] += 1
        if seen[key] <= REPEATS_SHOWN:
            where = f"{file}:{problem.line}" if problem.line is not None else str(file)
            click.echo(f"{where}: {problem.path}: {problem.reason}")
    for (path, reason), n in seen.items():
        if n > REPEATS_SHOWN:
            click.echo(f"{file}: {path}: {reason} ({n - REPEATS_SHOWN} more times)")


@click.command(name="validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--kind",
    default=None,
    metavar="KIND",
    help="What the file holds: request, log, trace, config, profile, or a registered kind "
    "(default: recognised from the content).",
)
def command(file: Path, kind: str | None) -> None:
    """Decode FILE (JSON or JSON Lines) and print every error with its line and field path.

    Exits 0 when every item is valid, 1 when any is not, 2 when the file cannot be read at all.
    """
    if kind is not None and kind not in KINDS:
        raise click.BadParameter(f"unknown kind {kind!r}; known: {', '.join(sorted(KINDS))}", param_hint="--kind")
    try:
        data = file.read_bytes()
        kind = kind if kind is not None else detect_kind(data)
        count, problems = check(data, KINDS[kind])
    except (DecodeError, OSError) as exc:
        source = exc if isinstance(exc, OSError) else DecodeError(exc.reason, path=exc.path, source=str(file))
        raise bad_input(source) from None
    _report(file, problems)
    if problems:
        click.echo(f"{len(problems)} error(s) in {count} {kind} item(s)", err=True)
        raise SystemExit(1)
    click.echo(f"ok: {count} {kind} item(s)")
