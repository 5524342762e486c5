"""GPU check: compare vramgate's measurements with nvidia-smi and torch.cuda on a machine with an NVIDIA GPU.

Run from the repository root (vramgate installed, or the root on PYTHONPATH), with torch (CUDA build), nvidia-ml-py,
psutil, click, rich, anyio and msgspec importable:

    python bench/gpu_check.py            # or: bash bench/gpu_check.sh

Checks, each printed as PASS / FAIL / SKIP with the figures:
  1. ``vramgate check --json`` against ``nvidia-smi --query-gpu=...``: index, name, uuid, total, used, free;
  2. the NVML figures against ``torch.cuda.mem_get_info`` (free, total) for every CUDA device, matched by UUID;
  3. an 8 GiB torch allocation makes a sample's free memory drop by 8 GiB (within 2 %) within one monitor interval
     (0.5 s), and torch's figures for this process are attached to the right NVML device;
  4. ``vramgate monitor --json`` streams samples that see the allocation;
  5. with several GPUs, ``CUDA_VISIBLE_DEVICES`` is honoured (CUDA ordinal 0 maps to the last NVML device);
  6. the cost of one NVML sample and one torch sample (informational).
Exits 1 when any check fails, 0 otherwise.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
INTERVAL_S = 0.5
ALLOC_MIB = 8192
FAILURES: list[str] = []


def report(name: str, ok: bool | None, detail: str = "") -> None:
    """Print one check's verdict (``None`` is SKIP)."""
    verdict = "SKIP" if ok is None else "PASS" if ok else "FAIL"
    print(f"[{verdict}] {name}" + (f": {detail}" if detail else ""), flush=True)
    if ok is False:
        FAILURES.append(name)


