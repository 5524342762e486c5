"""Admission core: decisions per second with 100 / 1,000 / 100,000 requests queued, and the memory of a
100,000-request queue, each against a plain ``heapq`` of the same (key, arrival, seq, request_id) tuples.

A decision is one ``AdmissionCore.handle`` call of a steady mix on 8 GPUs that are always full: a lease is
released (the head, and whatever may backfill, is admitted) and a new request of a random size arrives (it is
queued, or backfilled at once). The baseline does one ``heappush`` and one ``heappop`` per decision.

    python bench/admission_core.py
    python bench/admission_core.py --compare [--base d54f622] [--cycles 2000] [--rounds 3]

``--compare`` prints instead the core's cost of one cycle (a ``ReleaseLease`` and a ``SubmitRequest`` handled) with
100 leases running on one large device and nothing waiting, and with 1,000 and 10,000 requests waiting on 8 full
GPUs, for this tree and for the base commit's code (checked out into a temporary ``git worktree``), each in a
subprocess, the two alternating ``--rounds`` times (the best round of each counts), with the ratio; and a digest of
every event the cores returned, which must be the same for both: the same decisions, in the same order.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import heapq
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import deque
from pathlib import Path

import msgspec

from vramgate.messages import Message, Plan, ResourceRequirement, RunParams
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


def _digest(seen: list[list[Message]]) -> str:
    """A digest of every event, in order (worked out after the timing)."""
    digest = hashlib.sha256()
    for events in seen:
        digest.update(msgspec.json.encode(events))
    return digest.hexdigest()


def _handle(core: AdmissionCore, message: Message, now: float, leases: deque[str], seen: list[list[Message]]) -> None:
    events = core.handle(message, now)
    seen.append(events)
    for event in events:
        if isinstance(event, RequestAdmitted):
            leases.append(event.lease_id)


def cycle_cost_running(running: int, cycles: int) -> tuple[float, str]:
    """Seconds per cycle with ``running`` leases on one device that takes them all and nothing waiting (the gate's
    case: each submit is admitted at once), and the digest of the events."""
    seen: list[list[Message]] = []
    device = DeviceConfig(index=0, gpu="H100-80GB", capacity_mb=100 * running * max(SIZES))
    core = AdmissionCore([device], AdmissionConfig(queue_limit=2 * running, stale_after_s=None))
    rng = random.Random(running)
    leases: deque[str] = deque()
    now = 0.0
    for message in submits(running, rng, start=10_000_000):
        now += 0.001
        _handle(core, message, now, leases, seen)
    arrivals = submits(cycles, rng)
    gc.collect()
    start = time.perf_counter()
    for message in arrivals:
        now += 0.001
        _handle(core, ReleaseLease(lease_id=leases.popleft()), now, leases, seen)
        _handle(core, message, now, leases, seen)
    elapsed = time.perf_counter() - start
    assert core.running == running, core.running
    assert core.queue_length == 0, core.queue_length
    return elapsed / cycles, _digest(seen)


def cycle_cost_queued(queued: int, cycles: int) -> tuple[float, str]:
    """Seconds per cycle with ``queued`` requests waiting on 8 full GPUs (as :func:`decisions_per_second`), and the
    digest of the events."""
    seen: list[list[Message]] = []
    rng = random.Random(queued)
    core = make_core(queue_limit=queued * 2 + 100)
    leases, now = fill(core, queued, rng)
    arrivals = submits(cycles, rng, start=queued)
    gc.collect()
    start = time.perf_counter()
    for message in arrivals:
        now += 0.01
        if leases:
            _handle(core, ReleaseLease(lease_id=leases.popleft()), now, leases, seen)
        _handle(core, message, now, leases, seen)
    elapsed = time.perf_counter() - start
    return elapsed / cycles, _digest(seen)


CASES = ("100 running, 0 waiting", "1,000 waiting", "10,000 waiting")


def cycle_costs(cycles: int) -> dict[str, tuple[float, str]]:
    return {
        CASES[0]: cycle_cost_running(100, cycles),
        CASES[1]: cycle_cost_queued(1_000, cycles),
        CASES[2]: cycle_cost_queued(10_000, cycles),
    }


def _in_tree(tree: Path, cycles: int) -> dict[str, tuple[float, str]]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VRAMGATE_")}, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, __file__, "--costs-json", "--cycles", str(cycles)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, list[float | str]] = json.loads(done.stdout)
    return {case: (float(cost), str(digest)) for case, (cost, digest) in result.items()}


def compare(base: str, cycles: int, rounds: int) -> int:
    root = Path(__file__).resolve().parent.parent
    print(f"admission core, one cycle (ReleaseLease + SubmitRequest), {cycles:,} cycles, best of {rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="vramgate-admcore-") as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), base], cwd=root, check=True,
                       capture_output=True)  # fmt: skip
        try:
            now: list[dict[str, tuple[float, str]]] = []
            before: list[dict[str, tuple[float, str]]] = []
            for _ in range(rounds):
                now.append(_in_tree(root, cycles))
                before.append(_in_tree(tree, cycles))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=root, check=False)
    same = True
    for case in CASES:
        mine = min(r[case][0] for r in now)
        theirs = min(r[case][0] for r in before)
        digests = {r[case][1] for r in now + before}
        same = same and len(digests) == 1
        print(
            f"  {case:<24} this tree {mine * 1e6:8.1f} us   baseline {base} {theirs * 1e6:8.1f} us   "
            f"{theirs / mine:5.1f}x faster   events {'the same' if len(digests) == 1 else 'DIFFER'}"
        )
    return 0 if same else 1


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", action="store_true", help="the cost of a cycle against --base")
    parser.add_argument("--base", default="d54f622", help="the baseline's commit (with --compare)")
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--costs-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.costs_json:
        print(json.dumps(cycle_costs(args.cycles)))
    elif args.compare:
        raise SystemExit(compare(args.base, args.cycles, args.rounds))
    else:
        main()
