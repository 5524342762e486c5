"""Run a diffusers pipeline (Wan2.1/2.2 first) with an admitted plan, inside its lease.

:func:`apply_plan` maps each option of a plan to the pipeline's own API - model or sequential CPU offload, group
offloading with the plan's resident blocks, VAE tiling, the transformer's dtype, the text encoder kept on the
CPU - and returns an :class:`AppliedPlan` saying what it did and what it could not do. :func:`run_in_lease`
applies the lease's plan, runs the pipeline in a worker thread, forwards each step to ``lease.progress``,
measures the peak and reports it with the outcome (``ok``, ``oom``, ``error``, ``cancelled``) exactly once.
:func:`declare_pipeline` declares a pipeline the server keeps loaded as a resident model, with its weights
measured per component (:func:`pipeline_memory`), so that each run reserves only its working memory.

torch, diffusers and accelerate are imported when called: install the extra with
``pip install -e '.[diffusers]'`` from a clone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.from_thread
import anyio.to_thread
import msgspec

from vramgate.errors import InvalidParameter
from vramgate.integrations import _diffusers_placement as _place
from vramgate.integrations._diffusers_resident import PipelineMemory, declare_pipeline, pipeline_memory
from vramgate.integrations._torch_peak import is_cuda, is_oom, observed_peak, reset_peak
from vramgate.messages import ObservedPeak, Outcome, Plan, RunnerName, RunOptions, RunParams

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

__all__ = [
    "RUNNER",
    "AppliedPlan",
    "LeaseLike",
    "LeaseRun",
    "NotApplied",
    "PipelineMemory",
    "apply_plan",
    "declare_pipeline",
    "lease_device",
    "observed_peak",
    "pipeline_memory",
    "request_options",
    "run_in_lease",
    "torch_device",
]

StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]

#: What this adapter runs: a diffusers pipeline, whose DiT holds its own activations per token (a quarter of
#: Wan's ``generate.py`` for the Wan transformers). Requests it will run are priced for it.
RUNNER: RunnerName = "diffusers"


def request_options(options: RunOptions | None = None) -> RunOptions:
    """``options`` (or none pinned) naming this adapter as the runner, for requests it will run."""
    return msgspec.structs.replace(options or RunOptions(), runner=RUNNER)


class LeaseLike(Protocol):
    """What :func:`run_in_lease` needs from a lease. ``report`` and ``progress`` may be plain or async.

    ``device`` is a CUDA index, a torch device or its name. A lease on a simulated GPU (one whose ``simulated``
    attribute is not ``None``, as the gate's leases have) runs on the CPU unless ``device=`` says otherwise.
    """

    @property
    def params(self) -> RunParams: ...

    @property
    def device(self) -> object: ...

    def report(self, *, peak_vram_mb: int | None, outcome: Outcome) -> object: ...

    def progress(self, step: int, total: int) -> object: ...


@dataclass(frozen=True)
class NotApplied:
    """A plan option the pipeline could not honour, and why."""

    option: str
    value: str
    reason: str


@dataclass(frozen=True)
class AppliedPlan:
    """What :func:`apply_plan` did to a pipeline (``actions``, in order) and what it could not do."""

    device: str
    dit_dtype: str
    actions: tuple[str, ...]
    not_applied: tuple[NotApplied, ...]
    text_encoder_on_cpu: bool
    #: encode the prompt first, then drop the text encoder (``pipe.text_encoder = None``) for the rest of the run
    free_text_encoder: bool = False


@dataclass(frozen=True)
class LeaseRun:
    """The result of :func:`run_in_lease`: the pipeline's output, the applied plan and the observed peak.

    ``note`` says why a peak is missing (``observed`` is all ``None`` on a device torch cannot measure).
    """

    output: Any
    applied: AppliedPlan
    observed: ObservedPeak
    note: str = ""


def apply_plan(pipe: DiffusionPipeline, plan_or_params: Plan | RunParams, *, device: str | torch.device) -> AppliedPlan:
    """Apply a plan's options to ``pipe`` (in place) for a run on ``device``; return what was done.

    Hooks left by an earlier plan are removed first, so a pipeline can be re-planned for every run. A sharded plan
    (``gpus`` or ``ulysses`` over 1) raises :class:`~vramgate.errors.InvalidParameter`: one pipeline in one process
    cannot honour its per-GPU memory.
    """
    params = plan_or_params.params if isinstance(plan_or_params, Plan) else plan_or_params
    if not isinstance(params, RunParams):
        raise InvalidParameter("plan", type(plan_or_params).__name__, "expected a vramgate Plan or RunParams")
    opts = params.options
    for field in ("gpus", "ulysses"):
        if getattr(opts, field) > 1:
            raise InvalidParameter(
                f"options.{field}",
                getattr(opts, field),
                "a diffusers pipeline runs on one device; this plan shards the model over several GPUs",
                valid="1",
            )
    dev = torch_device(device)
    rec = _place.Recorder()
    parts = _place.modules(pipe)
    dits = {name: parts[name] for name in _place.DIT_NAMES if name in parts}
    if not dits:
        raise InvalidParameter("pipe", type(pipe).__name__, "has no transformer component to apply a plan to")

    _place.reset(pipe)
    _place.apply_dtype(dits, opts.dit_dtype, rec)
    if opts.convert_model_dtype:
        rec.did(f"convert_model_dtype: the transformer runs in {opts.dit_dtype} (cast above)")
    _place.place(
        pipe,
        dev,
        sequential=opts.sequential_offload,
        resident_blocks=opts.resident_blocks,
        offload_model=opts.offload_model,
        t5_cpu=opts.t5_cpu,
        rec=rec,
    )
    _place.tiling(pipe, opts.vae_tiling, rec)
    for field in ("dit_fsdp", "t5_fsdp"):
        if getattr(opts, field):
            rec.skipped(field, True, "FSDP shards a model over several processes; with one GPU it changes nothing")
    free_te = opts.free_text_encoder and _place.TEXT_ENCODER in parts
    if free_te:
        rec.did(
            "free_text_encoder: the prompt is encoded before the call, then pipe.text_encoder is set to None "
            "(freed: give the next run prompt_embeds, or set pipe.text_encoder again)"
        )
    if opts.one_expert_in_ram:
        rec.skipped(
            "one_expert_in_ram",
            True,
            "a diffusers pipeline holds its experts (transformer, transformer_2) for the whole run; it cannot read "
            "one from the checkpoint at the expert boundary",
        )
    return AppliedPlan(
        device=str(dev),
        dit_dtype=opts.dit_dtype,
        actions=tuple(rec.actions),
        not_applied=tuple(NotApplied(*entry) for entry in rec.not_applied),
        text_encoder_on_cpu=opts.t5_cpu and _place.TEXT_ENCODER in parts,
        free_text_encoder=free_te,
    )


def torch_device(device: object) -> torch.device:
    """A torch device from a CUDA index, a device name or a torch device; anything else is an InvalidParameter."""
    import torch

    if isinstance(device, bool):
        raise InvalidParameter("device", device, "not a device")
    if isinstance(device, int):
        return torch.device("cuda", device)
    if isinstance(device, torch.device):
        return device
    if isinstance(device, str):
        try:
            return torch.device(device)
        except RuntimeError as exc:
            raise InvalidParameter("device", device, f"not a torch device name ({exc})") from None
    raise InvalidParameter(
        "device", device, "cannot run torch on this device; pass device= (a CUDA index or a torch device)"
    )


def lease_device(lease: LeaseLike) -> object:
    """Where a lease's run goes by default: its CUDA device, or the CPU for a simulated GPU (torch cannot use one)."""
    return "cpu" if getattr(lease, "simulated", None) is not None else lease.device


async def run_in_lease(
    pipe: DiffusionPipeline, lease: LeaseLike, *, device: str | torch.device | int | None = None, **call_kwargs: Any
) -> LeaseRun:
    """Apply ``lease.params`` to ``pipe``, run it in a worker thread and report the outcome and peak to the lease.

    ``call_kwargs`` go to the pipeline (``prompt``, ``prompt_embeds``, ``generator``, ``output_type``, ...); the
    plan's size, frames, steps and guidance are filled in, and a conflicting value raises InvalidParameter. Each
    finished step calls ``lease.progress(step, total)`` on the event loop. The worker checks for cancellation
    after each step, so cancelling the caller stops the run at the next step.

    Every exit path reports once: ``ok``; ``oom`` for torch's out-of-memory errors; ``error`` for any other
    exception; ``cancelled``. Exceptions are re-raised after the report.
    """
    params = lease.params
    outcome: Outcome = "error"
    dev: torch.device | None = None
    try:
        dev = torch_device(lease_device(lease) if device is None else device)
        applied = apply_plan(pipe, params, device=dev)
        kwargs = _call_kwargs(pipe, params, call_kwargs, _progress_callback(lease, params, call_kwargs))
        output = await anyio.to_thread.run_sync(_run, pipe, applied, dev, kwargs)
        note = "" if is_cuda(dev) else f"{dev}: torch measures no VRAM peak on this device"
        outcome = "ok"
    except anyio.get_cancelled_exc_class():
        outcome = "cancelled"
        raise
    except Exception as exc:
        outcome = "oom" if is_oom(exc) else "error"
        raise
    finally:
        observed = observed_peak(dev) if dev is not None else ObservedPeak()
        with anyio.CancelScope(shield=True):
            await _maybe_await(lease.report(peak_vram_mb=observed.best_mb(), outcome=outcome))
    return LeaseRun(output=output, applied=applied, observed=observed, note=note)


def _progress_callback(lease: LeaseLike, params: RunParams, call_kwargs: dict[str, Any]) -> StepCallback:
    """A ``callback_on_step_end`` that checks for cancellation and forwards progress from the worker thread."""
    user: StepCallback | None = call_kwargs.get("callback_on_step_end")

    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        anyio.from_thread.check_cancelled()
        total = int(getattr(pipe, "num_timesteps", None) or params.steps)
        anyio.from_thread.run(_maybe_await_call, lease.progress, step + 1, total)
        return user(pipe, step, timestep, tensors) if user is not None else tensors

    return on_step_end


def _call_kwargs(pipe: Any, params: RunParams, call_kwargs: dict[str, Any], callback: StepCallback) -> dict[str, Any]:
    planned: dict[str, Any] = {
        "height": params.height,
        "width": params.width,
        "num_frames": params.frames,
        "num_inference_steps": params.steps,
    }
    if params.guidance_scale is not None:
        planned["guidance_scale"] = params.guidance_scale
    accepted = inspect.signature(pipe.__call__).parameters
    kwargs = dict(call_kwargs)
    for key, value in planned.items():
        if key not in accepted:
            continue
        if key in kwargs and kwargs[key] != value:
            raise InvalidParameter(key, kwargs[key], f"the admitted plan runs with {key}={value!r}")
        kwargs[key] = value
    kwargs["callback_on_step_end"] = callback
    return kwargs


def _run(pipe: Any, applied: AppliedPlan, device: torch.device, kwargs: dict[str, Any]) -> Any:
    """The worker thread's part: encode on the CPU when the plan says so, reset the peak, run the pipeline."""
    if applied.text_encoder_on_cpu or applied.free_text_encoder:
        import torch

        _encode_first(pipe, device, kwargs, torch.device("cpu") if applied.text_encoder_on_cpu else device)
    if applied.free_text_encoder and _encoded(pipe, kwargs):
        _place.drop_text_encoder(pipe)
    for key in ("prompt_embeds", "negative_prompt_embeds"):
        if kwargs.get(key) is not None:
            kwargs[key] = kwargs[key].to(device)
    reset_peak(device)
    try:
        return pipe(**kwargs)
    finally:
        if applied.text_encoder_on_cpu and getattr(pipe, _place.TEXT_ENCODER, None) is not None:
            _place.keep_text_encoder_on_cpu(pipe)


def _guidance(pipe: Any, kwargs: dict[str, Any]) -> float:
    default = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    return float(kwargs.get("guidance_scale", default.default if default is not None else 1.0))


def _encoded(pipe: Any, kwargs: dict[str, Any]) -> bool:
    """Whether the call needs no text encoder: the embeddings (and, with guidance, the negative ones) are given."""
    if kwargs.get("prompt_embeds") is None:
        return False
    return _guidance(pipe, kwargs) <= 1.0 or kwargs.get("negative_prompt_embeds") is not None


def _encode_first(pipe: Any, device: torch.device, kwargs: dict[str, Any], on: torch.device) -> None:
    """Run the text encoder here, on ``on`` (the CPU with ``t5_cpu``), and pass the pipeline the embeddings.

    Only for pipelines whose ``encode_prompt`` takes ``device`` and ``do_classifier_free_guidance`` (Wan's does);
    others encode inside the call (with ``t5_cpu``, with the text encoder on the CPU; ``free_text_encoder`` then
    keeps the text encoder).
    """
    import torch

    encode = getattr(pipe, "encode_prompt", None)
    if kwargs.get("prompt") is None or kwargs.get("prompt_embeds") is not None or encode is None:
        return
    accepted = inspect.signature(encode).parameters
    if not {"device", "do_classifier_free_guidance"} <= accepted.keys():
        return
    guidance = _guidance(pipe, kwargs)
    extra = {key: kwargs[key] for key in ("num_videos_per_prompt", "max_sequence_length") if key in kwargs}
    with torch.no_grad():
        positive, negative = encode(
            prompt=kwargs.pop("prompt"),
            negative_prompt=kwargs.pop("negative_prompt", None),
            negative_prompt_embeds=kwargs.get("negative_prompt_embeds"),
            do_classifier_free_guidance=guidance > 1.0,
            device=on,
            **extra,
        )
    kwargs["prompt_embeds"] = positive.to(device)
    kwargs["negative_prompt_embeds"] = negative.to(device) if negative is not None else None
    if "num_videos_per_prompt" in kwargs:
        kwargs["num_videos_per_prompt"] = 1  # the embeddings are already repeated per video


async def _maybe_await(result: object) -> None:
    if inspect.isawaitable(result):
        await result


async def _maybe_await_call(fn: Callable[..., object], *args: object) -> None:
    await _maybe_await(fn(*args))
