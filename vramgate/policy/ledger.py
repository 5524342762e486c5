"""The VRAM ledger of one device: capacity, safety margin, others' use and the reservations granted on it.

``free = capacity - margin - others - reserved``, never negative, and :meth:`DeviceLedger.reserve` refuses
anything larger: the ledger cannot over-commit, whatever the caller does.

**Others' use** is what the device's memory holds that this system's leases do not account for. A sample
measures ``used`` (everything on the device) and, when vramgate runs in the process that runs the leases,
``torch.reserved`` (this process's allocations). Others are then ``used - min(torch.reserved, R)``, where ``R``
is the sum of the reservations that were held when the sample was taken:

* a lease admitted after the sample is in neither figure, so it is not subtracted (no under-count);
* a lease admitted but not yet allocated adds nothing to ``torch.reserved``, so subtracting ``min(...)`` takes
  away only what is really allocated (no double count, no under-count);
* memory this process holds beyond what its leases reserved (a cache not yet emptied) counts as others.

Since ``min(torch.reserved, R) <= torch.reserved``, others are never below what everything but this process
uses: the estimate errs only on the safe side. Without ``torch`` figures the ledger cannot tell its own runs'
memory from others', and counts all measured use as others (safe, but it double counts running leases).

Others' use is smoothed: it rises at once and decays towards a lower reading with a half-life, so that a
spike is not forgotten at the next quiet sample. A device whose latest sample is older than ``stale_after_s``
admits nothing until a fresh one arrives; nor does a lost device.

**Memory that never leaves.** Part of others' use does not come free in a bounded way: a CUDA context (the
gate's own, a simulated device's), a neighbour process that stays. The ledger counts as *permanent* the least
others' use any sample showed within the last ``permanent_after_s`` seconds (or since its first sample, when
that is more recent): memory that has not come free once in that time. This process's own memory (torch's) is
not counted there, even above its reservations: it leaves with the run. ``attainable_mb = capacity - margin -
permanent`` is the most reservations can ever have on the device, so a plan above it is never queued here.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Annotated

import msgspec

from vramgate.errors import ConfigError, DoesNotFit
from vramgate.messages.resources import DeviceSample

_MIN_MARGIN_MB = 1024
_MARGIN_FRACTION = 0.05


def default_margin_mb(capacity_mb: int) -> int:
    """The default safety margin: the larger of 1 GiB and 5 % of the capacity."""
    return max(_MIN_MARGIN_MB, math.ceil(capacity_mb * _MARGIN_FRACTION))


class DeviceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One device admission may place work on. ``margin_mb`` defaults to :func:`default_margin_mb`."""

    index: Annotated[int, msgspec.Meta(ge=0)]
    gpu: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    capacity_mb: Annotated[int, msgspec.Meta(gt=0)]
    margin_mb: Annotated[int, msgspec.Meta(ge=0)] | None = None

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ConfigError(f"device index {self.index}: must be >= 0")
        if self.capacity_mb <= 0:
            raise ConfigError(f"device {self.index}: capacity_mb={self.capacity_mb} must be > 0")
        if self.margin_mb is not None and self.margin_mb < 0:
            raise ConfigError(f"device {self.index}: margin_mb={self.margin_mb} must be >= 0")
        if self.effective_margin_mb >= self.capacity_mb:
            raise ConfigError(
                f"device {self.index}: margin {self.effective_margin_mb} MiB leaves nothing of "
                f"capacity_mb={self.capacity_mb}"
            )

    @property
    def effective_margin_mb(self) -> int:
        """The margin in use: ``margin_mb``, or the default for this capacity."""
        return self.margin_mb if self.margin_mb is not None else default_margin_mb(self.capacity_mb)


class _Held:
    """A reservation on this device: ``mb`` held from ``since`` until ``until`` (``inf`` while held)."""

    __slots__ = ("mb", "since", "until")

    def __init__(self, mb: int, since: float) -> None:
        self.mb = mb
        self.since = since
        self.until = math.inf


