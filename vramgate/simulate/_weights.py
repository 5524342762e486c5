"""The simulator's truth for model weights and host RAM: what is resident on each device, what a load costs.

* Each device keeps the weights of the models it has loaded (per model and DiT dtype; a run's weights are the
  estimator's DiT, LoRA, text encoder and VAE weights on the GPU at its peak, as admission counts them), held on
  the device as this system's memory (owner ``weights:<key>``). A run whose weights are resident uses them; one
  whose weights are not, or only in part (a plan that keeps more of the model on the GPU than the one that loaded
  it), loads what is missing first. A resident model holds what its runs need, the most any of them needs, never
  more: what none of them needs goes (an idle model is cut down to what the next run of it needs), so that
  resident weights never hold more than the runs using them reserved. A run that finds its weights still being
  loaded by another run shares that load without waiting for it (optimistic by at most one load). A run started
  with ``keep_weights`` leaves them resident when it ends (a server's process keeps its pipeline); otherwise they
  are freed once no run uses them (a process per run, as with ``generate.py``).
* Making room: before this system takes memory on a device (a load, a pin, a run's allocation), idle resident
  models are evicted, least recently used first, when that makes the allocation fit (never when it would not).
* A load reads the weights from the host's page cache over the GPU's host link (the catalog's figure times the
  calibration's pageable-copy efficiency), or, when the checkpoint is not cached, from disk
  (:data:`~vramgate.policy._host_ram.DISK_READ_BYTES_PER_S`, shared by the devices of the run that load). A
  checkpoint read from disk stays in the page cache while the host's RAM not held by runs has room for it
  (least recently used dropped first).
* Host RAM: each run holds its host RAM peak (the estimator's) from its start to its end; a run whose RAM does
  not fit beside the others' is killed, as the host's OOM killer would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vramgate.errors import InvalidParameter
from vramgate.hardware.simulated import SimulatedGpu
from vramgate.policy._host_ram import DISK_READ_BYTES_PER_S
from vramgate.policy.calibration import Calibration

_MIB = float(1 << 20)

#: The simulated host's RAM per device when none is given: a DGX H100 has 2 TiB for 8 GPUs.
DEFAULT_HOST_RAM_PER_GPU_MB = 256 * 1024


@dataclass(frozen=True, slots=True)
class SimulatedHost:
    """The host the simulated devices sit in: its RAM (``None``: 256 GiB per device) and its disk's read speed."""

    ram_mb: int | None = None
    disk_read_mb_s: float = DISK_READ_BYTES_PER_S / _MIB

    def __post_init__(self) -> None:
        if self.ram_mb is not None and (isinstance(self.ram_mb, bool) or self.ram_mb <= 0):
            raise InvalidParameter("host_ram_mb", self.ram_mb, "must be a positive number of MiB")
        if not self.disk_read_mb_s > 0.0:
            raise InvalidParameter("disk_read_mb_s", self.disk_read_mb_s, "must be a positive speed")

    def capacity_mb(self, devices: int) -> int:
        return self.ram_mb if self.ram_mb is not None else DEFAULT_HOST_RAM_PER_GPU_MB * devices


class _Resident:
    __slots__ = ("loaded", "mb", "needs")

    def __init__(self, mb: int) -> None:
        self.mb = mb
        self.needs = [mb]  # what each run using it needs
        self.loaded = False

    @property
    def users(self) -> int:
        return len(self.needs)


def owner_of(key: str) -> str:
    """The owner name resident weights hold device memory under."""
    return f"weights:{key}"


