"""A real diffusers pipeline (a small Wan pipeline with random weights, on the CPU) declared resident on a
simulated GPU: each run through the gate reserves only its working memory, and runs the real pipeline."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from vramgate.clock import ManualClock
from vramgate.config import AdmissionSettings, CleanupConfig, DevicesConfig, GateConfig, MonitorConfig
from vramgate.gate import open_gate
from vramgate.hardware import detect
from vramgate.messages import GenerationRequest, RunOptions
from vramgate.policy._resident import weights_mb
from vramgate.policy.estimate import Estimator
from vramgate.policy.models import DEFAULT_MODEL_CATALOG, DitSpec, ModelCatalog, ModelProfile, TextEncoderSpec, VaeSpec

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from test_diffusers import WORDS, embeddings, tiny_tokenizer  # noqa: E402

from vramgate.integrations.diffusers import declare_pipeline, pipeline_memory, run_in_lease  # noqa: E402

pytestmark = pytest.mark.anyio

DIM = 64  # wide enough that each component's weights are MiB, small enough to run on a CPU in a second
FFN = 4096
TEXT_DIM = 32


def small_pipe() -> Any:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(WORDS) + 3, d_model=TEXT_DIM, d_kv=8, d_ff=FFN, num_layers=2, num_heads=4)
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=DIM // 2,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=FFN,
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


def profile_of(pipe: Any) -> ModelProfile:
    """The pipeline described as a model profile, with its real parameter counts (fp32, as built)."""

    def count(module: Any) -> int:
        return sum(p.numel() for p in module.parameters())

    return ModelProfile(
        name="small-wan",
        dit=DitSpec(
            dim=DIM,
            ffn_dim=FFN,
            heads=2,
            layers=2,
            text_dim=TEXT_DIM,
            params_b=count(pipe.transformer) / 1e9,
            checkpoint_dtype="fp32",
            param_dtype="fp32",
        ),
        vae=VaeSpec(family="wan2.1", stride=(4, 8, 8), z_dim=16, params_m=count(pipe.vae) / 1e6),
        text_encoder=TextEncoderSpec(
            name="small-umt5",
            params_b=count(pipe.text_encoder) / 1e9,
            dtype="fp32",
            text_len=8,
            dim=TEXT_DIM,
            ffn_dim=FFN,
            layers=2,
        ),
        default_frames=5,
        default_steps=2,
    )


def _config() -> GateConfig:
    return GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=0.05),
        admission=AdmissionSettings(ram_budget="256GiB"),
        cleanup=CleanupConfig(after_run=False),
    )


async def test_a_declared_pipeline_is_reserved_once_and_each_run_reserves_its_working_memory() -> None:
    pipe = small_pipe()
    catalog = ModelCatalog((*DEFAULT_MODEL_CATALOG.all(), profile_of(pipe)))
    clock = ManualClock()
    devices = detect(("L4",), nvml=False, torch=False, clock=clock)
    request = GenerationRequest(
        model="small-wan",
        width=16,
        height=16,
        frames=5,
        steps=2,
        guidance_scale=5.0,
        options=RunOptions(dit_dtype="fp32", runner="diffusers"),
    )
    async with open_gate(_config(), clock=clock, devices=devices, estimator=Estimator(models=catalog)) as gate:
        measured = pipeline_memory(pipe, "cpu")
        assert set(measured.vram_by_component) == {"transformer", "text_encoder", "vae"}
        assert measured.vram_by_component["transformer"] >= 2  # MiB: big enough to tell apart
        declared = await declare_pipeline(gate, pipe, model="small-wan", device=0)
        assert (declared.vram_mb, declared.ram_mb, declared.dtype) == (measured.vram_mb, 0, "fp32")
        assert set(declared.components) == {"transformer", "text_encoder", "vae"}
        with anyio.fail_after(10):
            while gate.statistics().devices[0].ledger.resident_mb != declared.vram_mb:
                clock.advance(0.05)
                await anyio.sleep(0.001)
        reservations = []
        for _ in range(2):
            async with gate.admit(request) as lease:
                weights = weights_mb(lease.plan)
                assert 0 < weights <= declared.vram_mb  # the plan's weights are all resident
                assert lease.reservation_mb == lease.plan.requirement.vram_mb - weights
                reservations.append(lease.reservation_mb)
                run = await run_in_lease(pipe, lease, device="cpu", **embeddings())
                assert run.output.frames.shape[1] == 5
                (model,) = gate.statistics().devices[0].ledger.resident
                assert model.leases == 1
        assert reservations[0] == reservations[1]
        await gate.wait_idle()
        ledger = gate.statistics().devices[0].ledger
        assert (ledger.reserved_mb, ledger.resident_mb) == (0, declared.vram_mb)  # kept after the runs
