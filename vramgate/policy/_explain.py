"""Suggestions: each change of a plan, with its saving, its cost and a sentence a user understands."""

from __future__ import annotations

from dataclasses import dataclass

from vramgate.messages.plans import OptimizationSuggestion, QualityImpact, ResourceRequirement, Value
from vramgate.messages.requests import OptimizationLevel
from vramgate.policy._search import Candidate, Quality, Search


def fmt_mb(mb: float) -> str:
    """``12.3 GiB`` or ``512 MiB``."""
    if abs(mb) >= 1024:
        return f"{mb / 1024:.1f} GiB"
    return f"{mb:.0f} MiB"


def fmt_seconds(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``1 h 5 min``."""
    s = round(abs(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, r = divmod(s, 60)
        return f"{m} min {r} s" if r else f"{m} min"
    h, r = divmod(s, 3600)
    m = r // 60
    return f"{h} h {m} min" if m else f"{h} h"


_TECHNIQUE_TEXT = {
    "convert_model_dtype": "Cast the DiT weights to bf16 (--convert_model_dtype)",
    "offload_model": "Move the text encoder and the DiT to CPU RAM when idle (--offload_model True)",
    "t5_fsdp": "Shard the text encoder across the GPUs (--t5_fsdp)",
    "dit_fsdp": "Shard the DiT weights across the GPUs (--dit_fsdp)",
    "t5_cpu": "Keep the T5 text encoder on the CPU and encode the prompt there (--t5_cpu)",
    "vae_tiling": "Decode the video with the VAE in tiles",
    "free_text_encoder": "Free the text encoder once the prompt is encoded",
    "one_expert_in_ram": (
        "Keep one expert in host RAM at a time and read the idle expert from the checkpoint at the expert boundary"
    ),
}
#: offloading as a mixture-of-experts model does it: only one expert is needed at a time
_MOE_OFFLOAD_TEXT = "Move the text encoder and the idle expert to CPU RAM between phases (--offload_model True)"


@dataclass(frozen=True, slots=True)
class _Step:
    parameter: str
    current: Value
    suggested: Value
    text: str
    quality_impact: QualityImpact
    level: OptimizationLevel
    state: tuple[Quality, int, int]


def _impact(fraction_lost: float, low: float, medium: float) -> QualityImpact:
    if fraction_lost <= low:
        return "low"
    if fraction_lost <= medium:
        return "medium"
    return "high"


def _steps(search: Search, cand: Candidate, layers: int, experts: int = 1) -> list[_Step]:
    space = search.space
    base = space.base
    opts = base.options
    q0 = space.base_quality
    out: list[_Step] = []
    mask = 0
    for i, name in enumerate(space.toggles):
        if not cand.mask >> i & 1:
            continue
        mask |= 1 << i
        if name == "ulysses":
            n = space.ulysses_on
            text = f"Split the video's token sequence across the {n} GPUs (--ulysses_size {n})"
            out.append(_Step(name, opts.ulysses, n, text, "none", "basic", (q0, mask, 0)))
        else:
            text = _MOE_OFFLOAD_TEXT if name == "offload_model" and experts > 1 else _TECHNIQUE_TEXT[name]
            out.append(_Step(name, False, True, text, "none", "basic", (q0, mask, 0)))
    if cand.placement:
        resident, sequential = space.placements[cand.placement]
        state = (q0, mask, cand.placement)
        if sequential:
            text = "Stream every DiT layer from CPU RAM as it runs (sequential offloading, the slowest technique)"
            out.append(_Step("sequential_offload", opts.sequential_offload, True, text, "none", "basic", state))
        else:
            text = (
                f"Keep {resident} of the {layers} DiT blocks on the GPU and stream the others from CPU RAM "
                "(block offloading)"
            )
            out.append(_Step("resident_blocks", opts.resident_blocks, resident, text, "none", "basic", state))
    q = cand.quality
    cur = q0
    if q.steps != q0.steps:
        cur = Quality(q.steps, cur.frames, cur.width, cur.height)
        lost = 1 - q.steps / q0.steps
        text = f"Use {q.steps} denoising steps instead of {q0.steps}: somewhat less fine detail"
        out.append(
            _Step(
                "steps",
                q0.steps,
                q.steps,
                text,
                _impact(lost, 0.2, 0.4),
                "aggressive",
                (cur, cand.mask, cand.placement),
            )
        )
    if q.frames != q0.frames:
        cur = Quality(cur.steps, q.frames, cur.width, cur.height)
        fps = base.fps
        lost = 1 - q.frames / q0.frames
        text = (
            f"Generate {q.frames} frames ({q.frames / fps:.1f} s) instead of {q0.frames} ({q0.frames / fps:.1f} s) "
            f"at {fps} fps: a shorter clip"
        )
        out.append(
            _Step(
                "frames",
                q0.frames,
                q.frames,
                text,
                _impact(lost, 0.15, 0.35),
                "aggressive",
                (cur, cand.mask, cand.placement),
            )
        )
    if (q.width, q.height) != (q0.width, q0.height):
        cur = q
        lost = 1 - q.pixels / q0.pixels
        text = f"Generate at {q.width}x{q.height} instead of {q0.width}x{q0.height}: a lower resolution"
        out.append(
            _Step(
                "size",
                f"{q0.width}x{q0.height}",
                f"{q.width}x{q.height}",
                text,
                _impact(lost, 0.0, 0.3),
                "maximum",
                (cur, cand.mask, cand.placement),
            )
        )
    return out


def suggestions(
    search: Search, cand: Candidate, layers: int, *, experts: int = 1
) -> tuple[OptimizationSuggestion, ...]:
    """The changes from the search's base to ``cand``, each with its marginal saving and cost.

    Changes are applied one after another in a fixed order (techniques by time cost per GB, then steps, frames
    and size), so the savings and time costs add up to the difference between the base and the plan.
    """
    base_q = search.space.base_quality
    prev: ResourceRequirement | None = search.requirement(base_q, 0, 0)
    base_time = prev.estimated_time_seconds if prev is not None else 0.0
    out: list[OptimizationSuggestion] = []
    for step in _steps(search, cand, layers, experts):
        now = search.requirement(*step.state)
        saved = prev.vram_mb - now.vram_mb if prev is not None and now is not None else 0
        ram_saved = prev.ram_mb - now.ram_mb if prev is not None and now is not None else 0
        added = (
            now.estimated_time_seconds - prev.estimated_time_seconds if prev is not None and now is not None else 0.0
        )
        reason = f"{step.text}: {_saving_text(saved, ram_saved)}, {_time_text(added, base_time)}."
        out.append(
            OptimizationSuggestion(
                parameter=step.parameter,
                current=step.current,
                suggested=step.suggested,
                reason=reason,
                vram_saved_mb=saved,
                time_added_s=round(added, 3),
                quality_impact=step.quality_impact,
                level=step.level,
                ram_saved_mb=ram_saved,
            )
        )
        prev = now
    return tuple(out)


def _saving_text(saved: int, ram_saved: int = 0) -> str:
    if ram_saved > 0:
        host = f"saves {fmt_mb(ram_saved)} of host RAM"
        if saved > 0:
            return f"{host} and {fmt_mb(saved)} of VRAM"
        return f"{host} (needs {fmt_mb(-saved)} more VRAM)" if saved < 0 else host
    if saved > 0:
        return f"saves {fmt_mb(saved)} of VRAM"
    if saved < 0:
        return f"needs {fmt_mb(-saved)} more VRAM on its own (the other changes more than make up for it)"
    return "no VRAM saving on its own (the peak is elsewhere until the other changes are made)"


def _time_text(added: float, base_time: float) -> str:
    if abs(added) < 0.5:
        return "no time cost"
    pct = f" ({added / base_time:+.0%})" if base_time > 0 and abs(added / base_time) >= 0.005 else ""
    if added > 0:
        return f"adds about {fmt_seconds(added)}{pct}"
    return f"saves about {fmt_seconds(-added)}{pct}"


def summary(base: ResourceRequirement | None, plan_time: float, fits: bool, level: OptimizationLevel) -> str:
    """One sentence about a plan as a whole."""
    if base is None:
        return "fits as asked" if fits else "does not fit"
    added = plan_time - base.estimated_time_seconds
    slower = plan_time / base.estimated_time_seconds if base.estimated_time_seconds > 0 else 1.0
    if level == "none":
        return "fits as asked, no change needed" if fits else "does not fit as asked"
    how = {
        "basic": "by memory techniques alone (no quality loss)",
        "aggressive": "with fewer steps or frames",
        "maximum": "with a lower resolution",
    }[level]
    verb = "fits" if fits else "comes closest"
    if added >= 0.5:
        return f"{verb} {how}; {slower:.2f}x the time (+{fmt_seconds(added)})"
    if added <= -0.5:
        return f"{verb} {how}; {slower:.2f}x the time ({fmt_seconds(-added)} faster)"
    return f"{verb} {how}; no slower"