class Ledger:
    """What a device's and the host's ledgers share: reservations, resident models and others' use.

    ``free = capacity - margin - others - reserved - resident - unloading``. Resident models' memory is held
    under a key from when they are declared loaded; once unloaded it is *unloading* until a sample taken after
    the unload shows it gone (or at once, when no sample ever came). A sample's others' use leaves out what the
    leases and resident models this ledger accounts for held when it was taken.
    """

    def __init__(self, capacity_mb: int, margin_mb: int, *, others_decay_s: float, permanent_after_s: float) -> None:
        self.margin_mb = margin_mb
        self.capacity_mb = capacity_mb
        self.reserved_mb = 0
        self.resident_mb = 0
        self.others_mb = 0
        self.others_raw_mb = 0
        self.sample_at: float | None = None
        self._decay_s = others_decay_s
        self._permanent_after_s = permanent_after_s
        #: Others' readings (time, MiB) within the permanence window, rising: the first is the least.
        self._lows: deque[tuple[float, int]] = deque()
        self._held: dict[str, _Held] = {}
        self._released: list[_Held] = []
        #: No reservation held now began after this time (so at or after it, all of ``reserved_mb`` was held).
        self._newest_since = -math.inf
        self._resident: dict[str, _Held] = {}
        #: Unloaded resident memory that no sample has shown gone yet.
        self._unloaded: list[_Held] = []

    # ------------------------------------------------------------------ figures

    @property
    def budget_mb(self) -> int:
        """What the device can ever give to reservations: capacity less the margin."""
        return max(0, self.capacity_mb - self.margin_mb)

    @property
    def permanent_mb(self) -> int:
        """Others' use that has not come free within the permanence window (0 before the first sample)."""
        return self._lows[0][1] if self._lows else 0

    @property
    def attainable_mb(self) -> int:
        """The most reservations can ever have here: capacity less the margin and the permanent memory."""
        return max(0, self.budget_mb - self.permanent_mb)

    @property
    def leases(self) -> int:
        return len(self._held)

    @property
    def unloading_mb(self) -> int:
        """What unloaded resident models held, until a sample taken after the unload shows it gone."""
        return sum(h.mb for h in self._unloaded)

    def headroom_mb(self) -> int:
        """``capacity - margin - others - reserved - resident``, whether or not it admits now (may be negative)."""
        return (
            self.capacity_mb
            - self.margin_mb
            - self.others_mb
            - self.reserved_mb
            - self.resident_mb
            - (self.unloading_mb if self._unloaded else 0)
        )

    def sample_age_s(self, now: float) -> float | None:
        return None if self.sample_at is None else max(0.0, now - self.sample_at)

    def held_mb(self, lease_id: str) -> int:
        """What ``lease_id`` holds here (0 when nothing)."""
        held = self._held.get(lease_id)
        return 0 if held is None else held.mb

    # ------------------------------------------------------------------ reservations

    def _check_fits(self, lease_id: str, mb: int, now: float) -> None:
        free = self.headroom_mb()
        if mb > max(0, free):
            raise DoesNotFit(f"{mb} MiB does not fit in {max(0, free)} MiB free", needed_mb=mb, available_mb=free)

    def reserve(self, lease_id: str, mb: int, now: float) -> None:
        """Hold ``mb`` for ``lease_id``. Raises :class:`DoesNotFit` when that would over-commit the ledger."""
        if lease_id in self._held:
            raise ValueError(f"lease {lease_id} already holds memory here")
        self._check_fits(lease_id, mb, now)
        self._held[lease_id] = _Held(mb, now)
        self.reserved_mb += mb
        self._newest_since = max(self._newest_since, now)

    def restore(self, lease_id: str, mb: int, since: float) -> None:
        """Take back a reservation granted before a restart, held since ``since``.

        Unlike :meth:`reserve` it does not refuse: the memory is already in use by a running lease. If what is
        restored exceeds what the device can give, nothing more is admitted here until enough is released.
        """
        if lease_id in self._held:
            raise ValueError(f"lease {lease_id} already holds memory here")
        self._held[lease_id] = _Held(mb, since)
        self.reserved_mb += mb
        self._newest_since = max(self._newest_since, since)

    def release(self, lease_id: str, now: float) -> int:
        """Return what ``lease_id`` held (0 when it held nothing here)."""
        held = self._held.pop(lease_id, None)
        if held is None:
            return 0
        self.reserved_mb -= held.mb
        held.until = now
        if self.sample_at is None or self.sample_at < now:
            self._released.append(held)
        return held.mb

    def shrink(self, lease_id: str, mb: int, now: float) -> int:
        """Hold ``mb`` less for ``lease_id`` from ``now`` (its weights became resident); returns what was taken off."""
        held = self._held.get(lease_id)
        if held is None or mb <= 0:
            return 0
        taken = min(mb, held.mb)
        held.mb -= taken
        self.reserved_mb -= taken
        if taken and (self.sample_at is None or self.sample_at < now):
            part = _Held(taken, held.since)
            part.until = now
            self._released.append(part)
        return taken

    def _reserved_at(self, at: float) -> int:
        """The reservations that were held at time ``at``."""
        if at >= self._newest_since and not self._released:
            return self.reserved_mb
        total = sum(h.mb for h in self._held.values() if h.since <= at)
        total += sum(h.mb for h in self._released if h.since <= at < h.until)
        return total

    # ------------------------------------------------------------------ resident models

    def load(self, key: str, mb: int, now: float) -> None:
        """Count ``mb`` as resident under ``key`` from ``now`` (declared again, its figure is updated)."""
        held = self._resident.get(key)
        if held is None:
            self._resident[key] = _Held(mb, now)
        else:
            self.resident_mb -= held.mb
            held.mb = mb
        self.resident_mb += mb

    def unload(self, key: str, now: float) -> int:
        """Stop counting ``key`` as resident; its memory is unloading until a sample taken after ``now`` (at once
        when no sample ever came)."""
        held = self._resident.pop(key, None)
        if held is None:
            return 0
        self.resident_mb -= held.mb
        held.until = now
        if self.sample_at is not None:
            self._unloaded.append(held)
        return held.mb

    def resident_of(self, key: str) -> int:
        """What ``key`` holds resident here (0 when nothing)."""
        held = self._resident.get(key)
        return 0 if held is None else held.mb

    def _resident_at(self, at: float) -> int:
        """The resident memory declared at time ``at`` (unloaded since included)."""
        total = sum(h.mb for h in self._resident.values() if h.since <= at)
        return total + sum(h.mb for h in self._unloaded if h.since <= at < h.until)

    def _drain(self, at: float) -> None:
        if self._released:
            self._released = [h for h in self._released if h.until > at]
        if self._unloaded:
            self._unloaded = [h for h in self._unloaded if h.until > at]

    # ------------------------------------------------------------------ samples

    def _take(self, at: float, previous_at: float | None, used: int, own: int | None) -> None:
        """Take a measurement at ``at``: ``used`` in all, ``own`` of it by this process (``None``: unknown).

        Others' use is ``used`` less the resident models declared then, less the part of this process's own use
        (above its resident models) that its reservations account for. What others hold for good is measured
        without this process's memory (nor resident models'): that leaves with the run, or by an eviction.
        """
        resident = self._resident_at(at) if (self._resident or self._unloaded) else 0
        if own is not None:
            lease_part = min(max(0, own - resident), self._reserved_at(at))
            raw = max(0, used - min(used, resident + lease_part))
            foreign = max(0, used - min(used, max(own, resident)))
        else:
            raw = foreign = max(0, used - resident)
        self.others_raw_mb = raw
        lows = self._lows
        while lows and lows[-1][1] >= foreign:
            lows.pop()
        lows.append((at, foreign))
        horizon = at - self._permanent_after_s
        while lows[0][0] < horizon:
            lows.popleft()
        if previous_at is None or raw >= self.others_mb or self._decay_s <= 0:
            self.others_mb = raw
            return
        excess = (self.others_mb - raw) * 0.5 ** ((at - previous_at) / self._decay_s)
        self.others_mb = raw + (math.ceil(excess) if excess >= 1.0 else 0)


