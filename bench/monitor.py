"""Monitor cost: one sample per backend available here, and the CPU the monitor actor uses at 10 Hz.

    python bench/monitor.py [seconds]      (default 5 s per measurement)

Each figure is printed with its baseline, measured in the same run:
  * one sample of each probe against the raw library call(s) it wraps (psutil for the host, the simulated GPUs'
    own ``sample`` for the simulated probe, ``nvmlDeviceGetMemoryInfo`` for NVML, ``mem_get_info`` for torch);
  * the monitor actor at 10 Hz with the host probe and four simulated GPUs, as CPU time per second of wall time
    (``time.process_time``, which counts the worker threads too), against an actor system whose only actor
    receives an empty message from a 10 Hz timer. Target: under 1 % of one core.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import anyio
import anyio.to_thread
import psutil

from vramgate.actors import Actor, ActorSystem, Envelope
from vramgate.actors.monitor import MonitorActor
from vramgate.clock import MonotonicClock
from vramgate.hardware import HostProbe, Probe, SimulatedGpu, SimulatedProbe, detect
from vramgate.messages import Message
from vramgate.messages.monitor import SampleTick

RATE_HZ = 10.0


def per_call(fn: Callable[[], object], *, repeat: int = 300) -> float:
    """Median seconds of one call of ``fn``."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _raw_host(path: str) -> Callable[[], object]:
    def call() -> object:
        return psutil.virtual_memory(), psutil.swap_memory(), psutil.cpu_percent(None), psutil.disk_usage(path)

    return call


def sample_costs(disk: str) -> None:
    print("one sample per backend (median of 300 calls):")
    gpus = [SimulatedGpu("H100-80GB", index=i) for i in range(4)]
    for gpu in gpus:
        gpu.allocate("run", 1000)
        gpu.add_outside("other", 500)
    rows: list[tuple[str, Probe, Callable[[], object], str]] = [
        ("host", HostProbe(disk), _raw_host(disk), "the psutil calls it replaces"),
        ("simulated x4", SimulatedProbe(gpus), lambda: [gpu.sample() for gpu in gpus], "4 x SimulatedGpu.sample"),
    ]
    devices = detect(torch=True, host=False)
    for probe in devices.probes:
        if probe.name == "nvml":
            import pynvml

            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

            def nvml_memory(handles: list[object] = handles) -> object:
                return [pynvml.nvmlDeviceGetMemoryInfo(handle) for handle in handles]

            rows.append(("nvml", probe, nvml_memory, "nvmlDeviceGetMemoryInfo per device"))
        elif probe.name == "torch":
            import torch

            def torch_memory(count: int = torch.cuda.device_count()) -> object:
                return [torch.cuda.mem_get_info(i) for i in range(count)]

            rows.append(("torch", probe, torch_memory, "mem_get_info per device"))
    for label, probe, baseline, what in rows:
        cost = per_call(probe.sample)
        base = per_call(baseline)
        print(f"  {label:14s} {cost * 1e6:9.1f} us   baseline {base * 1e6:9.1f} us ({what}), ratio {cost / base:5.2f}")
    for warning in devices.warnings:
        print(f"  (not measured: {warning})")
    devices.close()


class _Idle(Actor[Message]):
    """A 10 Hz timer actor that does nothing: the runtime's own cost."""

    async def on_start(self) -> None:
        self.context.send_every(1.0 / RATE_HZ, SampleTick(), first_after_s=0.0)

    async def receive(self, message: Message, envelope: Envelope) -> None:
        return None


class _IdleThread(_Idle):
    """The same, plus one empty worker-thread call per tick: the floor for a probe run off the event loop."""

    async def receive(self, message: Message, envelope: Envelope) -> None:
        await anyio.to_thread.run_sync(_nothing)


def _nothing() -> None:
    return None


async def _cpu_share(make: Callable[[], Actor[Message]], seconds: float) -> float:
    system = ActorSystem(clock=MonotonicClock())
    system.spawn(make(), name="subject")
    async with system:
        await anyio.sleep(0.5)  # warm up (thread pool, first samples)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await anyio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        await system.stop()
    return cpu / wall


def monitor_cpu(disk: str, seconds: float) -> None:
    print(f"\nmonitor actor at {RATE_HZ:g} Hz, host + 4 simulated GPUs, {seconds:g} s each (CPU per wall second):")

    def monitor() -> Actor[Message]:
        gpus = [SimulatedGpu("H100-80GB", index=i) for i in range(4)]
        probes: list[Probe] = [HostProbe(disk), SimulatedProbe(gpus)]
        return MonitorActor(probes, interval_s=1.0 / RATE_HZ)

    backends = ["asyncio"]
    try:
        import trio  # noqa: F401
    except ImportError:
        print("  (trio is not installed: asyncio only)")
    else:
        backends.append("trio")
    for backend in backends:
        share = anyio.run(_cpu_share, monitor, seconds, backend=backend)
        base = anyio.run(_cpu_share, _Idle, seconds, backend=backend)
        thread = anyio.run(_cpu_share, _IdleThread, seconds, backend=backend)
        verdict = "meets" if share < 0.01 else "misses"
        print(
            f"  {backend:8s} monitor {share * 100:5.2f} % of a core ({verdict} the 1 % target);  baselines: "
            f"bare 10 Hz timer actor {base * 100:5.2f} %, same + one empty worker-thread call {thread * 100:5.2f} %"
        )


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    with tempfile.TemporaryDirectory() as disk:
        sample_costs(disk)
        monitor_cpu(disk, seconds)


if __name__ == "__main__":
    main()