class WeightStore:
    """Resident weights per device, the host's page cache and the host RAM runs hold (see the module)."""

    def __init__(self, gpus: Sequence[SimulatedGpu], host: SimulatedHost) -> None:
        self.gpus = gpus
        self.host = host
        self.models: list[dict[str, _Resident]] = [{} for _ in gpus]  # least recently used first
        self.host_capacity_mb = host.capacity_mb(len(gpus))
        self.host_used_mb = 0
        self.host_peak_mb = 0
        self._cache: dict[str, int] = {}  # checkpoint -> MiB in the page cache, least recently used first
        self._cache_mb = 0
        efficiency = Calibration.default().pageable_link_efficiency
        self._host_link_mb_s = [gpu.spec.host_link_gbps * 1e9 * efficiency / _MIB for gpu in gpus]

    # ------------------------------------------------------------------ device memory

    def resident(self, device: int) -> dict[str, int]:
        """The models resident on ``device`` (key -> MiB), least recently used first."""
        return {key: r.mb for key, r in self.models[device].items()}

    def idle_mb(self, device: int) -> int:
        """MiB of resident weights no run uses on ``device`` (what making room may evict)."""
        models = self.models[device]
        return sum(r.mb for r in models.values() if not r.needs) if models else 0

    def make_room(self, device: int, mb: int) -> list[str]:
        """Evict idle models on ``device``, least recently used first, until ``mb`` MiB are free; nothing when even
        evicting every idle model would not make it fit. Returns the keys evicted."""
        models = self.models[device]
        if not models:
            return []
        gpu = self.gpus[device]
        short = mb - gpu.free_mb
        if short <= 0 or gpu.lost:
            return []
        if sum(r.mb for r in models.values() if r.users == 0) < short:
            return []
        evicted: list[str] = []
        for key, r in list(models.items()):
            if short <= 0:
                break
            if r.users == 0:
                gpu.free(owner_of(key))
                del models[key]
                short -= r.mb
                evicted.append(key)
        return evicted

    def acquire(self, device: int, key: str, mb: int) -> int:
        """A run uses ``mb`` MiB of ``key``'s weights on ``device``: what is not resident is allocated (after making
        room) and returned, the MiB the run loads (0: all resident). Raises the device's error when they do not
        fit (then the run holds nothing of them)."""
        models = self.models[device]
        found = models.pop(key, None)
        if found is None:
            self.make_room(device, mb)
            self.gpus[device].allocate(owner_of(key), mb)
            models[key] = _Resident(mb)
            return mb
        models[key] = found  # most recently used
        gpu = self.gpus[device]
        missing = mb - found.mb
        if missing > 0:
            self.make_room(device, missing)
            gpu.allocate(owner_of(key), missing)  # raises before anything changed
            found.mb = mb
            found.loaded = False
        elif missing < 0 and not found.needs:  # idle and larger than this run needs: keep what it needs
            gpu.free(owner_of(key), -missing)
            found.mb = mb
        found.needs.append(mb)
        return max(0, missing)

    def loaded(self, device: int, key: str) -> None:
        """A run of ``key`` on ``device`` began to compute: its load is done."""
        found = self.models[device].get(key)
        if found is not None:
            found.loaded = True

    def release(self, device: int, key: str, mb: int | None = None, *, keep: bool) -> bool:
        """A run that needed ``mb`` MiB stops using ``key`` on ``device``; with ``keep`` loaded weights stay resident
        once idle. Returns whether they were freed."""
        models = self.models[device]
        found = models.get(key)
        if found is None:
            return False
        found.needs.remove(max(found.needs) if mb is None else mb)
        gpu = self.gpus[device]
        if found.needs:
            most = max(found.needs)
            if found.mb > most and not gpu.lost:  # what only the run that ended needed goes with it
                gpu.free(owner_of(key), found.mb - most)
                found.mb = most
            return False
        if keep and found.loaded:
            return False
        del models[key]
        if not gpu.lost:
            gpu.free(owner_of(key))
        return True

    def drop_device(self, device: int) -> int:
        """The device is lost: its resident weights are gone (freed now, before it falls off). Returns MiB."""
        gpu = self.gpus[device]
        total = 0
        for key, r in self.models[device].items():
            if not gpu.lost:
                gpu.free(owner_of(key))
            total += r.mb
        self.models[device].clear()
        return total

    def in_use(self) -> int:
        """Resident entries a run still uses (0 once every run has ended)."""
        return sum(r.users for models in self.models for r in models.values())

    # ------------------------------------------------------------------ loads and host RAM

    def load_seconds(self, checkpoint: str, mb: int, devices: Sequence[int]) -> tuple[float, bool]:
        """Seconds for ``devices`` to load ``mb`` MiB each of ``checkpoint``, and whether it came from disk (which
        puts it in the page cache)."""
        cache = self._cache
        cached = cache.pop(checkpoint, None)
        if cached is not None:
            cache[checkpoint] = max(cached, mb)
            self._cache_mb += max(0, mb - cached)
            self._trim()
            return max(mb / self._host_link_mb_s[d] for d in devices), False
        cache[checkpoint] = mb
        self._cache_mb += mb
        self._trim()
        return mb * len(devices) / self.host.disk_read_mb_s, True

    def take_ram(self, mb: int) -> bool:
        """A run takes ``mb`` MiB of host RAM; ``False`` (nothing taken) when it does not fit."""
        if self.host_used_mb + mb > self.host_capacity_mb:
            return False
        self.host_used_mb += mb
        self.host_peak_mb = max(self.host_peak_mb, self.host_used_mb)
        self._trim()
        return True

    def give_ram(self, mb: int) -> None:
        self.host_used_mb -= mb

    def _trim(self) -> None:
        room = self.host_capacity_mb - self.host_used_mb
        cache = self._cache
        while self._cache_mb > room and cache:
            oldest = next(iter(cache))
            self._cache_mb -= cache.pop(oldest)