class DeviceLedger(Ledger):
    """The ledger of one device. Plain state: time comes in as arguments, samples as messages."""

    def __init__(
        self,
        config: DeviceConfig,
        *,
        stale_after_s: float | None,
        others_decay_s: float,
        permanent_after_s: float = 600.0,
    ) -> None:
        super().__init__(
            config.capacity_mb,
            config.effective_margin_mb,
            others_decay_s=others_decay_s,
            permanent_after_s=permanent_after_s,
        )
        self.config = config
        self.index = config.index
        self.lost = False
        self.lost_reason = ""
        self._stale_after_s = stale_after_s

    def blocked(self, now: float) -> str:
        """Why nothing can be admitted on this device now, or ``""`` when it admits."""
        if self.lost:
            return f"device {self.index} is lost" + (f" ({self.lost_reason})" if self.lost_reason else "")
        if self._stale_after_s is None:
            return ""
        if self.sample_at is None:
            return f"no memory sample from device {self.index} yet"
        age = now - self.sample_at
        if age > self._stale_after_s:
            return f"memory samples of device {self.index} are stale ({age:.1f} s old, limit {self._stale_after_s:g} s)"
        return ""

    def admits(self, now: float) -> bool:
        """Whether the device admits now (:meth:`blocked` is empty), without building the reason."""
        if self.lost:
            return False
        stale = self._stale_after_s
        return stale is None or (self.sample_at is not None and now - self.sample_at <= stale)

    def free_mb(self, now: float) -> int:
        """What can be reserved now: the headroom, or 0 when the device is blocked."""
        if self.lost:
            return 0
        stale = self._stale_after_s
        if stale is not None and (self.sample_at is None or now - self.sample_at > stale):
            return 0
        headroom = self.capacity_mb - self.margin_mb - self.others_mb - self.reserved_mb - self.resident_mb
        if self._unloaded:
            headroom -= self.unloading_mb
        return headroom if headroom > 0 else 0

    def _check_fits(self, lease_id: str, mb: int, now: float) -> None:
        free = self.free_mb(now)
        if mb > free:
            why = self.blocked(now)
            raise DoesNotFit(
                f"device {self.index}: {mb} MiB does not fit in {free} MiB free" + (f" ({why})" if why else ""),
                needed_mb=mb,
                available_mb=free,
            )

    # ------------------------------------------------------------------ samples

    def mark_lost(self, reason: str) -> None:
        self.lost = True
        self.lost_reason = reason

    def observe(self, sample: DeviceSample, at: float) -> None:
        """Take a sample measured at ``at``. A sample older than the latest one is ignored."""
        previous_at = self.sample_at
        if previous_at is not None and at < previous_at:
            return
        self.sample_at = at
        self._drain(at)
        if sample.lost:
            self.mark_lost("the monitor reports it lost")
            return
        if self.lost:
            self.lost = False
            self.lost_reason = ""
        total = sample.total_mb
        if total > 0:
            capacity = self.config.capacity_mb
            self.capacity_mb = total if total < capacity else capacity
        torch = sample.torch
        self._take(at, previous_at, sample.used_mb, None if torch is None else torch.reserved_mb)
