"""``vramgate optimize``: the plan with the least quality loss that fits a GPU and the host's RAM."""

from __future__ import annotations

import sys
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

from vramgate.cli._errors import bad_input
from vramgate.cli._request import build_request
from vramgate.errors import VramgateError
from vramgate.messages import Plan
from vramgate.messages.requests import LEVELS, RUNNER_NAMES, OptimizationLevel
from vramgate.policy._explain import fmt_mb, fmt_seconds
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG, GpuSpec
from vramgate.policy.models import ModelCatalog
from vramgate.policy.optimize import Optimizer, summary


def generate_flags(plan: Plan) -> str:
    """The run options of a plan as Wan2.2 ``generate.py`` flags (block/sequential offload and tiling as notes)."""
    p = plan.params
    o = p.options
    flags = [
        f"--task {p.model}",
        f"--size {p.width}*{p.height}",
        f"--frame_num {p.frames}",
        f"--sample_steps {p.steps}",
    ]
    flags.append(f"--offload_model {o.offload_model}")
    if o.convert_model_dtype:
        flags.append("--convert_model_dtype")
    if o.t5_cpu:
        flags.append("--t5_cpu")
    if o.dit_fsdp:
        flags.append("--dit_fsdp")
    if o.t5_fsdp:
        flags.append("--t5_fsdp")
    if o.ulysses > 1:
        flags.append(f"--ulysses_size {o.ulysses}")
    extra = []
    if o.resident_blocks is not None:
        extra.append(f"block offloading with {o.resident_blocks} resident DiT blocks")
    if o.sequential_offload:
        extra.append("sequential offloading of the DiT")
    if o.vae_tiling:
        extra.append("tiled VAE decode")
    if o.free_text_encoder:
        extra.append("the text encoder freed after encoding")
    if o.one_expert_in_ram:
        extra.append("one expert in host RAM, the other read from the checkpoint at the boundary")
    text = " ".join(flags)
    return text + (f"  (+ {', '.join(extra)})" if extra else "")


def _print(console: Console, plan: Plan, optimizer: Optimizer, ram_mb: int | None) -> None:
    r = plan.requirement
    budget = fmt_mb(plan.budget_mb) if plan.budget_mb is not None else "?"
    ram = fmt_mb(ram_mb) if ram_mb is not None else "not limited"
    verdict = "[bold green]FITS[/]" if plan.fits else "[bold red]DOES NOT FIT[/]"
    console.print(f"{verdict} on {plan.gpu} (VRAM budget {budget}, host RAM {ram}): {summary(plan)}")
    console.print(
        f"needs {fmt_mb(r.vram_mb)} VRAM per GPU, {fmt_mb(r.ram_mb)} host RAM, "
        f"about {fmt_seconds(r.estimated_time_seconds)}"
    )
    if plan.suggestions:
        table = Table(title="Changes", title_justify="left")
        for col in ("parameter", "from", "to", "VRAM saved", "time added", "quality", "level"):
            table.add_column(col)
        for s in plan.suggestions:
            table.add_row(
                s.parameter,
                str(s.current),
                str(s.suggested),
                fmt_mb(s.vram_saved_mb),
                ("+" if s.time_added_s >= 0 else "-") + fmt_seconds(s.time_added_s),
                s.quality_impact,
                s.level,
            )
        console.print(table)
        for s in plan.suggestions:
            console.print(f" - {s.reason}")
    console.print(f"run with: {generate_flags(plan)}")
    if not plan.fits:
        error = optimizer.rejection(plan)
        console.print(f"[red]{error.reason}[/]")
        if ram_mb is not None and r.ram_mb > ram_mb and plan.budget_mb is not None and r.vram_mb <= plan.budget_mb:
            console.print(f"host RAM is what is short: run again with --ram-mb {r.ram_mb} or more")


