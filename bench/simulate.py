"""Every policy side by side on every shipped trace, and the targets checked.

    python bench/simulate.py

For each trace (with the devices it is meant for) it prints the table of ``vramgate simulate --policy all`` and
checks: vramgate has 0 OOMs and 0 over-commits, completes at least as many requests as the best baseline, and
its makespan is within 10 % of the best baseline's that has no OOMs; on the mixed 8-GPU trace its p95 wait is at
most half of ``serial``'s. The vramgate policy runs twice, with earliest-finish placement (the default) and with
best fit, side by side; on the mixed traces earliest finish's makespan must be within 1.05x of the speed-aware
bound and its mean wait below best fit's. ``vramgate-cold`` (every run loads its weights) runs beside them: vramgate,
which keeps weights resident, must spend no more GPU time loading. For each trace it also prints the offered load:
the GPU time of vramgate's runs over the devices' time between the first and the last arrival (a steady trace must
stay below 1). It then measures the simulator's speed with the vramgate policy (simulated requests per second of
wall time, the best of three runs on this shared machine) on a larger generated trace, with the ``serial``
policy's speed measured alongside.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_trace import generate

from vramgate.simulate import compare, decode_trace, encode_trace, load_trace, parse_devices
from vramgate.simulate.metrics import PolicyResult
from vramgate.simulate.report import render_table
from vramgate.simulate.run import simulate

TRACES = (
    ("burst-24gb.jsonl", "RTX4090-24GB"),
    ("mixed-8xh100.jsonl", "8xH100-80GB"),
    ("day-diurnal.jsonl", "2xH100-80GB,RTX4090-24GB"),
    ("mixed-hetero.jsonl", "2xH100-80GB,2xRTX4090-24GB"),
    ("switch-2xh100.jsonl", "2xH100-80GB"),
)
PLACEMENTS = ("earliest_finish", "best_fit")


def check(name: str, results: list[PolicyResult]) -> list[str]:
    ours = next(r for r in results if r.policy == "vramgate:earliest_finish")
    best_fit = next(r for r in results if r.policy == "vramgate:best_fit")
    cold = next(r for r in results if r.policy == "vramgate-cold")
    baselines = [r for r in results if not r.policy.startswith("vramgate")]
    failures: list[str] = []
    print(
        f"residency: load GPU-s {ours.load_gpu_s:,.0f} ({ours.loads} loads) against {cold.load_gpu_s:,.0f} cold "
        f"({cold.loads}); makespan {ours.makespan_s:,.0f} s against {cold.makespan_s:,.0f} s; mean wait "
        f"{ours.mean_wait_s:,.0f} s against {cold.mean_wait_s:,.0f} s"
    )
    if ours.load_gpu_s > cold.load_gpu_s:
        failures.append(f"{name}: load GPU-s {ours.load_gpu_s:.0f} > vramgate-cold's {cold.load_gpu_s:.0f}")
    if name.startswith("mixed"):
        bound = ours.speed_bound_makespan_s
        print(
            f"makespan / speed-aware bound: earliest finish {ours.makespan_s / bound:.3f}, "
            f"best fit {best_fit.makespan_s / bound:.3f}; mean wait: earliest finish {ours.mean_wait_s:,.0f} s, "
            f"best fit {best_fit.mean_wait_s:,.0f} s"
        )
        if ours.makespan_s > 1.05 * bound:
            failures.append(f"{name}: makespan {ours.makespan_s:.0f} s > 1.05 x the speed-aware bound {bound:.0f} s")
        if ours.mean_wait_s > best_fit.mean_wait_s:
            failures.append(f"{name}: mean wait {ours.mean_wait_s:.0f} s > best fit's {best_fit.mean_wait_s:.0f} s")
    if ours.oom_events:
        failures.append(f"{name}: vramgate had {ours.oom_events} OOM events")
    if ours.overcommits:
        failures.append(f"{name}: vramgate over-committed {ours.overcommits} times")
    best = max(r.completed for r in baselines)
    if ours.completed < best:
        failures.append(f"{name}: vramgate completed {ours.completed} < best baseline {best}")
    clean = [r for r in baselines if r.oom_events == 0]
    if clean:
        fastest = min(clean, key=lambda r: r.makespan_s)
        if ours.makespan_s > 1.1 * fastest.makespan_s:
            failures.append(
                f"{name}: makespan {ours.makespan_s:.0f} s > 1.1 x {fastest.policy}'s {fastest.makespan_s:.0f} s"
            )
    if name.startswith("mixed-8"):
        serial = next(r for r in results if r.policy == "serial")
        if ours.p95_wait_s > 0.5 * serial.p95_wait_s:
            failures.append(f"{name}: p95 wait {ours.p95_wait_s:.0f} s > half of serial's {serial.p95_wait_s:.0f} s")
    return failures


def main() -> int:
    here = Path(__file__).resolve().parent / "traces"
    failures: list[str] = []
    for file, devices in TRACES:
        trace = load_trace(here / file)
        specs = parse_devices(devices)
        results = compare(trace, specs, seed=0, placements=PLACEMENTS)
        ours = next(r for r in results if r.policy == "vramgate:earliest_finish")
        span = trace.arrivals[-1].at - trace.arrivals[0].at if trace.arrivals else 0.0
        # The offered load means something only for arrivals spread over time (not for a burst).
        load = f", offered load {ours.useful_gpu_s / (len(specs) * span):.2f}" if span >= 3600 else ""
        print(f"\n## {file} on {devices} ({len(trace.arrivals)} requests, seed 0{load})\n")
        print(render_table(results, markdown=True))
        print()
        failures += check(file, results)
    # Speed: a large generated trace, vramgate and serial measured in the same run.
    big = decode_trace(encode_trace(generate("mixed", requests=20000, seed=9, rate=40.0, span=0.0, devices=0)))
    specs = parse_devices("8xH100-80GB")
    print("\n## simulator speed (20,000 requests, 8xH100-80GB)\n")
    for policy, placement in (("vramgate", None), ("vramgate", "best_fit"), ("serial", None)):
        walls = []
        for _ in range(3):
            started = time.perf_counter()
            result, _ = simulate(big, specs, policy, seed=0, placement=placement)
            walls.append(time.perf_counter() - started)
        wall = min(walls)
        label = policy if placement is None else f"{policy}:{placement}"
        print(
            f"{label:18} {result.requests / wall:10,.0f} simulated requests/s "
            f"(best of 3: {wall:.2f} s wall; worst {max(walls):.2f} s)"
        )
        if policy == "vramgate" and placement is None and result.requests / wall < 10_000:
            failures.append(f"speed: {result.requests / wall:,.0f} requests/s < 10,000")
    print()
    for failure in failures:
        print("TARGET MISSED:", failure)
    print("all targets met" if not failures else f"{len(failures)} target(s) missed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