def close(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance


def run_vramgate(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vramgate", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def nvidia_smi() -> list[dict[str, Any]]:
    out = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=index,name,uuid,memory.total,memory.used,memory.free",
            "--format=csv,noheader,nounits",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = []
    for line in out.strip().splitlines():
        index, name, uuid, total, used, free = (part.strip() for part in line.split(","))
        rows.append(
            {"index": int(index), "name": name, "uuid": uuid, "total": int(total), "used": int(used), "free": int(free)}
        )
    return rows


def check_json(smi: list[dict[str, Any]]) -> dict[str, Any] | None:
    result = run_vramgate("check", "--json")
    report("vramgate check --json exits 0", result.returncode == 0, f"rc={result.returncode} {result.stderr[-500:]}")
    try:
        data: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError as error:
        report("vramgate check --json is JSON", False, str(error))
        return None
    for warning in data.get("warnings", []):
        print(f"       warning: {warning}")
    nvml = [device for device in data["devices"] if device["backend"] == "nvml"]
    report("NVML backend used", bool(nvml), f"backends: {[device['backend'] for device in data['devices']]}")
    report("same GPU count as nvidia-smi", len(nvml) == len(smi), f"vramgate {len(nvml)}, nvidia-smi {len(smi)}")
    by_index = {device["index"]: device for device in nvml}
    for row in smi:
        device = by_index.get(row["index"])
        label = f"GPU {row['index']}"
        if device is None:
            report(f"{label} present", False)
            continue
        tolerance = max(64, row["total"] // 200)  # 0.5 %: memory moves between the two reads
        report(f"{label} name", device["name"] == row["name"], f"{device['name']!r} vs {row['name']!r}")
        report(f"{label} uuid", device["uuid"] == row["uuid"], f"{device['uuid']} vs {row['uuid']}")
        report(f"{label} total_mb", device["total_mb"] == row["total"], f"{device['total_mb']} vs {row['total']} MiB")
        report(
            f"{label} used_mb",
            close(device["used_mb"], row["used"], tolerance),
            f"{device['used_mb']} vs {row['used']} MiB (reserved {device.get('reserved_mb')} MiB, tol {tolerance})",
        )
        report(
            f"{label} free_mb",
            close(device["free_mb"], row["free"], tolerance),
            f"{device['free_mb']} vs {row['free']} MiB (tol {tolerance})",
        )
    host = data.get("host") or {}
    report(
        "host figures present",
        all(
            isinstance(host.get(key), int) for key in ("ram_total_mb", "ram_available_mb", "cpu_count", "disk_free_mb")
        ),
        f"RAM {host.get('ram_available_mb')}/{host.get('ram_total_mb')} MiB, {host.get('cpu_count')} CPUs",
    )
    return data


def check_torch(torch: Any) -> None:
    from vramgate.hardware import NvmlProbe, map_ordinal

    probe = NvmlProbe()
    try:
        for ordinal in range(torch.cuda.device_count()):
            free_b, total_b = torch.cuda.mem_get_info(ordinal)  # creates this process's context first
            reading = probe.sample()
            props = torch.cuda.get_device_properties(ordinal)
            uuid, nvml_index, rule = map_ordinal(ordinal, str(getattr(props, "uuid", "") or "") or None, os.environ)
            match = [
                d for d in reading.devices if (uuid and d.uuid.startswith(uuid)) or (not uuid and d.index == nvml_index)
            ]
            label = f"cuda:{ordinal}"
            report(f"{label} maps to an NVML device ({rule})", len(match) == 1, f"uuid {uuid or '-'}")
            if len(match) != 1:
                continue
            device = match[0]
            free, total = free_b >> 20, total_b >> 20
            tolerance = max(64, total // 200)
            # cudaMemGetInfo's total leaves out the memory the driver reserves (NVML v2 reports it apart)
            usable = device.total_mb - (device.reserved_mb or 0)
            report(
                f"{label} total minus reserved vs mem_get_info",
                close(usable, total, tolerance),
                f"{device.total_mb} - {device.reserved_mb} reserved = {usable} vs {total} MiB",
            )
            report(
                f"{label} free vs mem_get_info",
                close(device.free_mb, free, tolerance),
                f"{device.free_mb} vs {free} MiB",
            )
    finally:
        probe.close()


def check_allocation(torch: Any) -> None:
    from vramgate.hardware import detect

    with detect(torch=True, host=False) as devices:
        torch.cuda.synchronize(0)
        before_sample = devices.sample(time.monotonic())
        props = torch.cuda.get_device_properties(0)
        target = [d for d in before_sample.devices if d.cuda_index == 0]
        report("torch figures attached to an NVML device", len(target) == 1, before_sample.mapping)
        if len(target) != 1:
            return
        index, before = target[0].index, target[0].free_mb
        block = torch.empty(ALLOC_MIB << 20, dtype=torch.uint8, device="cuda:0")
        torch.cuda.synchronize(0)
        start = time.monotonic()
        drop, device = 0, target[0]
        while time.monotonic() - start <= INTERVAL_S:
            device = next(d for d in devices.sample(time.monotonic()).devices if d.index == index)
            drop = before - device.free_mb
            if abs(drop - ALLOC_MIB) <= ALLOC_MIB * 0.02:
                break
            time.sleep(0.02)
        seen_after = time.monotonic() - start
        report(
            f"free memory drops by {ALLOC_MIB} MiB within {INTERVAL_S} s",
            abs(drop - ALLOC_MIB) <= ALLOC_MIB * 0.02 and seen_after <= INTERVAL_S + 0.1,
            f"drop {drop} MiB after {seen_after:.3f} s on GPU {index} ({props.name})",
        )
        allocated = device.torch.allocated_mb if device.torch is not None else None
        report(
            "torch allocated_mb shows the allocation",
            allocated is not None and abs(allocated - ALLOC_MIB) <= 2,
            f"{allocated} MiB",
        )
        result = run_vramgate("monitor", "--json", "--count", "2", "--interval", str(INTERVAL_S))
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        monitor_ok = result.returncode == 0 and len(lines) == 2
        seen = None
        if monitor_ok:
            last = json.loads(lines[-1])
            seen = next((d["free_mb"] for d in last["devices"] if d["index"] == index), None)
        report(
            "vramgate monitor --json sees the allocation",
            monitor_ok and seen is not None and close(seen, device.free_mb, max(64, ALLOC_MIB // 50)),
            f"rc={result.returncode}, {len(lines)} lines, free {seen} vs {device.free_mb} MiB {result.stderr[-300:]}",
        )
        del block
        torch.cuda.empty_cache()


def check_visible_devices(smi: list[dict[str, Any]]) -> None:
    if len(smi) < 2:
        report("CUDA_VISIBLE_DEVICES mapping", None, "needs two or more GPUs")
        return
    last = smi[-1]
    code = (
        "import torch; from vramgate.hardware import detect\n"
        "x = torch.empty(1 << 30, dtype=torch.uint8, device='cuda:0'); torch.cuda.synchronize()\n"
        "s = detect(torch=True, host=False).sample()\n"
        "print([(d.index, d.cuda_index, d.torch.allocated_mb if d.torch else None) for d in s.devices])\n"
    )
    env = {**ENV, "CUDA_VISIBLE_DEVICES": str(last["index"])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    try:
        rows = ast.literal_eval(out.stdout.strip().splitlines()[-1])  # the list printed by the code above
    except (IndexError, ValueError, SyntaxError):
        rows = []
    ok = (last["index"], 0, 1024) in rows
    report("CUDA_VISIBLE_DEVICES mapping", ok, f"{rows} {out.stderr[-300:]}")


def time_probes(torch: Any) -> None:
    from vramgate.hardware import NvmlProbe, TorchProbe

    for name, make in (("NVML", lambda: NvmlProbe()), ("torch", lambda: TorchProbe(torch, mem_info=True))):
        probe = make()
        probe.sample()
        times = []
        for _ in range(50):
            start = time.perf_counter()
            probe.sample()
            times.append(time.perf_counter() - start)
        probe.close()
        report(
            f"one {name} sample", True, f"median {statistics.median(times) * 1e3:.3f} ms, max {max(times) * 1e3:.3f} ms"
        )


def main() -> int:
    if shutil.which("nvidia-smi") is None:
        report("nvidia-smi on PATH", False, "no NVIDIA driver tools here")
        return 1
    try:
        import torch
    except ImportError as error:
        report("torch importable", False, str(error))
        return 1
    if not torch.cuda.is_available():
        report("torch sees CUDA", False, f"torch {torch.__version__}")
        return 1
    smi = nvidia_smi()
    print(f"nvidia-smi: {[(row['index'], row['name']) for row in smi]}, torch {torch.__version__}", flush=True)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("check --json vs nvidia-smi", lambda: check_json(smi)),
        ("NVML vs torch.cuda.mem_get_info", lambda: check_torch(torch)),
        ("8 GiB allocation", lambda: check_allocation(torch)),
        ("CUDA_VISIBLE_DEVICES", lambda: check_visible_devices(smi)),
        ("probe timing", lambda: time_probes(torch)),
    ]
    for name, step in steps:
        try:
            step()
        except Exception as error:  # a crash in one step is that step's failure; the others still run
            report(name, False, f"crashed: {type(error).__name__}: {error}")
    print(
        f"\n{'FAIL' if FAILURES else 'PASS'}: {len(FAILURES)} check(s) failed" + (f": {FAILURES}" if FAILURES else "")
    )
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