@click.command("optimize")
@click.option("--model", required=True, help="Model profile name (t2v-A14B, i2v-A14B, ti2v-5B, ...).")
@click.option("--size", required=True, metavar="WxH", help="Video size, e.g. 1280x720 (or 1280*720).")
@click.option("--frames", type=click.IntRange(1, 10001), default=None, help="Frames (4k+1); default the model's.")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="Sampling steps; default the model's.")
@click.option("--task", type=click.Choice(["t2v", "i2v"]), default=None, help="Task; default the model's.")
@click.option("--gpus", type=click.IntRange(1, 64), default=None, help="World size of a multi-GPU run.")
@click.option("--offload-model/--no-offload-model", default=None, help="Pin --offload_model on (or off).")
@click.option("--convert-model-dtype/--no-convert-model-dtype", default=None, help="Pin --convert_model_dtype.")
@click.option("--t5-cpu/--no-t5-cpu", default=None, help="Pin --t5_cpu on (or off).")
@click.option("--dit-fsdp/--no-dit-fsdp", default=None, help="Pin --dit_fsdp on (or off).")
@click.option("--t5-fsdp/--no-t5-fsdp", default=None, help="Pin --t5_fsdp on (or off).")
@click.option("--ulysses", type=click.IntRange(1, 64), default=None, help="Pin --ulysses_size.")
@click.option(
    "--free-text-encoder/--no-free-text-encoder", default=None, help="Pin freeing the text encoder after encoding."
)
@click.option(
    "--one-expert-in-ram/--no-one-expert-in-ram", default=None, help="Pin keeping one MoE expert in host RAM."
)
@click.option("--lora", type=click.IntRange(0, 64), default=0, help="Number of LoRA adapters.")
@click.option(
    "--runner", type=click.Choice(RUNNER_NAMES), default=None, help="Code that runs the plan (default generate.py)."
)
@click.option("--profile", type=click.Path(exists=True, dir_okay=False), default=None, help="Model profile file.")
@click.option("--gpu", "gpu_name", default=None, help="GPU (catalog name or size such as 24GB).")
@click.option("--vram-mb", type=click.IntRange(1), default=None, help="VRAM budget in MiB (default: GPU less margin).")
@click.option("--margin-mb", type=click.IntRange(0), default=None, help="Safety margin (default max(1 GiB, 5%)).")
@click.option("--ram-mb", type=click.IntRange(0), default=None, help="Host RAM budget in MiB (default: no limit).")
@click.option("--level", type=click.Choice(LEVELS), default="basic", show_default=True, help="Max optimization level.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def command(
    model: str,
    size: str,
    frames: int | None,
    steps: int | None,
    task: str | None,
    gpus: int | None,
    offload_model: bool | None,
    convert_model_dtype: bool | None,
    t5_cpu: bool | None,
    dit_fsdp: bool | None,
    t5_fsdp: bool | None,
    ulysses: int | None,
    free_text_encoder: bool | None,
    one_expert_in_ram: bool | None,
    lora: int,
    runner: str | None,
    profile: str | None,
    gpu_name: str | None,
    vram_mb: int | None,
    margin_mb: int | None,
    ram_mb: int | None,
    level: str,
    as_json: bool,
) -> None:
    """Find the plan with the least quality loss that fits a GPU (--gpu or --vram-mb) and host RAM (--ram-mb).

    Memory techniques (offloading, dtype conversion, tiling) come first; fewer steps or frames only at
    --level aggressive, smaller sizes only at --level maximum. Options given as flags are pinned and never
    changed. Exits 0 when the plan fits, 1 when nothing within the level fits, 2 on bad input.
    """
    if gpu_name is None and vram_mb is None:
        raise click.UsageError("give the GPU (--gpu NAME) or the VRAM budget (--vram-mb N)")
    options = {
        "offload_model": offload_model,
        "convert_model_dtype": convert_model_dtype,
        "t5_cpu": t5_cpu,
        "dit_fsdp": dit_fsdp,
        "t5_fsdp": t5_fsdp,
        "ulysses": ulysses,
        "free_text_encoder": free_text_encoder,
        "one_expert_in_ram": one_expert_in_ram,
        "gpus": gpus,
        "runner": runner,
    }
    max_level: OptimizationLevel = level  # type: ignore[assignment]  # click.Choice(LEVELS)
    request = build_request(model, size, frames, steps, task, lora, options, max_level=level)
    try:
        optimizer = _optimizer(profile)
        spec: GpuSpec = DEFAULT_GPU_CATALOG.get(gpu_name) if gpu_name else DEFAULT_GPU_CATALOG.get(f"{vram_mb}MiB")
        if vram_mb is not None:
            budget = vram_mb
        else:
            margin = margin_mb if margin_mb is not None else optimizer.margin_mb(spec.memory_mib)
            budget = max(0, spec.memory_mib - margin)
        plan = optimizer.optimize(
            request, gpu=spec, budget_mb=budget, ram_budget_mb=ram_mb, max_level=max_level, world_size=gpus
        )
    except (VramgateError, OSError) as exc:
        raise bad_input(exc) from None
    if as_json:
        out: dict[str, Any] = msgspec.to_builtins(plan)
        out["summary"] = summary(plan)
        if not plan.fits:
            rejection = optimizer.rejection(plan)
            out["needed_mb"] = rejection.needed_mb
            out["smallest_gpu"] = rejection.smallest_gpu
            out["reason"] = rejection.reason
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(out)).decode() + "\n")
    else:
        _print(Console(), plan, optimizer, ram_mb)
    if not plan.fits:
        sys.exit(1)


def _optimizer(profile: str | None) -> Optimizer:
    from vramgate.policy.estimate import Estimator

    if profile is None:
        return Optimizer(Estimator())
    catalog = ModelCatalog()
    catalog.load_file(profile)
    return Optimizer(Estimator(models=catalog), models=catalog)
