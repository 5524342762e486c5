"""The diffusers calls behind :func:`vramgate.integrations.diffusers.apply_plan`: dtype, offloading, tiling.

Every function here changes a pipeline through diffusers' (or accelerate's) own API and says what it did in a
:class:`Recorder`, so that the record matches the pipeline's real state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Components that hold a diffusion transformer (Wan2.2 A14B has two experts: transformer and transformer_2).
DIT_NAMES = ("transformer", "transformer_2")
TEXT_ENCODER = "text_encoder"

# diffusers hook names (diffusers.hooks.group_offloading) removed when a plan is re-applied. Layerwise casting
# ("layerwise_casting") cannot be removed: its weights are already stored in the lower precision.
_GROUP_OFFLOAD_HOOKS = ("lazy_prefetch_group_offloading", "layer_execution_tracker", "group_offloading")
LAYERWISE_CASTING = "layerwise_casting"


class Recorder:
    """Collects what :func:`apply_plan` did and what it could not do."""

    def __init__(self) -> None:
        self.actions: list[str] = []
        self.not_applied: list[tuple[str, str, str]] = []

    def did(self, text: str) -> None:
        self.actions.append(text)

    def skipped(self, option: str, value: object, reason: str) -> None:
        self.not_applied.append((option, repr(value), reason))


def modules(pipe: Any) -> dict[str, torch.nn.Module]:
    """The pipeline's ``torch.nn.Module`` components by name, in the pipeline's order."""
    import torch

    return {name: part for name, part in pipe.components.items() if isinstance(part, torch.nn.Module)}


def reset(pipe: Any) -> None:
    """Remove the offloading hooks an earlier plan attached, so that a new plan starts clean.

    Parameters stay where the hooks left them (the CPU after offloading); the placement step moves them. fp8
    layerwise casting stays: diffusers cannot undo it (see :func:`apply_dtype`).
    """
    from accelerate.hooks import remove_hook_from_module

    pipe.remove_all_hooks()
    for part in modules(pipe).values():
        # Group offloading may hook submodules only (the Wan VAE's encoder and decoder), so visit every module.
        for sub in part.modules():
            registry = getattr(sub, "_diffusers_hook", None)
            if registry is not None:
                for name in _GROUP_OFFLOAD_HOOKS:
                    registry.remove_hook(name, recurse=False)
        if any(hasattr(sub, "_hf_hook") for sub in part.modules()):
            remove_hook_from_module(part, recurse=True)


def has_hook(module: torch.nn.Module, name: str) -> bool:
    """Whether diffusers hook ``name`` is registered on ``module`` or any of its submodules."""
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(name) is not None:
            return True
    return False


def cast(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters and buffers to ``dtype``, keeping the model's ``_keep_in_fp32_modules`` in fp32.

    This is what ``from_pretrained(torch_dtype=...)`` produces; ``module.to(dtype)`` would also cast the norms and
    embeddings the model needs in fp32.
    """
    import torch

    keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())

    def target(name: str) -> torch.dtype:
        return torch.float32 if any(part in keep for part in name.split(".")) else dtype

    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.is_floating_point() and param.dtype != target(name):
                param.data = param.data.to(target(name))
        for name, buffer in module.named_buffers():
            if buffer.is_floating_point() and buffer.dtype != target(name):
                buffer.data = buffer.data.to(target(name))


@contextmanager
def hidden(pipe: Any, name: str | None) -> Iterator[None]:
    """Hide component ``name`` from ``pipe.components`` for the duration (so a pipeline-wide offload skips it).

    The attribute is swapped directly, leaving the pipeline's config (what ``save_pretrained`` writes) untouched.
    """
    if name is None:
        yield
        return
    part = getattr(pipe, name)
    object.__setattr__(pipe, name, None)
    try:
        yield
    finally:
        object.__setattr__(pipe, name, part)


def apply_dtype(dits: dict[str, torch.nn.Module], dtype_name: str, rec: Recorder) -> None:
    """Cast the diffusion transformer(s) to the plan's dtype; fp8 is fp8 storage with bf16 compute."""
    import torch

    stuck = {name: dit for name, dit in dits.items() if has_hook(dit, LAYERWISE_CASTING)}
    for name in stuck:
        if dtype_name == "fp8":
            rec.did(f"{name}: weights already stored in fp8 (layerwise casting)")
        else:
            reason = f"{name} was stored in fp8 by an earlier plan and cannot be cast back; reload it to run in"
            rec.skipped("dit_dtype", dtype_name, f"{reason} {dtype_name}")
    dits = {name: dit for name, dit in dits.items() if name not in stuck}
    if dtype_name == "fp8":
        float8 = getattr(torch, "float8_e4m3fn", None)
        for name, dit in dits.items():
            cast(dit, torch.bfloat16)
            enable = getattr(dit, "enable_layerwise_casting", None)
            if float8 is not None and enable is not None:
                enable(storage_dtype=float8, compute_dtype=torch.bfloat16)
                rec.did(f"{name}: weights stored in fp8 (e4m3), computed in bf16 (layerwise casting)")
            else:
                rec.skipped("dit_dtype", "fp8", f"{name}: no fp8 layerwise casting in this torch/diffusers; bf16 used")
                rec.did(f"{name}: cast to bf16")
        return
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    for name, dit in dits.items():
        cast(dit, dtype)
        rec.did(f"{name}: cast to {dtype_name}")


