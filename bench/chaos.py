"""The reliability campaign: one million simulated requests under every fault (minutes; not in CI).

    python bench/chaos.py                      # 1,000,000 requests in 20 chunks of 50,000
    python bench/chaos.py --requests 10000     # what CI runs (tests/simulate/test_chaos.py)

Prints the requests, the faults injected by kind, and the invariants: over-commits, leaked leases, requests
without exactly one terminal state, and divergences on replay (each run again with the same seed must give the
same events, byte for byte). All four must be 0; the exit status is 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_trace import generate

from vramgate.simulate import decode_trace, encode_trace, parse_devices
from vramgate.simulate.chaos import ChaosReport, campaign
from vramgate.simulate.faults import ALL_FAULTS, parse_faults

DEVICES = "6xH100-80GB,2xRTX4090-24GB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=50_000, help="requests per trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", default="all")
    parser.add_argument("--devices", default=DEVICES)
    args = parser.parse_args(argv)
    devices = parse_devices(args.devices)
    chunk = min(args.chunk, args.requests)
    chunks = max(1, args.requests // chunk)
    rate = 40.0 * len(devices) / 8  # about 70 % of what the devices can do

    def make(seed: int):  # type: ignore[no-untyped-def]
        return decode_trace(encode_trace(generate("mixed", requests=chunk, seed=seed, rate=rate, span=0.0, devices=0)))

    def progress(index: int, report: ChaosReport) -> None:
        print(f"  chunk {index + 1}/{chunks}: {report.requests:,} requests, {report.wall_s:.0f} s", file=sys.stderr)

    spec = parse_faults(args.faults) if args.faults != "all" else ALL_FAULTS
    report = campaign(make, devices, chunks=chunks, seed=args.seed, faults=spec, progress=progress)
    print(f"requests:                 {report.requests:,} ({report.chunks} traces on {args.devices}, seed {args.seed})")
    print("faults injected:")
    for kind, count in sorted(report.faults.items()):
        print(f"  {kind:22} {count:,}")
    print(f"terminal states:          {dict(sorted(report.states.items()))}")
    print(f"OOM events:               {report.oom_events:,} (from injected faults)")
    print(f"over-commits:             {report.overcommits}")
    print(f"leaked leases:            {report.leaked_leases}")
    print(f"not exactly one terminal: {report.terminal_violations}")
    print(f"divergences on replay:    {report.divergences}")
    print(
        f"wall time:                {report.wall_s:.1f} s (both runs), "
        f"{2 * report.requests / max(report.wall_s, 1e-9):,.0f} simulated requests/s"
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
