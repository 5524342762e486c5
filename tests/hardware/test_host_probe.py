from __future__ import annotations

from pathlib import Path

import psutil

from vramgate.hardware import MIB, HostProbe, cgroup_memory
from vramgate.hardware.host import swap_memory


def test_host_probe_matches_psutil(tmp_path: Path) -> None:
    probe = HostProbe(tmp_path)
    host = probe.sample().host
    assert host is not None
    vm = psutil.virtual_memory()
    cgroup = cgroup_memory()
    limited = cgroup is not None and cgroup[0] < vm.total
    expected_total = (cgroup[0] if limited and cgroup else vm.total) // MIB
    assert host.ram_total_mb == expected_total
    if not limited:
        assert host.cgroup_limit_mb is None
        # available memory moves a little between two reads
        assert abs(host.ram_available_mb - vm.available // MIB) <= max(64, vm.total // MIB // 100)
    assert host.ram_available_mb <= host.ram_total_mb
    assert abs(host.ram_used_mb - (host.ram_total_mb - host.ram_available_mb)) <= 1  # rounding to MiB
    assert host.swap_total_mb == psutil.swap_memory().total // MIB
    assert host.cpu_count == len(psutil.Process().cpu_affinity() or [])
    disk = psutil.disk_usage(str(tmp_path))
    assert host.disk_total_mb == disk.total // MIB
    assert host.disk_free_mb is not None
    assert abs(host.disk_free_mb - disk.free // MIB) <= 64
    assert host.disk_path == str(tmp_path)


def test_cpu_percent_is_unknown_on_the_first_sample_only(tmp_path: Path) -> None:
    probe = HostProbe(tmp_path)
    first = probe.sample().host
    second = probe.sample().host
    assert first is not None
    assert second is not None
    assert first.cpu_percent is None
    assert second.cpu_percent is not None
    assert 0.0 <= second.cpu_percent <= 100.0


def test_missing_disk_path_measures_the_parent(tmp_path: Path) -> None:
    reading = HostProbe(tmp_path / "not" / "yet").sample()
    assert reading.host is not None
    assert reading.host.disk_free_mb is not None
    assert any("does not exist" in warning and str(tmp_path) in warning for warning in reading.warnings)


def _fake_cgroup(root: Path, limit: str, usage: str) -> None:
    folder = root / "sys" / "fs" / "cgroup"
    folder.mkdir(parents=True)
    (folder / "memory.max").write_text(limit + "\n")
    (folder / "memory.current").write_text(usage + "\n")


def test_a_lower_cgroup_limit_bounds_ram(tmp_path: Path) -> None:
    _fake_cgroup(tmp_path, str(512 * MIB), str(200 * MIB))
    assert cgroup_memory(tmp_path) == (512 * MIB, 200 * MIB)
    host = HostProbe(tmp_path, cgroup_root=tmp_path).sample().host
    assert host is not None
    assert host.cgroup_limit_mb == 512
    assert host.ram_total_mb == 512
    assert host.ram_available_mb == min(312, psutil.virtual_memory().available // MIB)
    assert host.ram_used_mb == 512 - host.ram_available_mb


def test_no_cgroup_limit(tmp_path: Path) -> None:
    _fake_cgroup(tmp_path, "max", "100")
    assert cgroup_memory(tmp_path) is None
    host = HostProbe(tmp_path, cgroup_root=tmp_path).sample().host
    assert host is not None
    assert host.cgroup_limit_mb is None
    assert host.ram_total_mb == psutil.virtual_memory().total // MIB


def test_swap_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    lines = ["MemTotal:       24684000 kB", "SwapCached:  0 kB", "SwapTotal:       2097148 kB", "SwapFree:  1048574 kB"]
    meminfo.write_text("\n".join(lines) + "\n")
    assert swap_memory(meminfo) == (2097148 * 1024, (2097148 - 1048574) * 1024)
    swap = psutil.swap_memory()
    assert swap_memory() == (swap.total, swap.used) or abs(swap_memory()[1] - swap.used) < 16 * MIB
    # an unreadable file falls back to psutil
    assert swap_memory(tmp_path / "missing")[0] == swap.total
