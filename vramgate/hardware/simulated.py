"""A simulated GPU: a first-class device backend with its own memory accounting.

A :class:`SimulatedGpu` has a catalog GPU's capacity (or a bare size such as ``"24GB"``), a CUDA-context
overhead, allocations made by this system's runs (by owner), and outside consumers that a script or test adds
and removes over time (optionally expiring at a time on the injected clock). An allocation past capacity raises
:class:`SimulatedOutOfMemory`; an allocation of exactly the free memory succeeds. Everything is deterministic:
the only notion of time is the injected clock, read when outside consumers may have expired.

An owner may *pin* a block (:meth:`SimulatedGpu.pin`): the block is taken from the device at once, as a caching
allocator's reserved segment is, so outside consumers cannot have it, and the owner's own allocations draw from
it first; only what the owner holds above the pin takes more of the device (and may run out of memory). An
owner's footprint on the device is ``max(allocated, pinned)``. Samples show the footprints as torch's
``reserved`` and the allocations as torch's ``allocated``; :meth:`SimulatedGpu.peak_mb` follows allocations only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

from vramgate.errors import CapacityError, InvalidParameter, SystemFault
from vramgate.hardware.probe import ProbeReading
from vramgate.messages.resources import DeviceSample, TorchMemory
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG, GpuCatalog, GpuSpec

#: What a CUDA context costs on a recent data-center GPU (CUDA 12, Hopper: about 500 MiB).
DEFAULT_CONTEXT_OVERHEAD_MB = 512


class Now(Protocol):
    """Anything that tells the time (a :class:`~vramgate.clock.Clock` will do)."""

    def now(self) -> float: ...


class SimulatedOutOfMemory(CapacityError):
    """An allocation on a simulated GPU went past its capacity (what CUDA reports as an out-of-memory error)."""

    def __init__(self, *, device: int, owner: str, requested_mb: int, free_mb: int, total_mb: int):
        self.device = device
        self.owner = owner
        self.requested_mb = requested_mb
        self.free_mb = free_mb
        self.total_mb = total_mb
        super().__init__(
            f"simulated GPU {device}: out of memory: {owner!r} tried to allocate {requested_mb} MiB, "
            f"{free_mb} MiB free of {total_mb} MiB"
        )


class SimulatedDeviceLost(SystemFault):
    """The simulated GPU has fallen off the bus; it accepts no more allocations."""

    def __init__(self, device: int):
        self.device = device
        super().__init__(f"simulated GPU {device} is lost (fell off the bus)")


def _check_mb(field: str, mb: int) -> int:
    if isinstance(mb, bool) or not isinstance(mb, int) or mb < 0:
        raise InvalidParameter(field, mb, "must be a whole, non-negative number of MiB")
    return mb


class SimulatedGpu:
    """One simulated GPU. See the module documentation."""

    __slots__ = (
        "_allocated",
        "_allocated_mb",
        "_clock",
        "_context_mb",
        "_lost",
        "_ours_mb",
        "_outside",
        "_outside_mb",
        "_peaks",
        "_pins",
        "_reserved_peak_mb",
        "_total_peak_mb",
        "index",
        "name",
        "spec",
        "total_mb",
        "uuid",
    )

    def __init__(
        self,
        spec_or_name: GpuSpec | str,
        *,
        index: int = 0,
        clock: Now | None = None,
        context_overhead_mb: int = DEFAULT_CONTEXT_OVERHEAD_MB,
        catalog: GpuCatalog = DEFAULT_GPU_CATALOG,
        uuid: str | None = None,
    ) -> None:
        spec = catalog.get(spec_or_name) if isinstance(spec_or_name, str) else spec_or_name
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise InvalidParameter("index", index, "must be a non-negative integer")
        _check_mb("context_overhead_mb", context_overhead_mb)
        if context_overhead_mb > spec.memory_mib:
            raise InvalidParameter(
                "context_overhead_mb", context_overhead_mb, f"larger than the device ({spec.memory_mib} MiB)"
            )
        self.spec = spec
        self.name = spec.name
        self.index = index
        self.total_mb = spec.memory_mib
        digest = hashlib.sha1(f"{index}:{spec.name}".encode()).hexdigest()
        self.uuid = uuid or f"SIM-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
        self._clock = clock
        self._context_mb = context_overhead_mb
        self._allocated: dict[str, int] = {}
        self._allocated_mb = 0  # the owners' allocations
        self._pins: dict[str, int] = {}
        self._ours_mb = 0  # the owners' footprints: max(allocated, pinned) each
        self._outside: dict[str, tuple[int, float | None]] = {}
        self._outside_mb = 0
        self._peaks: dict[str, int] = {}
        self._total_peak_mb = 0
        self._reserved_peak_mb = 0
        self._lost = False

    def __repr__(self) -> str:
        return f"SimulatedGpu({self.name!r}, index={self.index}, used={self.used_mb}/{self.total_mb} MiB)"

    # ------------------------------------------------------------------ accounting

    def _expire(self) -> None:
        if self._clock is None or not self._outside:
            return
        now = self._clock.now()
        expired = [name for name, (_, until) in self._outside.items() if until is not None and until <= now]
        for name in expired:
            self._outside_mb -= self._outside.pop(name)[0]

    @property
    def context_overhead_mb(self) -> int:
        return self._context_mb

    @property
    def allocated_mb(self) -> int:
        """MiB allocated by this system's runs (all owners), not counting pinned memory they do not use."""
        return self._allocated_mb

    @property
    def reserved_mb(self) -> int:
        """MiB this system holds on the device: each owner's allocations or its pin, whichever is larger."""
        return self._ours_mb

    @property
    def pinned_mb(self) -> int:
        """MiB pinned by owners (used or not)."""
        return sum(self._pins.values())

    @property
    def outside_mb(self) -> int:
        """MiB held by outside consumers that have not expired."""
        self._expire()
        return self._outside_mb

    @property
    def used_mb(self) -> int:
        self._expire()
        return self._context_mb + self._ours_mb + self._outside_mb

    @property
    def free_mb(self) -> int:
        return self.total_mb - self.used_mb

    @property
    def lost(self) -> bool:
        return self._lost

    def allocations(self) -> dict[str, int]:
        """This system's allocations by owner (a copy)."""
        return dict(self._allocated)

    def pins(self) -> dict[str, int]:
        """Pinned blocks by owner (a copy)."""
        return dict(self._pins)

    def outside(self) -> dict[str, int]:
        """Outside consumers that have not expired, by name (a copy)."""
        self._expire()
        return {name: mb for name, (mb, _) in self._outside.items()}

    def _grow(self, owner: str, mb: int, *, requested_mb: int, spare_mb: int = 0) -> None:
        """Take ``mb`` more MiB of the device for ``owner``, or raise :class:`SimulatedOutOfMemory`.

        The error names the ``requested_mb`` and what the owner had: the free memory plus ``spare_mb`` (the
        unused part of its pin).
        """
        if self._lost:
            raise SimulatedDeviceLost(self.index)
        free = self.free_mb
        if mb > free:
            raise SimulatedOutOfMemory(
                device=self.index,
                owner=owner,
                requested_mb=requested_mb,
                free_mb=free + spare_mb,
                total_mb=self.total_mb,
            )
        self._ours_mb += mb
        if self._ours_mb > self._reserved_peak_mb:
            self._reserved_peak_mb = self._ours_mb

    def allocate(self, owner: str, mb: int) -> None:
        """Allocate ``mb`` MiB for ``owner``; raises :class:`SimulatedOutOfMemory` past capacity.

        An owner with a pin draws from it first: only what it holds above the pin takes free memory.
        """
        _check_mb("mb", mb)
        before = self._allocated.get(owner, 0)
        pinned = self._pins.get(owner, 0)
        held = before + mb
        self._grow(owner, max(held, pinned) - max(before, pinned), requested_mb=mb, spare_mb=max(0, pinned - before))
        self._allocated[owner] = held
        self._allocated_mb += mb
        if held > self._peaks.get(owner, 0):
            self._peaks[owner] = held
        if self._allocated_mb > self._total_peak_mb:
            self._total_peak_mb = self._allocated_mb

    def free(self, owner: str, mb: int | None = None) -> int:
        """Release ``mb`` MiB of ``owner``'s allocation (all of it when ``mb`` is ``None``); returns MiB released.

        Releasing more than the owner holds, or for an owner that holds nothing, is an
        :class:`~vramgate.errors.InvalidParameter` error (it would hide an accounting bug). Memory freed inside
        the owner's pin stays pinned (the device's free memory grows only by what was held above the pin).
        """
        held = self._allocated.get(owner)
        if held is None:
            if mb is None or mb == 0:
                return 0
            raise InvalidParameter("owner", owner, "holds no memory on this device")
        amount = held if mb is None else _check_mb("mb", mb)
        if amount > held:
            raise InvalidParameter("mb", mb, f"{owner!r} holds only {held} MiB")
        if amount == held:
            del self._allocated[owner]
        else:
            self._allocated[owner] = held - amount
        pinned = self._pins.get(owner, 0)
        self._ours_mb -= max(held, pinned) - max(held - amount, pinned)
        self._allocated_mb -= amount
        return amount

    def pin(self, owner: str, mb: int) -> None:
        """Take ``mb`` MiB of the device for ``owner`` now, before it allocates (see the module documentation).

        What the owner already holds counts towards the pin. Raises :class:`SimulatedOutOfMemory` when the
        block does not fit (nothing is pinned then), and :class:`~vramgate.errors.InvalidParameter` when the
        owner already has a pin.
        """
        _check_mb("mb", mb)
        if owner in self._pins:
            raise InvalidParameter("owner", owner, f"already pins {self._pins[owner]} MiB on this device")
        held = self._allocated.get(owner, 0)
        self._grow(owner, max(0, mb - held), requested_mb=mb, spare_mb=held)
        self._pins[owner] = mb

    def unpin(self, owner: str) -> int:
        """Drop ``owner``'s pin; returns the MiB this gives back to the device (the unused part of the pin).

        Unpinning an owner without a pin returns 0, so a release path may call it on every exit.
        """
        pinned = self._pins.pop(owner, None)
        if pinned is None:
            return 0
        held = self._allocated.get(owner, 0)
        back = max(0, pinned - held)
        self._ours_mb -= back
        return back

    def add_outside(self, name: str, mb: int, *, until: float | None = None) -> None:
        """An outside consumer (another process) takes ``mb`` MiB, until time ``until`` on the clock if given.

        Adding to a name that is already present replaces it. Past capacity this is an OOM too.
        """
        _check_mb("mb", mb)
        if until is not None and self._clock is None:
            raise InvalidParameter("until", until, "needs a simulated GPU created with a clock")
        self._expire()
        previous = self._outside.get(name, (0, None))[0]
        free = self.free_mb + previous
        if mb > free:
            raise SimulatedOutOfMemory(
                device=self.index, owner=name, requested_mb=mb, free_mb=free, total_mb=self.total_mb
            )
        self._outside[name] = (mb, until)
        self._outside_mb += mb - previous

    def remove_outside(self, name: str) -> int:
        """Remove an outside consumer; returns the MiB it held (0 when it was not there or had expired)."""
        self._expire()
        entry = self._outside.pop(name, None)
        if entry is None:
            return 0
        self._outside_mb -= entry[0]
        return entry[0]

    # ------------------------------------------------------------------ torch-like peak tracking

    def peak_mb(self, owner: str | None = None) -> int:
        """The most ``owner`` allocated since its last :meth:`reset_peak` (all owners together when ``None``).

        A pin is not an allocation: this is what the owner itself used, as torch's ``max_memory_allocated``.
        """
        if owner is None:
            return self._total_peak_mb
        return self._peaks.get(owner, 0)

    def reset_peak(self, owner: str | None = None) -> None:
        """Start a new peak measurement at what ``owner`` (or, with ``None``, all owners) holds now."""
        if owner is None:
            self._total_peak_mb = self._allocated_mb
            self._reserved_peak_mb = self._ours_mb
        else:
            self._peaks[owner] = self._allocated.get(owner, 0)

    # ------------------------------------------------------------------ faults

    def lose(self) -> None:
        """The device falls off the bus: samples say ``lost`` and allocations raise."""
        self._lost = True

    def recover(self) -> None:
        """The device is back (after a reset): allocations and pins are gone, outside consumers stay."""
        self._lost = False
        self._allocated.clear()
        self._pins.clear()
        self._allocated_mb = 0
        self._ours_mb = 0

    # ------------------------------------------------------------------ sampling

    def sample(self) -> DeviceSample:
        """What a monitor sees now (backend ``"simulated"``)."""
        if self._lost:
            return DeviceSample(
                index=self.index,
                name=self.name,
                uuid=self.uuid,
                backend="simulated",
                total_mb=self.total_mb,
                free_mb=0,
                used_mb=self.total_mb,
                simulated=True,
                lost=True,
            )
        used = self.used_mb
        return DeviceSample(
            index=self.index,
            name=self.name,
            uuid=self.uuid,
            backend="simulated",
            total_mb=self.total_mb,
            free_mb=self.total_mb - used,
            used_mb=used,
            torch=TorchMemory(
                allocated_mb=self._allocated_mb,
                reserved_mb=self._ours_mb,
                active_mb=self._allocated_mb,
                peak_allocated_mb=self._total_peak_mb,
                peak_reserved_mb=self._reserved_peak_mb,
            ),
            simulated=True,
        )


class SimulatedProbe:
    """A probe over simulated GPUs. It never blocks, so the monitor calls it inline."""

    name = "simulated"
    blocking = False

    def __init__(self, devices: Sequence[SimulatedGpu]) -> None:
        indices = [device.index for device in devices]
        if len(set(indices)) != len(indices):
            raise InvalidParameter("simulated", indices, "device indices must be distinct")
        self.devices = tuple(devices)

    def sample(self) -> ProbeReading:
        samples = tuple(device.sample() for device in self.devices)
        warnings = tuple(
            f"simulated GPU {device.index} ({device.name}) is lost" for device in self.devices if device.lost
        )
        return ProbeReading(probe=self.name, devices=samples, warnings=warnings)

    def close(self) -> None:
        return None
