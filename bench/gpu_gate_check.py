"""GPU check of the gate on a real NVIDIA GPU (run on a machine with one; prints PASS/FAIL per check).

    python bench/gpu_gate_check.py

1. A gate over the real GPU (NVML) admits a run; inside the lease torch allocates 70% of the reservation; the
   observed peak the gate reports comes from torch's peak statistics and is within 2% of what was allocated.
2. After the run, the cleanup actor empties the CUDA cache and reports the reserved memory it freed.
3. The ledger's measured use follows the allocation (the monitor's NVML sample within one interval).
"""

from __future__ import annotations

import sys

import anyio

from vramgate.config import CleanupConfig, GateConfig, MonitorConfig
from vramgate.gate import open_gate
from vramgate.messages import GenerationRequest, RunFinished

MIB = 1 << 20
failures = 0


def check(name: str, ok: bool, detail: str) -> None:
    global failures
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
    failures += 0 if ok else 1


async def main() -> None:
    import torch

    config = GateConfig(monitor=MonitorConfig(interval_s=0.2), cleanup=CleanupConfig(after_run=True))
    finished: list[RunFinished] = []
    reports = []
    async with open_gate(config) as gate:
        gate.add_listener(lambda m: finished.append(m) if isinstance(m, RunFinished) else None)
        gate.add_listener(lambda m: reports.append(m) if type(m).__name__ == "CleanupReport" else None)
        check("devices", bool(gate.device_configs), f"{[(d.index, d.gpu, d.capacity_mb) for d in gate.device_configs]}")
        request = GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=121, steps=50)
        before_used = gate.statistics().devices[0].measured_used_mb or 0
        async with gate.admit(request) as lease:
            mb = int(lease.reservation_mb * 0.7)
            torch.cuda.reset_peak_memory_stats(lease.device)
            block = torch.empty(mb * MIB, dtype=torch.uint8, device=f"cuda:{lease.device}")
            block.fill_(7)
            torch.cuda.synchronize()
            await anyio.sleep(0.6)  # a few monitor intervals
            used = gate.statistics().devices[0].measured_used_mb or 0
            check(
                "monitor sees the run",
                used - before_used >= mb * 0.98,
                f"used {before_used} -> {used} MiB, allocated {mb}",
            )
            del block
        for _ in range(200):  # the cleanup runs in a worker thread: give it up to 10 s
            await gate.wait_idle()
            if finished and reports:
                break
            await anyio.sleep(0.05)
        observed = finished[0].observed
        peak = observed.torch_peak_reserved_mb or 0
        check("observed peak from torch", abs(peak - mb) <= 0.02 * mb, f"peak reserved {peak} MiB, allocated {mb} MiB")
        report = reports[0]
        check(
            "cleanup frees the CUDA cache",
            report.freed_mb >= mb * 0.98 and "torch.cuda.empty_cache()" in report.actions,
            f"freed {report.freed_mb} MiB; reserved "
            f"{report.torch_reserved_before_mb} -> {report.torch_reserved_after_mb}",
        )
        manual = await gate.cleanup_memory(aggressive=True)
        check("aggressive cleanup", "torch.cuda.ipc_collect()" in manual.actions, f"{manual.actions}")


anyio.run(main)
sys.exit(1 if failures else 0)
