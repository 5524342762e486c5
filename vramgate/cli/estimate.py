"""``vramgate estimate``: peak VRAM per GPU, peak host RAM and time of one run, with their components.

Options given on the command line are what the run uses (flags not given are off), as with Wan2.2's
``generate.py``::

    vramgate estimate --model t2v-A14B --size 1280x720 --frames 81 --steps 40 --gpu H100-80GB \\
        --offload-model --convert-model-dtype
"""

from __future__ import annotations

import sys
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

from vramgate.cli._errors import bad_input
from vramgate.cli._request import build_request, positive
from vramgate.errors import VramgateError
from vramgate.messages import RUNNER_NAMES, ResourceRequirement
from vramgate.messages.codec import encode_json
from vramgate.policy.estimate import Estimator
from vramgate.policy.models import ModelCatalog


def _gib(mb: int) -> str:
    return f"{mb / 1024:.1f} GiB"


def _print(console: Console, req: ResourceRequirement, fits: bool, usable_mb: int, margin: float) -> None:
    table = Table(title=f"Estimate on {req.gpu} x{req.world_size}", title_justify="left")
    for col, justify in (("component", "left"), ("VRAM/GPU", "right"), ("host RAM", "right"), ("seconds", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_column("note")
    for c in req.components:
        table.add_row(
            c.name,
            _gib(c.vram_mb) if c.vram_mb else "",
            _gib(c.ram_mb) if c.ram_mb else "",
            f"{c.seconds:.1f}" if c.seconds else "",
            c.note,
        )
    table.add_row(
        "[bold]total[/]",
        f"[bold]{_gib(req.vram_mb)}[/]",
        f"[bold]{_gib(req.ram_mb)}[/]",
        f"[bold]{req.estimated_time_seconds:.1f}[/]",
        f"confidence {req.confidence:.2f}",
    )
    console.print(table)
    verdict = "[green]fits[/]" if fits else "[red]does not fit[/]"
    console.print(f"{verdict}: {req.vram_mb} MiB needed per GPU, {usable_mb} MiB usable ({margin:.0%} kept free)")


@click.command("estimate")
@click.option("--model", required=True, help="Model profile name (t2v-A14B, i2v-A14B, ti2v-5B or one from --profile).")
@click.option("--size", required=True, help="WIDTHxHEIGHT (or W*H), a multiple of the model's stride.")
@click.option("--frames", type=int, default=None, help="Frames, 4k+1 (default: the model's).")
@click.option("--steps", type=int, default=None, help="Sampling steps (default: the model's).")
@click.option("--gpu", required=True, help="GPU name from the catalog, or a size such as 24GB.")
@click.option("--gpus", type=int, default=None, help="World size of a multi-GPU run.")
@click.option("--offload-model", is_flag=True, default=None, help="Offload models to the CPU between stages.")
@click.option("--convert-model-dtype", is_flag=True, default=None, help="Cast the DiT to bf16.")
@click.option("--t5-cpu", is_flag=True, default=None, help="Keep and run the text encoder on the CPU.")
@click.option("--dit-fsdp", is_flag=True, default=None, help="Shard the DiT with FSDP.")
@click.option("--t5-fsdp", is_flag=True, default=None, help="Shard the text encoder with FSDP.")
@click.option("--ulysses", type=int, default=None, help="Sequence-parallel degree.")
@click.option("--vae-tiling", is_flag=True, default=None, help="Decode the VAE in spatial tiles.")
@click.option("--resident-blocks", type=int, default=None, help="Block offloading: DiT blocks kept on the GPU.")
@click.option("--sequential-offload", is_flag=True, default=None, help="Stream every DiT layer from the host.")
@click.option("--dit-dtype", type=click.Choice(["bf16", "fp16", "fp8"]), default=None, help="DiT weight dtype.")
@click.option("--task", type=click.Choice(["t2v", "i2v"]), default=None, help="Task (default: the model's).")
@click.option(
    "--runner",
    type=click.Choice(RUNNER_NAMES),
    default=None,
    help="Code that runs it (default generate.py): prices its activations.",
)
@click.option("--lora", type=int, default=0, show_default=True, help="Number of LoRA adapters.")
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Register a model profile from a JSON or TOML file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
def command(
    model: str,
    size: str,
    frames: int | None,
    steps: int | None,
    gpu: str,
    gpus: int | None,
    task: str | None,
    lora: int,
    profiles: tuple[str, ...],
    as_json: bool,
    **flags: Any,
) -> None:
    """Estimate peak VRAM per GPU, peak host RAM and time of one run, split into components.

    Exits 0 when the run fits the GPU, 1 when it does not, 2 on bad input.
    """
    positive("--gpus", gpus)
    positive("--ulysses", flags.get("ulysses"))
    if flags.get("resident_blocks") is not None and flags["resident_blocks"] < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--resident-blocks")
    options = {k: v for k, v in flags.items() if v is not None}
    if gpus is not None:
        options["gpus"] = gpus
    catalog = ModelCatalog()
    try:
        for path in profiles:
            catalog.load_file(path)
        estimator = Estimator(catalog)
        request = build_request(model, size, frames, steps, task, lora, options)
        spec = estimator.gpus.get(gpu)
        params = estimator.resolve(request)
        requirement = estimator.estimate(params, spec)
    except (VramgateError, OSError) as exc:
        raise bad_input(exc) from None
    fits = estimator.fits(requirement, spec)
    margin = estimator.constants.safety_margin_fraction
    usable = int(spec.memory_mib * (1.0 - margin))
    if as_json:
        out = {
            "model": params.model,
            "gpu": spec.name,
            "world_size": params.options.gpus,
            "vram_peak_mb": requirement.vram_mb,
            "ram_peak_mb": requirement.ram_mb,
            "seconds": round(requirement.estimated_time_seconds, 3),
            "confidence": requirement.confidence,
            "fits": fits,
            "usable_mb": usable,
            "components": {
                c.name: {"vram_mb": c.vram_mb, "ram_mb": c.ram_mb, "seconds": round(c.seconds, 3), "note": c.note}
                for c in requirement.components
            },
            "params": msgspec.to_builtins(params),
        }
        sys.stdout.write(encode_json(out).decode() + "\n")
    else:
        _print(Console(), requirement, fits, usable, margin)
    if not fits:
        sys.exit(1)
