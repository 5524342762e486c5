"""Every memory figure of the estimator on a grid of requests, for the snapshot in ``data/memory_grid.json``.

The time model may change; the memory model must not move by a byte when it does. Regenerate the snapshot only
for a deliberate change of the memory model::

    PYTHONPATH=. python tests/policy/memory_grid.py > tests/policy/data/memory_grid.json
"""

from __future__ import annotations

import itertools
import sys

import msgspec

from vramgate.messages import ResolvedOptions, RunParams
from vramgate.policy.estimate import Estimator

GPUS = ("H100-80GB", "A100-40GB", "L40S-48GB", "RTX4090-24GB", "RTX3060-12GB")
SIZES = ((832, 480, 81, 40), (1280, 704, 121, 50), (1280, 720, 49, 30))
OPTIONS = (
    ResolvedOptions(),
    ResolvedOptions(offload_model=True, convert_model_dtype=True),
    ResolvedOptions(offload_model=True, convert_model_dtype=True, t5_cpu=True, vae_tiling=True),
    ResolvedOptions(resident_blocks=10, dit_dtype="fp8"),
    ResolvedOptions(sequential_offload=True, runner="diffusers"),
    ResolvedOptions(gpus=4, ulysses=4, dit_fsdp=True, t5_fsdp=True),
    ResolvedOptions(gpus=2, ulysses=2, offload_model=True, convert_model_dtype=True, t5_cpu=True),
    ResolvedOptions(gpus=8, ulysses=4, dit_fsdp=True, offload_model=True),
)
MODELS = (("t2v-A14B", "t2v"), ("i2v-A14B", "i2v"), ("ti2v-5B", "t2v"), ("ti2v-5B", "i2v"), ("wan2.1-t2v-1.3B", "t2v"))
MEMORY_FIELDS = (
    "peak_phase",
    "activation_peak",
    "dit_weights",
    "lora",
    "text_encoder",
    "vae_weights",
    "activations",
    "vae_work",
    "runtime",
    "ram_weights",
    "ram_runtime",
    "tokens",
    "tokens_per_gpu",
)


def memory_figures() -> dict[str, dict[str, object]]:
    """Breakdown memory fields (as ``repr`` of the float, so the comparison is exact) and the requirement's MiB."""
    est = Estimator()
    out: dict[str, dict[str, object]] = {}
    grid = itertools.product(MODELS, SIZES, enumerate(OPTIONS), GPUS)
    for (model, task), (w, h, frames, steps), (index, options), gpu in grid:
        if model == "ti2v-5B" and (w % 32 or h % 32):
            continue
        params = RunParams(model=model, task=task, width=w, height=h, frames=frames, steps=steps, options=options)
        if options.ulysses > 1 and est.profile(model).dit.heads % options.ulysses:
            continue
        b = est.breakdown(params, gpu)
        req = est.estimate(params, gpu)
        key = f"{model} {task} {w}x{h}x{frames} {gpu} options#{index}"
        entry: dict[str, object] = {name: repr(getattr(b, name)) for name in MEMORY_FIELDS}
        entry["vram_mb"] = req.vram_mb
        entry["ram_mb"] = req.ram_mb
        # the parts that hold memory (a part that only takes time may come or go with the time model)
        entry["components"] = [[c.name, c.vram_mb, c.ram_mb] for c in req.components if c.vram_mb or c.ram_mb]
        out[key] = entry
    return out


if __name__ == "__main__":
    enc = msgspec.json.encode
    lines = [f"{enc(key).decode()}: {enc(value).decode()}" for key, value in memory_figures().items()]
    sys.stdout.write("{\n" + ",\n".join(lines) + "\n}\n")
