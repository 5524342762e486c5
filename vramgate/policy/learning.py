"""Learning from runs: a per-profile, per-GPU correction of the VRAM estimate from observed peaks, and the per-GPU
time corrections of :mod:`vramgate.policy.timing` (``times``), persisted together.

Each finished run gives the ratio of its observed peak to the model's raw (uncorrected) prediction. The
correction is a high quantile of the recent ratios (robust to a lucky run, unlike a mean), and an OOM at a
predicted fit raises it at once. The state is a msgspec struct, so it persists and reloads as a file.

Sans-io: :class:`LearnedCorrections` does no I/O; :func:`save_corrections` / :func:`load_corrections` are the
edges that write and read a file.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import msgspec

from vramgate.errors import ConfigError
from vramgate.messages.codec import Codec
from vramgate.messages.estimation import CorrectionLearned, ProfileGpuHistory, TimeFactor
from vramgate.messages.lifecycle import Outcome
from vramgate.policy.timing import TimeCorrections

#: Version of the persisted state; bump it when an old file could no longer be read as before.
LEARNED_SCHEMA_VERSION = 1


class LearnedState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The persisted form: history by ``"model@gpu"``, and what was learned of each GPU's times by GPU name (absent
    in files written before times were learned: nothing learned)."""

    schema_version: int = LEARNED_SCHEMA_VERSION
    entries: dict[str, ProfileGpuHistory] = {}
    times: dict[str, TimeFactor] = {}


_STATE_CODEC: Codec[LearnedState] = Codec(LearnedState)


def _key(model: str, gpu: str) -> str:
    return f"{model}@{gpu}"


