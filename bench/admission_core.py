"""Admission core: decisions per second with 100 / 1,000 / 100,000 requests queued, and the memory of a
100,000-request queue, each against a plain ``heapq`` of the same (key, arrival, seq, request_id) tuples.

A decision is one ``AdmissionCore.handle`` call of a steady mix on 8 GPUs that are always full: a lease is
released (the head, and whatever may backfill, is admitted) and a new request of a random size arrives (it is
queued, or backfilled at once). The baseline does one ``heappush`` and one ``heappop`` per decision.

    python bench/admission_core.py
"""

from __future__ import annotations

import gc
import heapq
import random
import time
import tracemalloc
from collections import deque

from vramgate.messages import Plan, ResourceRequirement, RunParams
from vramgate.messages.admission import ReleaseLease, SubmitRequest
from vramgate.messages.lifecycle import RequestAdmitted
from vramgate.policy.admission import AdmissionConfig, AdmissionCore
from vramgate.policy.ledger import DeviceConfig

DEVICES = 8
CAPACITY = 81559
PARAMS = RunParams(model="t2v-A14B", task="t2v", width=1280, height=720, frames=81, steps=40)
SIZES = [8000, 16000, 24000, 40000, 60000, 77000]
PLANS = {
    size: Plan(
        params=PARAMS,
        requirement=ResourceRequirement(vram_mb=size, ram_mb=1024, estimated_time_seconds=size / 1000.0),
    )
    for size in SIZES
}


def make_core(queue_limit: int) -> AdmissionCore:
    devices = [DeviceConfig(index=i, gpu="H100-80GB", capacity_mb=CAPACITY) for i in range(DEVICES)]
    return AdmissionCore(devices, AdmissionConfig(queue_limit=queue_limit, stale_after_s=None))


def submits(count: int, rng: random.Random, start: int = 0, *, distinct_plans: bool = False) -> list[SubmitRequest]:
    out = []
    for i in range(start, start + count):
        size = rng.choice(SIZES)
        plan = PLANS[size]
        if distinct_plans:  # every request with its own plan objects, as the optimizer makes them
            plan = Plan(
                params=RunParams(**{f: getattr(PARAMS, f) for f in PARAMS.__struct_fields__}),
                requirement=ResourceRequirement(vram_mb=size, ram_mb=1024, estimated_time_seconds=size / 1000.0),
            )
        out.append(SubmitRequest(request_id=f"r{i}", plans={"*": plan}, priority=rng.randint(-5, 5)))
    return out


def fill(core: AdmissionCore, queued: int, rng: random.Random) -> tuple[deque[str], float]:
    """Fill the GPUs with leases, then queue ``queued`` requests. Returns the leases (oldest first) and now."""
    leases: deque[str] = deque()
    now = 0.0
    for message in submits(DEVICES * 2, rng, start=10_000_000):
        for event in core.handle(message, now):
            if isinstance(event, RequestAdmitted):
                leases.append(event.lease_id)
    for message in submits(queued, rng):
        now += 0.001
        for event in core.handle(message, now):
            if isinstance(event, RequestAdmitted):
                leases.append(event.lease_id)
    return leases, now


def decisions_per_second(queued: int, decisions: int = 20_000) -> tuple[float, int, int]:
    rng = random.Random(queued)
    core = make_core(queue_limit=queued * 2 + 100)
    leases, now = fill(core, queued, rng)
    arrivals = submits(decisions, rng, start=queued)
    lengths = []
    start = time.perf_counter()
    for i in range(decisions // 2):
        now += 0.01
        if leases:
            for event in core.handle(ReleaseLease(lease_id=leases.popleft()), now):
                if isinstance(event, RequestAdmitted):
                    leases.append(event.lease_id)
        for event in core.handle(arrivals[i], now):
            if isinstance(event, RequestAdmitted):
                leases.append(event.lease_id)
        if i % 1000 == 0:
            lengths.append(core.queue_length)
    elapsed = time.perf_counter() - start
    return decisions / elapsed, min(lengths), max(lengths)


def heapq_per_second(queued: int, decisions: int = 20_000) -> float:
    rng = random.Random(queued)
    heap = [(rng.random() - rng.randint(-5, 5), float(i), i, f"r{i}") for i in range(queued)]
    heapq.heapify(heap)
    start = time.perf_counter()
    for i in range(decisions // 2):
        heapq.heappush(heap, (rng.random() - rng.randint(-5, 5), float(queued + i), queued + i, f"r{queued + i}"))
        heapq.heappop(heap)
    return decisions / (time.perf_counter() - start)


def queue_memory(count: int, *, distinct_plans: bool) -> tuple[float, int]:
    rng = random.Random(7)
    messages = submits(count, rng, distinct_plans=distinct_plans)
    gc.collect()
    tracemalloc.start()
    core = make_core(queue_limit=count)
    whole = Plan(
        params=PARAMS, requirement=ResourceRequirement(vram_mb=CAPACITY - 4078, ram_mb=0, estimated_time_seconds=60.0)
    )
    for i in range(DEVICES):  # every GPU taken whole, so that every request waits
        core.handle(SubmitRequest(request_id=f"full{i}", plans={"*": whole}), 0.0)
    for message in messages:
        core.handle(message, 1.0)
    assert core.queue_length == count, core.queue_length
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current / 2**20, core.queue_length


def message_memory(count: int, *, distinct_plans: bool) -> float:
    gc.collect()
    tracemalloc.start()
    messages = submits(count, random.Random(7), distinct_plans=distinct_plans)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del messages
    return current / 2**20


def heapq_memory(count: int) -> float:
    rng = random.Random(7)
    gc.collect()
    tracemalloc.start()
    heap: list[tuple[float, float, int, str]] = []
    for i in range(count):
        heapq.heappush(heap, (0.001 * i - rng.randint(-5, 5), 0.001 * i, i, f"r{i}"))
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current / 2**20


def main() -> None:
    print(f"decisions per second ({DEVICES} full GPUs, release + arrival mix, backfill depth 256)")
    for queued in (100, 1_000, 100_000):
        rate, low, high = decisions_per_second(queued)
        base = heapq_per_second(queued)
        print(
            f"  {queued:>7,} queued: core {rate:>9,.0f}/s   heapq baseline {base:>10,.0f}/s   "
            f"ratio {base / rate:5.1f}x   (queue length {low:,}-{high:,})"
        )
    count = 100_000
    core_mb, _ = queue_memory(count, distinct_plans=False)
    heap_mb = heapq_memory(count)
    print(f"memory of {count:,} queued requests (tracemalloc)")
    print(
        f"  core structures: {core_mb:6.1f} MiB   heapq of the same tuples: {heap_mb:6.1f} MiB   "
        f"ratio {core_mb / heap_mb:4.1f}x"
    )
    distinct_mb, _ = queue_memory(count, distinct_plans=True)
    messages_mb = message_memory(count, distinct_plans=True)
    print(
        f"  with a distinct plan per request: core {distinct_mb:6.1f} MiB + the submit messages "
        f"{messages_mb:6.1f} MiB = {distinct_mb + messages_mb:6.1f} MiB (limit 200 MB)"
    )


if __name__ == "__main__":
    main()
