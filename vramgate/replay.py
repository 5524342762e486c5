"""Read recorded message logs and replay them through the sans-io cores that made the decisions.

A log (see :class:`~vramgate.actors.Recorder`) is a :class:`LogHeader` line, then one :class:`LogRecord` per
message, in sequence order; a file may hold several runs, each with its header (see :mod:`vramgate._logfile`).
For each run, :func:`replay` rebuilds every core named in the header, feeds each one, in order,
the records addressed to its actor (``now`` is the record's time), and checks that what the core returns is what
its actor was recorded sending: same recipient, message and correlation id, in the same order.

Cores are rebuilt by kind: a module that defines a core calls :func:`register_core_kind` with a factory that
takes the header and the core's :class:`CoreSpec` (its recorded config). A header only names kinds: the built-in
ones are found in this package's own table, others must be registered (``vramgate replay --import MODULE``); a
module a header names is never imported.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import msgspec

from vramgate._logfile import iter_log, log_files
from vramgate._replayer import Divergence, RunReplay
from vramgate.actors.core import Core
from vramgate.errors import ReplayError
from vramgate.messages import LogClosed, LogHeader, LogRecord, Message
from vramgate.messages.log import CoreSpec

#: Builds a core for one actor from the log header.
CoreFactory = Callable[[LogHeader], Core]
#: Builds a core of a registered kind from the header and the core's recorded spec.
KindFactory = Callable[[LogHeader, CoreSpec], Core]

_KINDS: dict[str, KindFactory] = {}
#: The modules that register the built-in core kinds (imported on demand, from this table only).
_BUILT_IN: dict[str, str] = {
    "admission": "vramgate.actors.admission",
    "estimator": "vramgate.actors.estimator",
    "optimizer": "vramgate.actors.optimizer",
    "request": "vramgate.actors.requests",
}


def register_core_kind(kind: str, factory: KindFactory) -> None:
    """Register how to rebuild cores of ``kind`` (the ``kind`` a :class:`~vramgate.actors.CoreActor` records)."""
    if not kind:
        raise ValueError("core kind must not be empty")
    _KINDS[kind] = factory


def core_kinds() -> tuple[str, ...]:
    """The registered core kinds, the built-in ones included."""
    return tuple(sorted({*_KINDS, *_BUILT_IN}))


class ReplayResult(msgspec.Struct, frozen=True):
    """The outcome of :func:`replay`: ``records`` read, ``inputs`` fed to cores, ``outputs`` compared.

    ``runs`` is how many runs the log held (a restarted process appends one); ``truncated`` where a run's last
    line was torn (everything before it was checked); ``unclosed`` how many runs ended without closing their
    log (cut short: what their cores would still have sent, ``owed``, is not a divergence); ``skipped`` the
    records of runs whose first segment was rotated away (they cannot be replayed from their start).
    """

    identical: bool
    records: int
    inputs: int
    outputs: int
    cores: tuple[str, ...]
    divergence: Divergence | None = None
    runs: int = 1
    truncated: tuple[str, ...] = ()
    unclosed: int = 0
    owed: int = 0
    skipped: int = 0

    def summary(self) -> str:
        """One line: identical, or where it diverged; then what could not be checked."""
        if self.divergence is not None:
            text = self.divergence.describe()
        else:
            runs = f" in {self.runs} runs" if self.runs != 1 else ""
            text = (
                f"identical: {self.records} records{runs}, {self.inputs} inputs to {len(self.cores)} cores "
                f"({', '.join(self.cores) or 'none'}), {self.outputs} outputs reproduced"
            )
        notes = [f"truncated tail at {where}" for where in self.truncated]
        if self.unclosed:
            notes.append(f"{self.unclosed} run(s) ended without closing the log ({self.owed} outputs not recorded)")
        if self.skipped:
            notes.append(f"{self.skipped} records skipped (their run's first segment was rotated away)")
        return "; ".join([text, *notes])


def read_log(path: str | os.PathLike[str]) -> tuple[LogHeader, Iterator[LogRecord[Message]]]:
    """Read one message log file: the header of its first run, and an iterator over the records of every run it
    holds, in order (a run appended by a restarted process numbers its records from 1 again:
    :func:`read_runs` tells the runs apart).

    Records come back as they were delivered (compact samples and prompt references expanded). A torn last
    line ends the records quietly (:func:`replay` reports it). Raises :class:`~vramgate.errors.DecodeError` with
    the line number on a corrupt or out-of-order line, or a gap in the sequence numbers (the header at once,
    records as the iterator reaches them).
    """
    lines = iter_log(path, [])
    first = next(lines)
    assert isinstance(first, LogHeader)
    return first, (line for line in lines if isinstance(line, LogRecord) and type(line.message) is not LogClosed)


def read_runs(path: str | os.PathLike[str]) -> Iterator[tuple[LogHeader, list[LogRecord[Message]]]]:
    """The runs of one message log file, in order: each run's header and its records (as :func:`read_log` gives
    them). A file holds one run, plus one for each restart that appended to it. Raises as :func:`read_log`."""
    header: LogHeader | None = None
    records: list[LogRecord[Message]] = []
    for line in iter_log(path, []):
        if isinstance(line, LogHeader):
            if header is not None and line.segment == 0:
                yield header, records
                header, records = None, []
            if header is None:
                header = line
        elif type(line.message) is not LogClosed:
            records.append(line)
    if header is not None:
        yield header, records


def _factories(header: LogHeader) -> dict[str, CoreFactory]:
    factories: dict[str, CoreFactory] = {}
    for spec in header.cores:
        kind_factory = _KINDS.get(spec.kind)
        if kind_factory is None and spec.kind in _BUILT_IN:
            importlib.import_module(_BUILT_IN[spec.kind])  # registers its kinds
            kind_factory = _KINDS.get(spec.kind)
        if kind_factory is None:
            raise ReplayError(
                f"no core factory registered for kind {spec.kind!r} (actor {spec.name!r}); "
                f"known kinds: {', '.join(core_kinds()) or 'none'}"
            )
        factories[spec.name] = _bind(kind_factory, spec)
    return factories


def _build(factories: Mapping[str, CoreFactory], header: LogHeader) -> dict[str, Core]:
    """Build every core; a factory that fails on the recorded config is a :class:`ReplayError` naming the core."""
    built: dict[str, Core] = {}
    for name, factory in factories.items():
        try:
            built[name] = factory(header)
        except (ValueError, TypeError, KeyError, LookupError, AttributeError, msgspec.ValidationError) as exc:
            spec = header.core(name)
            kind = f" (kind {spec.kind!r})" if spec is not None else ""
            raise ReplayError(f"cannot rebuild core {name!r}{kind} from the log header: {exc!r}") from None
    return built


def _bind(factory: KindFactory, spec: CoreSpec) -> CoreFactory:
    return lambda header: factory(header, spec)


def replay(path: str | os.PathLike[str], cores: Mapping[str, CoreFactory] | None = None) -> ReplayResult:
    """Replay the log at ``path`` (its rotated segments ``PATH.N`` ... ``PATH.1`` first) through fresh cores, run
    by run, and compare their outputs with the recorded ones.

    ``cores`` maps actor names to factories; by default every core listed in a run's header is rebuilt from
    the registered kinds. Raises :class:`~vramgate.errors.DecodeError` on a corrupt log and
    :class:`~vramgate.errors.ReplayError` when a core cannot be rebuilt.
    """
    main = Path(path)
    truncated: list[str] = []
    names: tuple[str, ...] = ()
    run: RunReplay | None = None
    runs = unclosed = owed = skipped = 0
    done = [0, 0, 0]

    def end(current: RunReplay | None) -> Divergence | None:
        nonlocal unclosed, owed
        if current is None:
            return None
        done[0] += current.records
        done[1] += current.inputs
        done[2] += current.outputs
        if not current.closed:
            unclosed += 1
            owed += current.owed()
        return current.finish()

    def result(divergence: Divergence | None) -> ReplayResult:
        return ReplayResult(
            identical=divergence is None,
            records=done[0],
            inputs=done[1],
            outputs=done[2],
            cores=names,
            divergence=divergence,
            runs=runs,
            truncated=tuple(truncated),
            unclosed=unclosed,
            owed=owed,
            skipped=skipped,
        )

    for file in log_files(main):
        torn: list[int] = []
        for line in iter_log(file, torn):
            if isinstance(line, LogHeader):
                if line.segment > 0 and run is not None and run.last_seq + 1 == line.first_seq:
                    continue  # the run goes on in the next segment
                divergence = end(run)
                if divergence is not None:
                    return result(divergence)
                run = None
                if line.segment == 0:
                    factories = dict(cores) if cores is not None else _factories(line)
                    built = _build(factories, line)
                    names = names or tuple(built)
                    run = RunReplay(line, built)
                    runs += 1
                continue
            if run is None:
                skipped += 1
                continue
            divergence = run.feed(line)
            if divergence is not None:
                done[0] += run.records
                done[1] += run.inputs
                done[2] += run.outputs
                return result(divergence)
        where = "" if file == main else f" of {file.name}"
        truncated.extend(f"line {number}{where}" for number in torn)
        if torn and run is not None and not run.closed:
            divergence = end(run)  # a torn line ends its run
            run = None
            if divergence is not None:
                return result(divergence)
    return result(end(run))