def place(
    pipe: Any,
    device: torch.device,
    *,
    sequential: bool,
    resident_blocks: int | None,
    offload_model: bool,
    t5_cpu: bool,
    rec: Recorder,
) -> None:
    """Put the components where the plan says: on ``device``, or offloaded to the CPU in one of three ways.

    Precedence: sequential offload, then group offloading of the transformer(s) with ``resident_blocks`` blocks
    per group (0 means leaf level), then model CPU offload. ``offload_model`` beside ``resident_blocks`` group-
    offloads the other components too (``enable_model_cpu_offload`` refuses a pipeline with group offloading).
    """
    import torch

    parts = modules(pipe)
    cpu = torch.device("cpu")
    te_cpu = TEXT_ENCODER if t5_cpu and TEXT_ENCODER in parts else None
    if t5_cpu and te_cpu is None:
        rec.skipped("t5_cpu", True, "the pipeline has no text_encoder")

    if sequential:
        with hidden(pipe, te_cpu):
            pipe.enable_sequential_cpu_offload(device=device)
        rec.did(f"sequential CPU offload: each layer is onloaded onto {device} only while it runs")
        if resident_blocks is not None:
            rec.skipped("resident_blocks", resident_blocks, "sequential offload already keeps one layer resident")
    elif resident_blocks is not None:
        if resident_blocks > 0:
            kind: dict[str, Any] = {"offload_type": "block_level", "num_blocks_per_group": resident_blocks}
        else:
            kind = {"offload_type": "leaf_level"}
        for name in DIT_NAMES:
            if name in parts:
                parts[name].enable_group_offload(onload_device=device, offload_device=cpu, **kind)  # type: ignore[operator]
                rec.did(f"{name}: group offloading onto {device}, {_blocks(resident_blocks)} resident")
        others = {name: part for name, part in parts.items() if name not in DIT_NAMES and name != te_cpu}
        for name, part in others.items():
            if offload_model:
                _group_offload_whole(part, device, cpu)
                rec.did(f"{name}: offloaded to the CPU, onloaded onto {device} while it runs (group offloading)")
            else:
                part.to(device)
                rec.did(f"{name}: on {device}")
    elif offload_model:
        with hidden(pipe, te_cpu):
            pipe.enable_model_cpu_offload(device=device)
        rec.did(f"model CPU offload: one component at a time on {device}")
    else:
        for name, part in parts.items():
            if name != te_cpu:
                part.to(device)
        rec.did(f"all components on {device}")

    if te_cpu is not None:
        parts[te_cpu].to(cpu)
        rec.did("text_encoder: kept on the CPU (t5_cpu); prompts are encoded there")


def _blocks(resident_blocks: int) -> str:
    return "one leaf layer" if resident_blocks == 0 else f"{resident_blocks} block(s)"


def _group_offload_whole(part: torch.nn.Module, device: torch.device, cpu: torch.device) -> None:
    """Group-offload a non-transformer component: its top-level blocks move to ``device`` only while they run."""
    from diffusers.hooks.group_offloading import apply_group_offloading

    enable = getattr(part, "enable_group_offload", None)
    if enable is not None:
        enable(onload_device=device, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1)
    else:
        apply_group_offloading(part, onload_device=device, offload_device=cpu, num_blocks_per_group=1)


def tiling(pipe: Any, enabled: bool, rec: Recorder) -> None:
    """Switch the VAE's tiled decode on or off as the plan says."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "enable_tiling"):
        if enabled:
            rec.skipped("vae_tiling", True, "the pipeline's VAE has no tiled decode")
        return
    if enabled:
        vae.enable_tiling()
        rec.did("vae: tiled decode")
    elif hasattr(vae, "disable_tiling"):
        vae.disable_tiling()


def _unhook_text_encoder(pipe: Any) -> Any:
    """Remove the text encoder's offload hooks (its own and the pipeline's list); the module, or ``None``."""
    import torch
    from accelerate.hooks import remove_hook_from_module

    part = getattr(pipe, TEXT_ENCODER, None)
    if not isinstance(part, torch.nn.Module):
        return None
    if any(hasattr(sub, "_hf_hook") for sub in part.modules()):
        remove_hook_from_module(part, recurse=True)
    hooks = getattr(pipe, "_all_hooks", None)
    if hooks:
        pipe._all_hooks = [hook for hook in hooks if getattr(hook, "model", None) is not part]
    return part


def keep_text_encoder_on_cpu(pipe: Any) -> None:
    """Undo what ``maybe_free_model_hooks`` re-applies after each call under model offload: the text encoder's hook.

    diffusers re-runs ``enable_model_cpu_offload`` at the end of every call, which hooks every component again.
    """
    import torch

    part = _unhook_text_encoder(pipe)
    if part is not None:
        part.to(torch.device("cpu"))


def drop_text_encoder(pipe: Any) -> None:
    """Free the text encoder: ``pipe.text_encoder = None``, with every hook that refers to it removed.

    Under model offload the next module's hook refers to the text encoder's (to offload it when the next one
    runs); that reference is cut too, so nothing keeps the text encoder alive.
    """
    part = _unhook_text_encoder(pipe)
    if part is None:
        return
    for module in modules(pipe).values():
        hook = getattr(module, "_hf_hook", None)
        prev = getattr(hook, "prev_module_hook", None)
        if hook is not None and prev is not None and getattr(prev, "model", None) is part:
            hook.prev_module_hook = None
    setattr(pipe, TEXT_ENCODER, None)
