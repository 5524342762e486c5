"""The diffusers adapter on a tiny Wan pipeline with random weights, on the CPU (no downloads).

The pipeline is diffusers' real WanPipeline with a 2-layer WanTransformer3DModel, a tiny AutoencoderKLWan, a tiny
UMT5 text encoder and a word-level tokenizer built in memory, so diffusers' and accelerate's real code runs.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.from_thread
import pytest

from vramgate.errors import InvalidParameter
from vramgate.messages import ObservedPeak, Outcome, Plan, ResolvedOptions, ResourceRequirement, RunParams

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from vramgate.integrations.diffusers import (  # noqa: E402
    AppliedPlan,
    apply_plan,
    observed_peak,
    run_in_lease,
    torch_device,
)

WORDS = ["a", "cat", "walks", "on", "the", "beach", "at", "sunset", "slowly", "blurry", "low", "quality"]
TEXT_DIM = 32
STEPS = 2


class RecordingLease:
    """A minimal lease: the plan's parameters, a device, and a record of progress and reports."""

    def __init__(self, params: RunParams, device: object = "cpu") -> None:
        self._params = params
        self._device = device
        self.steps: list[tuple[int, int]] = []
        self.reports: list[tuple[int | None, Outcome]] = []

    @property
    def params(self) -> RunParams:
        return self._params

    @property
    def device(self) -> object:
        return self._device

    def report(self, *, peak_vram_mb: int | None, outcome: Outcome) -> None:
        self.reports.append((peak_vram_mb, outcome))

    async def progress(self, step: int, total: int) -> None:
        await anyio.lowlevel.checkpoint()
        self.steps.append((step, total))


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {word: i + 3 for i, word in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture
def pipe() -> Any:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(WORDS) + 3, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    wan = WanPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=transformer,
    )
    wan.set_progress_bar_config(disable=True)
    return wan


def run_params(**options: Any) -> RunParams:
    return RunParams(
        model="t2v-A14B",
        task="t2v",
        width=16,
        height=16,
        frames=5,
        steps=STEPS,
        guidance_scale=5.0,
        options=ResolvedOptions(**options),
    )


def embeddings() -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1)
    return {
        "prompt_embeds": torch.randn(1, 8, TEXT_DIM, generator=generator),
        "negative_prompt_embeds": torch.randn(1, 8, TEXT_DIM, generator=generator),
        "output_type": "np",
    }


def group_hook(module: Any) -> Any:
    registry = getattr(module, "_diffusers_hook", None)
    return None if registry is None else registry.get_hook("group_offloading")


# --------------------------------------------------------------------------- run_in_lease


@pytest.mark.anyio
async def test_run_in_lease_applies_plan_reports_progress_and_ok(pipe: Any) -> None:
    lease = RecordingLease(run_params(resident_blocks=1, vae_tiling=True, dit_dtype="fp32"))
    result = await run_in_lease(pipe, lease, **embeddings())

    assert result.output.frames.shape == (1, 5, 16, 16, 3)
    assert lease.steps == [(1, STEPS), (2, STEPS)]
    assert lease.reports == [(None, "ok")]
    assert result.observed == ObservedPeak()
    assert "no VRAM peak" in result.note
    # diffusers' own state, not the record: tiled decode on, one block per offload group on the transformer.
    assert pipe.vae.use_tiling is True
    blocks = pipe.transformer.blocks
    assert [len(group_hook(block).group.modules) for block in blocks] == [1, 1]
    assert group_hook(blocks[0]).group is not group_hook(blocks[1]).group
    assert group_hook(pipe.transformer).config.onload_device == torch.device("cpu")
    assert result.applied.not_applied == ()


@pytest.mark.anyio
async def test_t5_cpu_with_model_offload_encodes_real_prompt_on_cpu(pipe: Any) -> None:
    lease = RecordingLease(run_params(offload_model=True, t5_cpu=True, dit_dtype="bf16"))
    result = await run_in_lease(
        pipe, lease, prompt="a cat walks on the beach", negative_prompt="blurry", max_sequence_length=16
    )

    assert result.output.frames.shape == (1, 5, 16, 16, 3)
    assert lease.reports == [(None, "ok")]
    assert result.applied.text_encoder_on_cpu
    # accelerate's model offload hooks on the transformer and VAE, none on the text encoder.
    assert hasattr(pipe.transformer, "_hf_hook")
    assert hasattr(pipe.vae, "_hf_hook")
    assert not any(hasattr(module, "_hf_hook") for module in pipe.text_encoder.modules())
    assert pipe.text_encoder.device == torch.device("cpu")
    # bf16 everywhere but the modules the model keeps in fp32.
    assert pipe.transformer.blocks[0].ffn.net[0].proj.weight.dtype == torch.bfloat16
    assert pipe.transformer.scale_shift_table.dtype == torch.float32


