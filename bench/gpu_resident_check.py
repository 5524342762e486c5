"""GPU check of resident models on a real NVIDIA GPU (run on a machine with one; prints PASS/FAIL per check).

    python bench/gpu_resident_check.py

A diffusers Wan2.1 T2V-1.3B pipeline of the real shapes (random weights: no download), bf16, is loaded on the
GPU and declared resident to a gate over that GPU (``declare_pipeline``). Two requests then run through the gate,
one after the other, with the real pipeline (4 steps of 832x480, 17 frames). Checks:

1. the declared weights are what torch allocated loading the pipeline (within 1 %);
2. the ledger counts them as resident, not as others' use;
3. each request reserves only its working memory: its plan's VRAM less the plan's weights (they are resident);
4. each run's measured peak (torch's ``max_memory_allocated``) stays within the resident weights plus its
   reservation, and the ledger's figures add up to what NVML measures on the device within 2 GiB.

Exits non-zero when a check fails. About a minute on an H100 (most of it building the 5.7B text encoder).
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

from vramgate.config import AdmissionSettings, CleanupConfig, GateConfig, MonitorConfig
from vramgate.gate import open_gate
from vramgate.integrations.diffusers import declare_pipeline, pipeline_memory, run_in_lease
from vramgate.messages import GenerationRequest, RunOptions
from vramgate.policy._resident import weights_mb

MIB = 1 << 20
MODEL = "wan2.1-t2v-1.3B"
failures = 0


def check(name: str, ok: bool, detail: str) -> None:
    global failures
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    failures += 0 if ok else 1


def build_pipeline(device: str) -> Any:
    """Wan2.1 T2V-1.3B's transformer, umT5-XXL's encoder and the Wan2.1 VAE at their real shapes, on ``device``."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=12,
            attention_head_dim=128,
            in_channels=16,
            out_channels=16,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=8960,
            num_layers=30,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=1024,
        ).to(torch.bfloat16)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=256384,
                d_model=4096,
                d_kv=64,
                d_ff=10240,
                num_layers=24,
                num_heads=64,
                feed_forward_proj="gated-gelu",
            )
        ).to(torch.bfloat16)
        vae = AutoencoderKLWan()  # Wan2.1's VAE, fp32
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


async def main() -> None:
    import torch

    config = GateConfig(
        monitor=MonitorConfig(interval_s=0.2),
        admission=AdmissionSettings(stale_after_s=5.0),
        cleanup=CleanupConfig(after_run=True),
    )
    request = GenerationRequest(
        model=MODEL,
        width=832,
        height=480,
        frames=17,
        steps=4,
        max_level="none",
        options=RunOptions(dit_dtype="bf16", convert_model_dtype=True, runner="diffusers"),
    )
    async with open_gate(config) as gate:
        index = gate.device_configs[0].index
        device = f"cuda:{index}"
        before = torch.cuda.memory_allocated(device)
        pipe = build_pipeline(device)
        torch.cuda.synchronize(device)
        loaded_mb = (torch.cuda.memory_allocated(device) - before) / MIB
        measured = pipeline_memory(pipe, device)
        declared = await declare_pipeline(gate, pipe, model=MODEL, device=index)
        check(
            "declared weights are what loading allocated",
            abs(declared.vram_mb - loaded_mb) <= 0.01 * loaded_mb + 16,
            f"declared {declared.vram_mb} MiB ({measured.vram_by_component}), torch allocated {loaded_mb:,.0f} MiB",
        )
        for _ in range(50):  # a fresh sample, taken after the load, reaches admission
            await anyio.sleep(0.1)
            ledger = gate.statistics().devices[0].ledger
            if ledger.resident_mb == declared.vram_mb and (ledger.sample_age_s or 0) < 0.3:
                break
        ledger = gate.statistics().devices[0].ledger
        check(
            "resident, not others' use",
            ledger.resident_mb == declared.vram_mb and ledger.others_mb < 2048,
            f"resident {ledger.resident_mb} MiB, others {ledger.others_mb} MiB (CUDA context and the like)",
        )
        generator = torch.Generator(device=device).manual_seed(1)
        embeds = torch.randn(1, 512, 4096, generator=generator, device=device, dtype=torch.bfloat16)
        for run in (1, 2):
            async with gate.admit(request) as lease:
                weights = weights_mb(lease.plan)
                working = lease.plan.requirement.vram_mb - weights
                check(
                    f"run {run} reserves only its working memory",
                    lease.reservation_mb == working and weights <= declared.vram_mb,
                    f"reservation {lease.reservation_mb} MiB; plan {lease.plan.requirement.vram_mb} MiB of which "
                    f"{weights} MiB weights (declared {declared.vram_mb}); working memory {working} MiB",
                )
                torch.cuda.reset_peak_memory_stats(device)
                result = await run_in_lease(
                    pipe, lease, device=device, prompt_embeds=embeds, negative_prompt_embeds=embeds, output_type="np"
                )
                peak_mb = torch.cuda.max_memory_allocated(device) / MIB - before / MIB
                during = gate.statistics().devices[0]
                check(
                    f"run {run} peak within resident weights plus its reservation",
                    peak_mb <= declared.vram_mb + lease.reservation_mb,
                    f"peak {peak_mb:,.0f} MiB allocated; resident {declared.vram_mb} + reservation "
                    f"{lease.reservation_mb} = {declared.vram_mb + lease.reservation_mb} MiB "
                    f"(working memory used {peak_mb - declared.vram_mb:,.0f} of {lease.reservation_mb} MiB); "
                    f"frames {getattr(result.output, 'frames', None) is not None}",
                )
                accounted = during.ledger.resident_mb + during.ledger.reserved_mb + during.ledger.others_mb
                used = during.measured_used_mb or 0
                check(
                    f"run {run} ledger adds up to the measured use",
                    used <= accounted + 2048,
                    f"NVML used {used} MiB; resident + reserved + others = {accounted} MiB",
                )
        await gate.wait_idle()
        ledger = gate.statistics().devices[0].ledger
        check(
            "kept after the runs",
            ledger.reserved_mb == 0 and ledger.resident_mb == declared.vram_mb,
            f"reserved {ledger.reserved_mb} MiB, resident {ledger.resident_mb} MiB",
        )


if __name__ == "__main__":
    anyio.run(main)
    sys.exit(1 if failures else 0)
