"""Gate throughput: full submit -> admitted -> released cycles, against raw anyio hops, and a 100,000-deep queue.

    python bench/admission.py [--cycles 20000] [--clients 100] [--queue 100000] [--backend asyncio|trio]

Prints, from one run:
* cycles per second through the gate with ``--clients`` concurrent clients on a simulated device that always fits
  (``async with gate.admit(request): pass``), and the decision latency (submit -> lease) p50/p99; the admission
  core's time for each submit comes from a second run of the same cycles, timed call by call;
* the same number of hops over raw anyio memory object streams (one hop = one send and one receive), so the
  cost of the actors, the messages and the decisions shows as a ratio;
* the memory (tracemalloc) of a gate holding ``--queue`` waiting requests on a device that is full.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc

import anyio
import msgspec

from vramgate.clock import ManualClock
from vramgate.config import AdmissionSettings, CleanupConfig, DevicesConfig, GateConfig, MonitorConfig
from vramgate.gate import open_gate
from vramgate.hardware import SimulatedGpu, detect
from vramgate.messages import GenerationRequest, Message
from vramgate.messages.admission import SubmitRequest

REQUEST = GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=121, steps=50)


def _config(queue_limit: int) -> GateConfig:
    return GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=1.0),
        admission=AdmissionSettings(queue_limit=queue_limit, ram_budget="4TiB", backfill=True),
        cleanup=CleanupConfig(after_run=False),
    )


async def raw_hops(hops: int, clients: int) -> float:
    """Seconds for ``hops`` messages through anyio streams, ``clients`` senders into one receiver."""
    send, receive = anyio.create_memory_object_stream[int](1024)
    per_client = hops // clients

    async def sender(stream: anyio.abc.ObjectSendStream[int]) -> None:
        async with stream:
            for i in range(per_client):
                await stream.send(i)

    async def receiver() -> None:
        async with receive:
            async for _ in receive:
                pass

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(receiver)
        async with send:
            for _ in range(clients):
                tg.start_soon(sender, send.clone())
    return time.perf_counter() - started


async def gate_cycles(
    cycles: int, clients: int, *, time_decisions: bool = False
) -> tuple[float, list[float], list[float], int]:
    """Seconds for ``cycles`` admit/release cycles; submit->lease latencies; with ``time_decisions``, the admission
    core's decision time for each submit (timing them costs the cycle time of its own); messages the system sent."""
    clock = ManualClock()
    devices = detect((SimulatedGpu("1000000GB", index=0, clock=clock),), nvml=False, torch=False, host=False)
    latencies: list[float] = []
    decisions: list[float] = []
    per_client = cycles // clients
    async with open_gate(_config(queue_limit=clients * 2), clock=clock, devices=devices) as gate:
        core = gate.admission_core
        assert core is not None
        assert gate.system is not None
        handle = core.handle

        def timed(message: Message, now: float) -> list[Message]:
            started = time.perf_counter()
            out = handle(message, now)
            if isinstance(message, SubmitRequest):
                decisions.append(time.perf_counter() - started)
            return out

        if time_decisions:
            core.handle = timed  # type: ignore[method-assign]
        async with gate.admit(REQUEST):  # warm the plan cache and the code paths
            pass
        await gate.wait_idle()
        first_seq = gate.system.statistics().last_seq

        async def client() -> None:
            for _ in range(per_client):
                started = time.perf_counter()
                async with gate.admit(REQUEST):
                    latencies.append(time.perf_counter() - started)

        gc.collect()
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(client)
        await gate.wait_idle()
        elapsed = time.perf_counter() - started
        messages = gate.system.statistics().last_seq - first_seq
    return elapsed, latencies, decisions[1:], messages


async def queue_memory(depth: int) -> tuple[float, float, int]:
    """MiB traced while ``depth`` requests wait on a full device (gate, tickets, core); seconds to fill. The device is
    full with the gate's own leases (memory that comes free when they end), so every request queues behind them."""
    clock = ManualClock()
    device = SimulatedGpu("24GB", index=0, clock=clock)
    devices = detect((device,), nvml=False, torch=False, host=False)
    async with open_gate(_config(queue_limit=depth + 10), clock=clock, devices=devices) as gate:
        leases = [await (await gate.submit(REQUEST)).wait_admitted()]
        while True:  # hold leases until the next request would wait
            ticket = gate.submit_nowait(REQUEST)
            if await ticket.wait_placed() != "admitted":
                break
            leases.append(await ticket.wait_admitted())
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        for i in range(depth - 1):
            gate.submit_nowait(msgspec.structs.replace(REQUEST, priority=i % 7))
            if i % 1000 == 999:
                await gate.wait_idle()
        await gate.wait_idle()
        fill_s = time.perf_counter() - started
        queued = gate.queue_length
        gc.collect()
        used = (tracemalloc.get_traced_memory()[0] - base) / 2**20
        tracemalloc.stop()
        for lease in leases:
            await gate.shell.finish(lease, None)
    return used, fill_s, queued


async def main(args: argparse.Namespace) -> None:
    _, alone, _, _ = await gate_cycles(2000, 1)
    elapsed, latencies, _, messages = await gate_cycles(args.cycles, args.clients)
    _, _, decisions, _ = await gate_cycles(args.cycles, args.clients, time_decisions=True)
    hops_per_cycle = messages / args.cycles
    raw = await raw_hops(messages, args.clients)
    done = len(latencies)
    latencies.sort()
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[int(0.99 * (done - 1))] * 1e3
    print(f"backend: {args.backend}")
    print(
        f"gate: {done} admit/release cycles, {args.clients} clients: {done / elapsed:,.0f} cycles/s "
        f"({elapsed / done * 1e6:.0f} us/cycle; target >= 10,000 cycles/s)"
    )
    decisions.sort()
    alone.sort()
    print(
        f"admission decision (the core handling a submit): p50 {statistics.median(decisions) * 1e3:.3f} ms, "
        f"p99 {decisions[int(0.99 * (len(decisions) - 1))] * 1e3:.3f} ms (target p99 < 2 ms)"
    )
    print(
        f"submit -> lease, one client: p50 {statistics.median(alone) * 1e3:.2f} ms, "
        f"p99 {alone[int(0.99 * (len(alone) - 1))] * 1e3:.2f} ms; with {args.clients} clients (queueing "
        f"behind each other): p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
    print(
        f"raw anyio streams, the same {messages:,} hops ({hops_per_cycle:.1f} per cycle): "
        f"{raw / messages * 1e6:.2f} us/hop, {raw / elapsed:.0%} of the gate's time "
        f"(gate/raw = {elapsed / raw:.1f}x)"
    )
    if args.queue:
        used, fill_s, queued = await queue_memory(args.queue)
        print(
            f"queue: {queued:,} waiting requests hold {used:.1f} MiB (target < 200 MB); "
            f"filled in {fill_s:.1f} s ({queued / fill_s:,.0f} submits/s)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--queue", type=int, default=100_000)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    arguments = parser.parse_args()
    anyio.run(main, arguments, backend=arguments.backend)
