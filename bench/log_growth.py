"""How fast the message log grows: bytes per idle hour, and bytes per rejected request against its body; and
what writing each record at once costs.

    python bench/log_growth.py [--idle-s 3600] [--rejected 50] [--prompt-chars 4000] [--records 50000]

A gate on one simulated H100 with the monitor at its default 2 Hz, on a virtual clock. Each figure is measured
twice in the same run: with the recorder as shipped, and with ``Recorder(compact=False)`` (every sample and
every prompt written in full, as the log did before; the baseline). Each log is replayed, and must replay
identically. The write cost is the recorder writing records to a file, one write each, against encoding the
same records into memory (what a buffered recorder pays until it flushes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anyio
import msgspec

from vramgate.actors import Envelope, Recorder
from vramgate.clock import ManualClock
from vramgate.config import AdmissionSettings, DevicesConfig, GateConfig
from vramgate.errors import DoesNotFit
from vramgate.gate import open_gate
from vramgate.hardware import detect
from vramgate.messages import GenerationRequest, LogHeader, RequestQueued, encode_json, log_line_codec
from vramgate.replay import replay

CONFIG = GateConfig(devices=DevicesConfig(use_real_gpus=False), admission=AdmissionSettings(ram_budget="256GiB"))
TICK_S = CONFIG.monitor.interval_s


async def idle(path: Path, seconds: float, *, compact: bool) -> int:
    """Log bytes written by a gate that stays idle for ``seconds`` of its clock."""
    clock = ManualClock()
    devices = detect(("H100-80GB",), nvml=False, torch=False, clock=clock)
    try:
        async with open_gate(CONFIG, clock=clock, devices=devices, recorder=Recorder(path, compact=compact)) as gate:
            for _ in range(round(seconds / TICK_S)):
                clock.advance(TICK_S)
                await anyio.wait_all_tasks_blocked()
                await gate.wait_idle()
    finally:
        devices.close()
    return _size(path)


def _size(path: Path) -> int:
    return path.stat().st_size


async def rejected(path: Path, requests: list[GenerationRequest], *, compact: bool) -> tuple[int, int]:
    """Log bytes of a gate's start alone, and with ``requests`` (each fits no GPU, so each is rejected)."""
    clock = ManualClock()
    devices = detect(("H100-80GB",), nvml=False, torch=False, clock=clock)
    try:
        async with open_gate(CONFIG, clock=clock, devices=devices, recorder=Recorder(path, compact=compact)) as gate:
            await gate.wait_idle()
            start = _size(path)
            for request in requests:
                ticket = await gate.submit(request)
                try:
                    await ticket.wait_admitted()
                except DoesNotFit:
                    pass
                else:
                    raise AssertionError("the request was expected not to fit")
                await gate.wait_idle()
            end = _size(path)
    finally:
        devices.close()
    return start, end


def write_cost(path: Path, count: int) -> tuple[float, float]:
    """Seconds per record: the recorder writing to ``path``, and encoding the same records into memory."""
    envelopes = [
        Envelope(i, i * 0.001, "gate", "admission", RequestQueued(request_id=f"r{i}", position=1))
        for i in range(1, count + 1)
    ]
    encode = log_line_codec().encode_json
    start = time.perf_counter()
    buffer = bytearray()
    for envelope in envelopes:
        buffer += encode(envelope.to_record())
        buffer += b"\n"
    encoded = (time.perf_counter() - start) / count
    recorder = Recorder(path)
    recorder.start(LogHeader())
    start = time.perf_counter()
    for envelope in envelopes:
        recorder.record(envelope)
    written = (time.perf_counter() - start) / count
    recorder.close()
    return written, encoded


def check(path: Path) -> None:
    result = replay(path)
    if not result.identical:
        raise SystemExit(f"{path.name}: {result.summary()}")


async def run(args: argparse.Namespace) -> None:
    scene = "a slow pan across a rain-soaked neon street at night, reflections, volumetric fog; " * 200

    def request(i: int) -> GenerationRequest:
        prompt = f"take {i}: {scene}"[: args.prompt_chars]
        return GenerationRequest(
            model="t2v-A14B", width=1280, height=720, frames=241, steps=40, max_level="none", prompt=prompt
        )

    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        hours = args.idle_s / 3600
        print(f"idle gate, 1 simulated H100, samples every {TICK_S:g} s, {args.idle_s:g} s of virtual time")
        sizes = {}
        for compact in (False, True):
            path = base / f"idle-{compact}.jsonl"
            sizes[compact] = await idle(path, args.idle_s, compact=compact) / hours
            check(path)
        print(f"  baseline (every sample in full)  {sizes[False] / 1e6:8.2f} MB per idle hour  ", end="")
        print(f"({sizes[False] * 24 / 1e9:.2f} GB a day)")
        print(f"  vramgate                         {sizes[True] / 1e6:8.2f} MB per idle hour  ", end="")
        print(f"({sizes[True] * 24 / 1e6:.0f} MB a day, x{sizes[False] / sizes[True]:.1f} less)")
        short = msgspec.structs.replace(request(0), prompt="")
        print(f"{args.rejected} rejected requests (1280x720, 241 frames, max_level none: they fit no catalog GPU)")
        for case, requests in (
            (f"{args.prompt_chars:,}-character prompts, all distinct", [request(i) for i in range(args.rejected)]),
            (f"one {args.prompt_chars:,}-character prompt resubmitted", [request(0)] * args.rejected),
            ("no prompt", [short] * args.rejected),
        ):
            body = len(encode_json(requests[0]))
            per = {}
            for compact in (False, True):
                path = base / f"rejected-{len(per)}-{case[:3]}-{compact}.jsonl"
                start, end = await rejected(path, requests, compact=compact)
                per[compact] = (end - start) / args.rejected
                check(path)
            print(f"  {case} (body {body:,} bytes):")
            for compact, name in ((False, "baseline (everything in full)"), (True, "vramgate")):
                print(f"    {name:32} {per[compact]:9,.0f} bytes per request  ({per[compact] / body:.1f}x its body)")
        best = min((write_cost(base / f"cost-{i}.jsonl", args.records) for i in range(3)), key=lambda c: c[0])
        print(f"writing {args.records:,} records, best of 3")
        print(f"  encoding into memory (baseline)  {best[1] * 1e6:6.2f} us per record")
        print(f"  recorder, one write each         {best[0] * 1e6:6.2f} us per record  ", end="")
        print(f"(+{(best[0] - best[1]) * 1e6:.2f} us)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-s", type=float, default=3600.0, help="virtual seconds of idling (default 1 hour)")
    parser.add_argument("--rejected", type=int, default=50)
    parser.add_argument("--prompt-chars", type=int, default=4000)
    parser.add_argument("--records", type=int, default=50_000)
    anyio.run(run, parser.parse_args(argv), backend="trio")  # asyncio's idle ticks wait ~0.1 s of real time


if __name__ == "__main__":
    main()