def quantile(values: tuple[float, ...] | list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` by linear interpolation (``values`` not empty)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class LearnedCorrections:
    """Observed/predicted corrections per (model, GPU).

    * ``quantile`` - the ratio quantile used as the correction (0.9: nine runs in ten stay under the estimate).
    * ``window`` - how many recent ratios are kept per pair.
    * ``min_runs_to_lower`` - below this many observations the correction may only raise estimates.
    * ``oom_step`` - an OOM raises the correction to at least this factor times the ratio it implies.
    * ``bounds`` - the correction stays within these factors.

    ``times`` holds the per-GPU time corrections, learned and persisted alongside.
    """

    def __init__(
        self,
        *,
        quantile: float = 0.9,
        window: int = 64,
        min_runs_to_lower: int = 5,
        oom_step: float = 1.10,
        bounds: tuple[float, float] = (0.6, 4.0),
        state: LearnedState | None = None,
    ) -> None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError("quantile must be in (0, 1]")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.quantile = quantile
        self.window = window
        self.min_runs_to_lower = min_runs_to_lower
        self.oom_step = oom_step
        self.bounds = bounds
        self._entries: dict[str, ProfileGpuHistory] = dict(state.entries) if state is not None else {}
        self._factors: dict[str, float] = {key: self._factor(h) for key, h in self._entries.items()}
        self.times = TimeCorrections(state=state.times if state is not None else None)

    # ---------------------------------------------------------------- queries

    def factor(self, model: str, gpu: str) -> float:
        """The correction to multiply the raw VRAM estimate by (1.0 when nothing was learned)."""
        return self._factors.get(_key(model, gpu), 1.0)

    def history(self, model: str, gpu: str) -> ProfileGpuHistory:
        return self._entries.get(_key(model, gpu), ProfileGpuHistory())

    def learned(self, model: str, gpu: str) -> ProfileGpuHistory | None:
        """What was learned for (``model``, ``gpu``), ``None`` when nothing was."""
        return self._entries.get(_key(model, gpu))

    def runs(self, model: str, gpu: str) -> int:
        entry = self._entries.get(_key(model, gpu))
        return entry.runs if entry is not None else 0

    def confidence(self, model: str, gpu: str, base: float) -> float:
        """``base`` raised towards 1 as runs are observed, lowered while observed ratios scatter widely."""
        entry = self._entries.get(_key(model, gpu))
        if entry is None or not entry.ratios:
            return base
        n = len(entry.ratios)
        learned = n / (n + 4.0)
        spread = quantile(entry.ratios, 0.9) - quantile(entry.ratios, 0.1) if n > 1 else 0.0
        scatter = min(1.0, spread / 0.5)
        value = base + (1.0 - base) * learned * (1.0 - scatter)
        if entry.ooms:
            value *= 0.9
        return max(0.05, min(0.99, value))

    # ---------------------------------------------------------------- updates

    def observe(
        self,
        model: str,
        gpu: str,
        *,
        predicted_mb: float,
        observed_mb: float | None,
        outcome: Outcome,
        budget_mb: float | None = None,
    ) -> float:
        """Learn from one run; returns the new correction.

        ``predicted_mb`` is the raw estimate (before any correction). On ``oom`` the true peak was above
        what the run had (``budget_mb``, else the observed peak, else the prediction), so the correction is
        raised at once past that ratio. A run that ended in ``error`` or ``cancelled`` without an observed
        peak teaches nothing.
        """
        if predicted_mb <= 0:
            raise ValueError("predicted_mb must be positive")
        key = _key(model, gpu)
        entry = self._entries.get(key, ProfileGpuHistory())
        ratios = entry.ratios
        floor = entry.floor
        ooms = entry.ooms
        if outcome == "oom":
            ooms += 1
            known = max(v for v in (budget_mb, observed_mb, predicted_mb) if v is not None)
            implied = known / predicted_mb
            floor = max(floor, implied * self.oom_step, self._factors.get(key, 1.0) * self.oom_step)
            ratios = (*ratios, implied)
        elif observed_mb is not None and observed_mb > 0:
            ratios = (*ratios, observed_mb / predicted_mb)
        else:
            return self._factors.get(key, 1.0)
        ratios = ratios[-self.window :]
        entry = ProfileGpuHistory(ratios=ratios, floor=floor, runs=entry.runs + 1, ooms=ooms)
        self._entries[key] = entry
        factor = self._factors[key] = self._factor(entry)
        return factor

    def install(self, learned: CorrectionLearned) -> None:
        """Hold the corrections an estimator published after a lesson (its ``history`` and ``factor`` for the
        model and GPU, its ``times`` for the GPU), so that estimates made here are the estimator's; nothing is
        learned here. Installing the same message again changes nothing."""
        if learned.history is not None:
            key = _key(learned.model, learned.gpu)
            self._entries[key] = learned.history
            self._factors[key] = learned.factor
        if learned.times is not None:
            self.times.install(learned.gpu, learned.times)

    def _factor(self, entry: ProfileGpuHistory) -> float:
        low, high = self.bounds
        if not entry.ratios:
            return max(low, min(high, entry.floor))
        value = quantile(entry.ratios, self.quantile)
        if len(entry.ratios) < self.min_runs_to_lower:
            value = max(value, 1.0)
        if entry.ooms:
            value = max(value, entry.floor)
        return max(low, min(high, value))

    # ---------------------------------------------------------------- persistence

    def state(self) -> LearnedState:
        return LearnedState(entries=dict(sorted(self._entries.items())), times=self.times.state())

    def dumps(self) -> bytes:
        """The learned state as deterministic JSON."""
        return _STATE_CODEC.encode_json(self.state())

    @classmethod
    def loads(cls, data: bytes | str, *, source: str | None = None, **options: object) -> LearnedCorrections:
        """Rebuild from :meth:`dumps` output; bad content raises :class:`~vramgate.errors.DecodeError`."""
        state = _STATE_CODEC.decode_json(data, source=source)
        if state.schema_version != LEARNED_SCHEMA_VERSION:
            raise ConfigError(
                f"{source or 'learned corrections'}: schema_version {state.schema_version} is not "
                f"{LEARNED_SCHEMA_VERSION}"
            )
        return cls(state=state, **options)  # type: ignore[arg-type]


def save_corrections(corrections: LearnedCorrections, path: str | Path) -> None:
    """Write the learned state to ``path`` atomically: a temporary file, flushed to disk, then a rename."""
    write_atomic(path, corrections.dumps())


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one, never a torn one."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def load_corrections(path: str | Path) -> LearnedCorrections:
    """Read what :func:`save_corrections` wrote. A missing or unreadable file raises :class:`ConfigError`; a
    corrupt one :class:`~vramgate.errors.DecodeError` naming the file and the field."""
    target = Path(path)
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{target}: cannot read learned corrections: {exc.strerror or exc}") from None
    return LearnedCorrections.loads(data, source=str(target))


def open_corrections(path: str | Path) -> LearnedCorrections | None:
    """The corrections at ``path``, ``None`` when there is no file yet; a directory that does not exist (where the
    file could never be saved) is a :class:`ConfigError`."""
    target = Path(path)
    if not target.parent.is_dir():
        raise ConfigError(f"{target}: the directory for learned corrections does not exist")
    if not target.exists():
        return None
    return load_corrections(target)
