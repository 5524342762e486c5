"""Generate simulator traces (JSON Lines), seeded: the same arguments always write the same bytes.

    python bench/gen_trace.py --kind mixed --requests 600 --seed 1 --rate 33 > bench/traces/mixed-8xh100.jsonl

The shipped steady trace arrives at 33 requests per hour on 8 H100s: the vramgate policy's plans for this mix take
612 GPU-seconds per request on average (``python bench/simulate.py`` prints the offered load), so 8 GPUs serve
about 47 an hour and 33 is about 75 % of that, a load that is sustainable (any rate at or above capacity makes
every policy that completes everything queue without bound).

Kinds: ``burst`` (every request within the first ``--span`` seconds), ``mixed`` (steady Poisson arrivals at
``--rate`` per hour), ``day`` (24 h of Poisson arrivals whose rate follows a diurnal curve peaking in the
afternoon, with outside consumers on ``--devices`` devices), ``switch`` (model switching: Poisson arrivals at
``--rate`` per hour of short previews, in sessions of one to four requests for the same model, the model drawn
anew for each session). Half of the requests of the other kinds pin the flags the Wan2.2 README gives for one GPU
(``--offload_model True --convert_model_dtype``, plus ``--t5_cpu`` for TI2V-5B), as operators do; the rest, and
every preview, leave the options to the server.

    python bench/gen_trace.py --kind switch --requests 200 --seed 7 --rate 60 > bench/traces/switch-2xh100.jsonl
"""

from __future__ import annotations

import argparse
import math
import random
import sys

from vramgate.messages.requests import GenerationRequest, LoraSpec, RunOptions
from vramgate.messages.trace import Arrival, Outside, TraceLine
from vramgate.simulate.trace import encode_trace

#: (model, task, sizes (w, h)) with the sizes each model supports, and how often it is asked for.
MODELS = (
    ("t2v-A14B", "t2v", ((832, 480), (1280, 720)), 0.4),
    ("i2v-A14B", "i2v", ((832, 480), (1280, 720)), 0.3),
    ("ti2v-5B", "t2v", ((1280, 704),), 0.3),
)
A14B_FLAGS = RunOptions(offload_model=True, convert_model_dtype=True)
TI2V_FLAGS = RunOptions(offload_model=True, convert_model_dtype=True, t5_cpu=True)


#: The presets a service offers: clip lengths, quality (steps) and LoRA styles (name, rank).
FRAMES = (49, 81, 121)
STEPS = (30, 40, 50)
STYLES = (("anime", 32), ("film-grain", 16), ("watercolor", 64), ("product-shot", 32))


def request(rng: random.Random, index: int) -> GenerationRequest:
    weights = [m[3] for m in MODELS]
    model, task, sizes, _ = rng.choices(MODELS, weights=weights)[0]
    width, height = rng.choice(sizes)
    lora: tuple[LoraSpec, ...] = ()
    if rng.random() < 0.3:
        name, rank = rng.choice(STYLES)
        lora = (LoraSpec(name=name, rank=rank),)
    pinned = None
    if rng.random() < 0.5:
        pinned = TI2V_FLAGS if model == "ti2v-5B" else A14B_FLAGS
    return GenerationRequest(
        model=model,
        task=task,  # type: ignore[arg-type]
        width=width,
        height=height,
        frames=rng.choice(FRAMES),
        steps=rng.choice(STEPS),
        lora=lora,
        request_id=f"req-{index:06d}",
        priority=rng.choice((0, 0, 0, 1, 2)),
        max_level=rng.choice(("basic", "basic", "basic", "aggressive")),
        options=pinned,
    )


def preview(rng: random.Random, index: int, model: str) -> GenerationRequest:
    """A short preview of ``model``: its smallest size, 49 or 81 frames, 20 or 30 steps, options left to the server."""
    task, sizes = next((task, sizes) for name, task, sizes, _ in MODELS if name == model)
    width, height = sizes[0]
    return GenerationRequest(
        model=model,
        task=task,  # type: ignore[arg-type]
        width=width,
        height=height,
        frames=rng.choice((49, 81)),
        steps=rng.choice((20, 30)),
        request_id=f"req-{index:06d}",
        priority=rng.choice((0, 0, 1)),
        max_level="basic",
    )


def diurnal(t: float) -> float:
    """Relative load over a day: low at night, peaks around 11:00 and 16:00."""
    hour = (t / 3600.0) % 24.0
    return 0.15 + math.exp(-(((hour - 11.0) / 2.0) ** 2)) + 1.2 * math.exp(-(((hour - 16.0) / 2.5) ** 2))


def generate(kind: str, *, requests: int, seed: int, rate: float, span: float, devices: int) -> list[TraceLine]:
    rng = random.Random(seed)
    lines: list[TraceLine] = []
    if kind == "burst":
        for i in range(requests):
            lines.append(Arrival(at=round(rng.uniform(0.0, span), 3), request=request(rng, i)))
    elif kind == "mixed":
        t = 0.0
        for i in range(requests):
            t += rng.expovariate(rate / 3600.0)
            lines.append(Arrival(at=round(t, 3), request=request(rng, i)))
    elif kind == "day":
        peak = max(diurnal(h * 60.0) for h in range(24 * 60))
        t, i = 0.0, 0
        while i < requests and t < 86400.0:
            t += rng.expovariate(rate * peak / 3600.0)
            if rng.random() < diurnal(t) / peak:  # thinning: a Poisson process with the diurnal rate
                lines.append(Arrival(at=round(t, 3), request=request(rng, i)))
                i += 1
        for device in range(devices):
            t = rng.uniform(0.0, 7200.0)
            while t < 86400.0:
                until = t + rng.uniform(600.0, 5400.0)
                lines.append(
                    Outside(at=round(t, 3), device=device, mb=rng.choice((2048, 4096, 6144)), until=round(until, 3))
                )
                t = until + rng.uniform(1800.0, 14400.0)
    elif kind == "switch":
        t, i = 0.0, 0
        weights = [m[3] for m in MODELS]
        while i < requests:
            model = rng.choices(MODELS, weights=weights)[0][0]
            for _ in range(min(rng.randint(1, 4), requests - i)):
                t += rng.expovariate(rate / 3600.0)
                lines.append(Arrival(at=round(t, 3), request=preview(rng, i, model)))
                i += 1
    else:
        raise SystemExit(f"unknown kind {kind!r} (burst, mixed, day, switch)")
    lines.sort(key=lambda r: r.at)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("burst", "mixed", "day", "switch"), required=True)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=60.0, help="arrivals per hour (mixed; peak for day)")
    parser.add_argument("--span", type=float, default=60.0, help="seconds over which a burst arrives")
    parser.add_argument("--devices", type=int, default=1, help="devices that get outside consumers (day)")
    args = parser.parse_args(argv)
    lines = generate(
        args.kind, requests=args.requests, seed=args.seed, rate=args.rate, span=args.span, devices=args.devices
    )
    sys.stdout.buffer.write(encode_trace(lines))


if __name__ == "__main__":
    main()