@pytest.mark.anyio
async def test_fp8_stores_weights_in_fp8_and_runs(pipe: Any) -> None:
    lease = RecordingLease(run_params(dit_dtype="fp8", resident_blocks=2, offload_model=True))
    result = await run_in_lease(pipe, lease, **embeddings())

    assert result.output.frames.shape == (1, 5, 16, 16, 3)
    assert pipe.transformer.blocks[0].ffn.net[0].proj.weight.dtype == torch.float8_e4m3fn
    assert [len(group_hook(block).group.modules) for block in pipe.transformer.blocks] == [2, 2]
    # offload_model beside resident_blocks group-offloads the VAE and the text encoder too.
    assert any(group_hook(module) for module in pipe.vae.decoder.modules())
    assert group_hook(pipe.text_encoder) is not None


@pytest.mark.anyio
async def test_error_inside_pipeline_is_reported_and_reraised(pipe: Any) -> None:
    def fail(_pipe: Any, step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("bad step")

    lease = RecordingLease(run_params())
    with pytest.raises(ValueError, match="bad step"):
        await run_in_lease(pipe, lease, callback_on_step_end=fail, **embeddings())
    assert lease.steps == [(1, STEPS)]
    assert lease.reports == [(None, "error")]


@pytest.mark.anyio
async def test_out_of_memory_is_reported_as_oom(pipe: Any) -> None:
    def oom(_pipe: Any, step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    lease = RecordingLease(run_params())
    with pytest.raises(torch.OutOfMemoryError):
        await run_in_lease(pipe, lease, callback_on_step_end=oom, **embeddings())
    assert lease.reports == [(None, "oom")]


@pytest.mark.anyio
async def test_cancelling_the_caller_stops_the_run_at_the_next_step(pipe: Any) -> None:
    lease = RecordingLease(run_params())
    with anyio.CancelScope() as scope:

        def cancel_after_first(_pipe: Any, step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            anyio.from_thread.run_sync(scope.cancel)
            return tensors

        await run_in_lease(pipe, lease, callback_on_step_end=cancel_after_first, **embeddings())
    assert scope.cancelled_caught
    assert lease.steps == [(1, STEPS)]
    assert lease.reports == [(None, "cancelled")]


@pytest.mark.anyio
async def test_sharded_plan_and_conflicting_call_are_refused_and_reported(pipe: Any) -> None:
    lease = RecordingLease(run_params(gpus=2))
    with pytest.raises(InvalidParameter, match=r"options\.gpus"):
        await run_in_lease(pipe, lease, **embeddings())
    assert lease.reports == [(None, "error")]

    lease = RecordingLease(run_params())
    with pytest.raises(InvalidParameter, match="height=32"):
        await run_in_lease(pipe, lease, height=32, **embeddings())
    assert lease.reports == [(None, "error")]
    assert lease.steps == []


# --------------------------------------------------------------------------- apply_plan alone


def test_reapplying_a_plan_removes_the_previous_plans_hooks(pipe: Any) -> None:
    plan = Plan(
        params=run_params(resident_blocks=0, vae_tiling=True, dit_fsdp=True),
        requirement=ResourceRequirement(vram_mb=1, ram_mb=1, estimated_time_seconds=1.0),
    )
    applied = apply_plan(pipe, plan, device="cpu")
    assert isinstance(applied, AppliedPlan)
    assert [entry.option for entry in applied.not_applied] == ["dit_fsdp"]
    # resident_blocks=0 is leaf-level group offloading: every leaf layer has its own group.
    assert group_hook(pipe.transformer.blocks[0].ffn.net[0].proj) is not None

    apply_plan(pipe, run_params(), device="cpu")
    assert not any(group_hook(module) for module in pipe.transformer.modules())
    assert pipe.vae.use_tiling is False


def test_sequential_offload_after_group_offloading_of_every_component(pipe: Any) -> None:
    apply_plan(pipe, run_params(resident_blocks=1, offload_model=True), device="cpu")
    assert any(group_hook(module) for module in pipe.vae.modules())

    # diffusers refuses sequential offload while any submodule is group-offloaded: the reset must reach them all.
    apply_plan(pipe, run_params(sequential_offload=True), device="cpu")
    assert not any(group_hook(module) for part in (pipe.vae, pipe.text_encoder) for module in part.modules())
    assert pipe.vae.decoder.conv_in.weight.device == torch.device("meta")


@pytest.mark.anyio
async def test_fp8_cannot_be_undone_and_says_so(pipe: Any) -> None:
    apply_plan(pipe, run_params(dit_dtype="fp8"), device="cpu")
    lease = RecordingLease(run_params(dit_dtype="bf16"))
    result = await run_in_lease(pipe, lease, **embeddings())

    assert [(entry.option, entry.value) for entry in result.applied.not_applied] == [("dit_dtype", "'bf16'")]
    assert pipe.transformer.blocks[0].ffn.net[0].proj.weight.dtype == torch.float8_e4m3fn
    assert result.output.frames.shape == (1, 5, 16, 16, 3)
    assert lease.reports == [(None, "ok")]


def test_sequential_offload_moves_weights_to_meta_and_back(pipe: Any) -> None:
    from accelerate.hooks import AlignDevicesHook

    applied = apply_plan(pipe, run_params(sequential_offload=True, resident_blocks=3), device="cpu")
    weight = pipe.transformer.blocks[0].ffn.net[0].proj
    assert weight.weight.device == torch.device("meta")
    assert isinstance(weight._hf_hook, AlignDevicesHook)
    assert [entry.option for entry in applied.not_applied] == ["resident_blocks"]

    apply_plan(pipe, run_params(), device="cpu")
    assert weight.weight.device == torch.device("cpu")
    assert not hasattr(weight, "_hf_hook")


def test_devices_and_peaks() -> None:
    assert torch_device(1) == torch.device("cuda", 1)
    assert torch_device("cpu") == torch.device("cpu")
    with pytest.raises(InvalidParameter, match="device"):
        torch_device(object())
    with pytest.raises(InvalidParameter, match="not a torch device name"):
        torch_device("gpu-seven")
    assert observed_peak("cpu") == ObservedPeak()


def test_out_of_memory_recognition() -> None:
    from vramgate.integrations._torch_peak import is_oom

    assert is_oom(torch.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("CUDA out of memory"))


# --------------------------------------------------------------------------- the README's snippet


def readme_snippet() -> str:
    """The Python block of the README's "diffusers adapter" section."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## diffusers adapter", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.anyio
async def test_the_readme_snippet_runs_on_the_cpu_with_a_simulated_gpu(pipe: Any) -> None:
    import vramgate
    from vramgate.config import AdmissionSettings, DevicesConfig, GateConfig
    from vramgate.messages import GenerationRequest

    body = "\n".join(f"    {line}" if line.strip() else "" for line in readme_snippet().splitlines())
    source = f"async def snippet(gate, request, pipe):\n{body}\n    return result, frames\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, "README.md", "exec"), namespace)
    config = GateConfig(
        devices=DevicesConfig(use_real_gpus=False, simulate=("H200-141GB",)),
        admission=AdmissionSettings(ram_budget="256GiB"),
    )
    request = GenerationRequest(model="t2v-A14B", width=16, height=16, frames=5, steps=STEPS)
    async with vramgate.open_gate(config) as gate:
        result, frames = await namespace["snippet"](gate, request, pipe)
        assert frames.shape == (1, 5, 16, 16, 3)
        assert result.applied.device == "cpu"
        assert result.observed == ObservedPeak()


# --------------------------------------------------------------------------- host RAM techniques


def _text_encoder_alive(ref: Any) -> bool:
    import gc

    gc.collect()
    return ref() is not None


@pytest.mark.anyio
@pytest.mark.parametrize("offload_model", [False, True])
async def test_free_text_encoder_encodes_first_then_frees_it_before_denoising(pipe: Any, offload_model: bool) -> None:
    import weakref

    ref = weakref.ref(pipe.text_encoder)
    alive_at_steps: list[bool] = []

    def on_step(p: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        alive_at_steps.append(_text_encoder_alive(ref))
        return tensors

    lease = RecordingLease(run_params(free_text_encoder=True, offload_model=offload_model, dit_dtype="fp32"))
    result = await run_in_lease(
        pipe,
        lease,
        prompt="a cat walks on the beach",
        negative_prompt="blurry",
        max_sequence_length=16,
        output_type="np",
        callback_on_step_end=on_step,
    )

    assert result.output.frames.shape == (1, 5, 16, 16, 3)
    assert lease.reports == [(None, "ok")]
    assert result.applied.free_text_encoder
    assert any(action.startswith("free_text_encoder:") for action in result.applied.actions)
    # the text encoder is gone while denoising (nothing, offload hooks included, keeps it alive) and after
    assert alive_at_steps == [False] * STEPS
    assert pipe.text_encoder is None
    assert not _text_encoder_alive(ref)
    # the pipeline runs again from embeddings
    again = await run_in_lease(pipe, RecordingLease(run_params(free_text_encoder=True)), **embeddings())
    assert again.output.frames.shape == (1, 5, 16, 16, 3)


@pytest.mark.anyio
async def test_free_text_encoder_keeps_it_when_the_call_would_still_need_it(pipe: Any) -> None:
    lease = RecordingLease(run_params(free_text_encoder=True, dit_dtype="fp32"))
    # embeddings for the prompt but none for the negative prompt: the call encodes that one itself
    kwargs = embeddings()
    del kwargs["negative_prompt_embeds"]
    result = await run_in_lease(pipe, lease, max_sequence_length=8, **kwargs)
    assert result.output.frames.shape == (1, 5, 16, 16, 3)
    assert pipe.text_encoder is not None


def test_one_expert_in_ram_is_reported_as_not_applied(pipe: Any) -> None:
    applied = apply_plan(pipe, run_params(one_expert_in_ram=True), device="cpu")
    assert [(n.option, n.value) for n in applied.not_applied] == [("one_expert_in_ram", "True")]
    assert "checkpoint" in applied.not_applied[0].reason
    assert pipe.text_encoder is not None
