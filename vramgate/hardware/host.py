"""The host probe: RAM (bounded by the container's cgroup limit), swap, CPU and free disk, through psutil."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from vramgate.hardware.probe import ProbeReading, to_mb
from vramgate.messages.resources import HostSample

#: cgroup v2 and v1 files holding the memory limit and current usage, in bytes.
_CGROUP_FILES: tuple[tuple[str, str], ...] = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def cgroup_memory(root: Path = Path("/")) -> tuple[int, int | None] | None:
    """The container's memory limit and usage in bytes, or ``None`` when there is no limit.

    ``root`` lets tests point at a fake ``/sys`` tree.
    """
    for limit_file, usage_file in _CGROUP_FILES:
        limit = _read_int(root / limit_file.lstrip("/"))
        if limit is not None:
            return limit, _read_int(root / usage_file.lstrip("/"))
    return None


def swap_memory(meminfo: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    """Swap total and used bytes: the same figures as ``psutil.swap_memory()``, read from ``/proc/meminfo`` alone.

    (psutil also parses ``/proc/vmstat`` for page-in/out counts, which costs more than the rest of a host sample.)
    """
    try:
        with open(meminfo, "rb", buffering=0) as file:
            data = file.read(1 << 16)
        total = _meminfo_field(data, b"\nSwapTotal:")
        free = _meminfo_field(data, b"\nSwapFree:")
    except (OSError, ValueError):
        swap = psutil.swap_memory()
        return swap.total, swap.used
    return total, total - free


def _meminfo_field(data: bytes, key: bytes) -> int:
    start = data.index(key) + len(key)
    return int(data[start : data.index(b"\n", start)].split()[0]) * 1024


def cpu_count() -> int:
    """CPUs this process may run on (its affinity), else the logical CPU count, else 1."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return psutil.cpu_count(logical=True) or 1


class HostProbe:
    """RAM, swap, CPU and disk of this machine.

    ``disk_path`` is the directory whose free space is reported (the output directory); when it does not exist
    yet, its nearest existing parent is measured and a warning says so. ``cgroup_root`` is where ``/sys/fs/cgroup``
    is looked for. CPU utilization is the average since the previous sample (``None`` on the first).
    """

    name = "host"
    blocking = True

    def __init__(self, disk_path: str | os.PathLike[str] = ".", *, cgroup_root: Path = Path("/")) -> None:
        self.disk_path = Path(disk_path).expanduser().absolute()
        self._cgroup_root = cgroup_root
        self._cpu_count = cpu_count()
        self._cpu_primed = False
        self._process = psutil.Process()
        # A container's memory limit is fixed for its life: only a limit below the host's RAM is read again.
        cgroup = cgroup_memory(cgroup_root)
        self._cgroup_limited = cgroup is not None and cgroup[0] < psutil.virtual_memory().total

    def _disk(self, warnings: list[str]) -> tuple[int | None, int | None]:
        path = self.disk_path
        while not path.exists() and path != path.parent:
            path = path.parent
        if path != self.disk_path:
            warnings.append(f"host: disk path {self.disk_path} does not exist; measured {path}")
        try:
            usage = psutil.disk_usage(str(path))
        except OSError as error:
            warnings.append(f"host: cannot measure disk at {path}: {error}")
            return None, None
        return to_mb(usage.free), to_mb(usage.total)

    def sample(self) -> ProbeReading:
        warnings: list[str] = []
        vm = psutil.virtual_memory()
        total, available, used = vm.total, vm.available, vm.total - vm.available
        limit_mb: int | None = None
        cgroup = cgroup_memory(self._cgroup_root) if self._cgroup_limited else None
        if cgroup is not None and cgroup[0] < total:
            limit, usage = cgroup
            limit_mb = to_mb(limit)
            total = limit
            ceiling = limit - usage if usage is not None else limit
            available = max(0, min(available, ceiling))
            used = total - available
        try:
            swap_total, swap_used = swap_memory()
        except (OSError, RuntimeError) as error:
            warnings.append(f"host: cannot read swap: {error}")
            swap_total = swap_used = 0
        percent = psutil.cpu_percent(interval=None)
        cpu_percent = percent if self._cpu_primed else None
        self._cpu_primed = True
        disk_free, disk_total = self._disk(warnings)
        try:
            rss_mb: int | None = to_mb(self._process.memory_info().rss)
        except psutil.Error as error:
            warnings.append(f"host: cannot read this process's resident set: {error}")
            rss_mb = None
        host = HostSample(
            ram_total_mb=to_mb(total),
            ram_available_mb=to_mb(available),
            ram_used_mb=to_mb(used),
            swap_total_mb=to_mb(swap_total),
            swap_used_mb=to_mb(swap_used),
            cpu_count=self._cpu_count,
            cpu_percent=cpu_percent,
            cgroup_limit_mb=limit_mb,
            disk_path=str(self.disk_path),
            disk_free_mb=disk_free,
            disk_total_mb=disk_total,
            process_rss_mb=rss_mb,
        )
        return ProbeReading(probe=self.name, host=host, warnings=tuple(warnings))

    def close(self) -> None:
        return None
