"""The memory and time model of one Wan-style generation run (see ``estimate.py`` for the public API).

It follows what Wan2.2's ``generate.py`` does (``wan/text2video.py``, ``image2video.py``,
``textimage2video.py``). The DiT's activations are those of the runner the plan names (``generate.py``,
``diffusers``, ``diffsynth``: traced per profile by ``vramgate profile trace``, see :func:`dit_activations`);
plans that stream DiT blocks (``resident_blocks``, ``sequential_offload``) cannot run under generate.py, so
a generate.py plan that streams is priced as DiffSynth-Studio, which does. Where generate.py keeps the weights:

* one GPU: the DiT experts start on the CPU; the expert a step needs is moved to the GPU and the other one back
  (one expert resident at a time); with ``offload_model`` the T5 encoder returns to the CPU after encoding and
  the DiT goes to the CPU before the VAE decode;
* several GPUs: every expert is resident (sharded with ``dit_fsdp``, in its loaded dtype: FSDP keeps fp32 shards
  and gathers bf16 blocks), ``offload_model`` swaps the inactive expert out; the VAE decode runs on rank 0;
* sequence parallelism (``ulysses``) splits the tokens, except the per-token time modulation, which every rank
  computes for the whole sequence before splitting.

Memory is computed per phase (text encode, VAE encode, denoise, VAE decode) and the peak is the largest phase;
time is a roofline per phase (``_roofline.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from vramgate.messages.plans import ResolvedOptions, RunParams
from vramgate.messages.requests import RunnerName
from vramgate.policy import _host_ram as host_ram
from vramgate.policy._derived import MIB, Derived
from vramgate.policy._roofline import run_times
from vramgate.policy.calibration import Calibration
from vramgate.policy.gpus import GpuSpec

#: fp32 RGB output video, per pixel per frame.
_OUT_BYTES = 3 * 4.0


@dataclass(slots=True)
class Breakdown:
    """Numbers of one estimate, in bytes and seconds, before rounding into messages."""

    peak_phase: str
    activation_peak: str  # the DiT module at the activations' peak, when traced
    runner: str
    # VRAM parts at the peak phase (bytes)
    dit_weights: float
    lora: float
    text_encoder: float
    vae_weights: float
    activations: float
    vae_work: float
    runtime: float
    # Host RAM (bytes)
    ram_weights: float
    ram_runtime: float
    # Time (seconds)
    t_denoise: float
    t_comm: float
    t_text: float
    t_vae: float
    t_transfers: float
    t_stream: float
    t_overhead: float
    tokens: int
    tokens_per_gpu: int
    t_disk: float = 0.0  # weights read back from the checkpoint (``one_expert_in_ram``, ``free_text_encoder``)

    @property
    def vram(self) -> float:
        return (
            self.dit_weights
            + self.lora
            + self.text_encoder
            + self.vae_weights
            + self.activations
            + self.vae_work
            + self.runtime
        )

    @property
    def seconds(self) -> float:
        return (
            self.t_denoise
            + self.t_comm
            + self.t_text
            + self.t_vae
            + self.t_transfers
            + self.t_stream
            + self.t_overhead
            + self.t_disk
        )


def lora_bytes(params: RunParams, d: Derived) -> float:
    """LoRA weights on the GPU: ``size_mb`` when given, else rank r on every linear layer of a block."""
    total = 0.0
    for lora in params.lora:
        if lora.size_mb is not None:
            total += lora.size_mb * MIB
        else:
            rank = lora.rank if lora.rank is not None else 32
            # q, k, v, o (self and cross) and the two FFN layers of every block: r * (in + out) each, bf16.
            per_block = rank * (8 * 2 * d.dim + 2 * (d.dim + d.ffn_dim))
            total += per_block * d.layers * 2.0 * d.experts
    return total


def dit_weight_bytes(o: ResolvedOptions, d: Derived) -> tuple[float, float, float]:
    """(bytes per parameter stored, bytes of one expert as stored, bytes of one block gathered for compute)."""
    # convert_model_dtype casts before sharding (Wan's generate.py ignores it under FSDP: leave it off to match).
    stored = d.param_bytes if o.convert_model_dtype else d.checkpoint_bytes
    if o.dit_dtype == "fp8":
        stored = min(stored, 1.0)
    compute = min(d.param_bytes, stored) if o.dit_dtype != "fp8" else d.param_bytes
    return stored, d.expert_params * stored, d.block_params * compute


def dit_activations(
    o: ResolvedOptions, d: Derived, cal: Calibration, tokens: int, local_tokens: int, blocks_streamed: bool
) -> tuple[float, str]:
    """Live DiT activation bytes at the denoising peak of the plan's runner, and the module at that peak.

    A runner's traced term (``vramgate profile trace``) is used when the profile has one. Otherwise the
    calibrated formulas: ``generate.py``'s (fp32 residual and modulation, float64 RoPE, the FFN, and the
    per-token time modulation for the whole sequence) or the streaming runners' (bf16 residual, one time
    modulation per sample unless the model has per-token timesteps). generate.py cannot stream DiT blocks,
    so its streamed plans are priced as DiffSynth-Studio, which does (and whose DiT holds no more than Wan's).
    """
    own = _runner_activations(o.runner, d, cal, tokens, local_tokens)
    if o.runner == "generate.py" and blocks_streamed:
        return min(own, _runner_activations("diffsynth", d, cal, tokens, local_tokens))
    return own


def _runner_activations(
    runner: RunnerName, d: Derived, cal: Calibration, tokens: int, local_tokens: int
) -> tuple[float, str]:
    term = d.activations.get(runner)
    if term is not None:
        value = term.bytes_per_token * local_tokens + term.bytes_per_full_token * tokens + term.fixed_bytes
        return value, term.peak_phase
    ffn_act = cal.act_ffn_bytes_per_token * d.ffn_dim
    act_full = cal.act_full_bytes_per_token_dim * d.dim * tokens
    if runner == "generate.py":
        return (cal.act_local_bytes_per_token_dim * d.dim + ffn_act) * local_tokens + act_full, ""
    streamed = (cal.act_streamed_bytes_per_token_dim * d.dim + ffn_act) * local_tokens
    return streamed + (act_full if d.token_timesteps else 0.0), ""


def compute(params: RunParams, d: Derived, gpu: GpuSpec, cal: Calibration) -> Breakdown:
    o = params.options
    world = o.gpus
    sp = o.ulysses if o.ulysses > 1 else 1
    blocks_streamed = o.sequential_offload or (o.resident_blocks is not None and o.resident_blocks < d.layers)

    # ---------------------------------------------------------------- sizes
    lt = (params.frames - 1) // d.frame_multiple + 1
    pixels = params.width * params.height
    tokens = lt * (params.height // d.spatial_multiple) * (params.width // d.spatial_multiple)
    local_tokens = -(-tokens // sp)
    stored_bpp, expert_bytes, block_compute_bytes = dit_weight_bytes(o, d)

    # ---------------------------------------------------------------- DiT weights on each GPU while denoising
    # Without FSDP one expert is resident at a time (the other waits on the host and is swapped in at the
    # boundary, as Wan does on one GPU). With FSDP every expert's shards stay resident unless offload_model
    # swaps the inactive one out, and the blocks being computed are gathered in the compute dtype.
    if o.dit_fsdp:
        experts_resident = 1 if o.offload_model else d.experts
        dit_denoise = experts_resident * expert_bytes / world + cal.fsdp_unsharded_blocks * block_compute_bytes
    else:
        dit_denoise = expert_bytes
    if blocks_streamed:
        # Streaming keeps the embeddings, ``resident`` blocks and two block buffers; never more than without it.
        resident = 0 if o.sequential_offload else min(o.resident_blocks or 0, d.layers)
        streamed_resident = (d.nonblock_params + resident * d.block_params) * stored_bpp + 2.0 * block_compute_bytes
        dit_denoise = min(dit_denoise, streamed_resident)
    experts_on_gpu_after = 0.0 if o.offload_model else dit_denoise
    lora = lora_bytes(params, d)
    # FSDP runs shard and place the DiT at start-up; otherwise the expert is moved in when denoising starts.
    dit_before = dit_denoise + lora if o.dit_fsdp else 0.0

    # ---------------------------------------------------------------- text encoder on each GPU
    te_full = d.text_encoder_bytes + d.image_encoder_bytes
    if o.t5_cpu:
        te_encode = te_stay = 0.0
    else:
        te_encode = te_full / world if o.t5_fsdp else te_full
        if o.sequential_offload:
            te_encode = min(te_encode, te_full / 12.0)  # two of its 24 layers on the GPU at a time
        te_stay = 0.0 if (o.offload_model or o.sequential_offload or o.free_text_encoder) else te_encode
    te_act = cal.text_encoder_activation_mb * MIB if not o.t5_cpu else 0.0

    # ---------------------------------------------------------------- activations and VAE work
    activations, activation_peak = dit_activations(o, d, cal, tokens, local_tokens, blocks_streamed)
    if sp > 1:
        activations += cal.sp_extra_bytes_per_token_dim * d.dim * tokens
    # the latent video and the scheduler's copies of it (noise prediction, conditional, unconditional), fp32
    latents = 4.0 * 4.0 * d.latent_channels * lt * pixels / d.vae_pixels_per_latent
    activations += latents

    vbpp = d.vae_decode_bytes_per_pixel or cal.vae_bytes_per_pixel(d.vae_family)
    work_pixels = min(pixels, cal.vae_tile_pixels * 1.5) if o.vae_tiling else pixels
    decode_work = vbpp * work_pixels + 2.0 * _OUT_BYTES * pixels * params.frames
    vae_term = d.vae_decode.get(o.runner)
    if vae_term is not None:  # the runner's own VAE code, traced
        decode_work = vae_term.bytes_per_pixel * work_pixels + vae_term.bytes_per_pixel_frame * pixels * params.frames
    encode_work = 0.0
    if params.task == "i2v":
        encode_work = cal.vae_encode_fraction * vbpp * work_pixels + 2.0 * _OUT_BYTES * pixels * params.frames

    vae_w = d.vae_bytes
    runtime = (cal.runtime_overhead_mb + (cal.multi_gpu_overhead_mb if o.dit_fsdp else 0.0)) * MIB

    # ---------------------------------------------------------------- phases
    phases: dict[str, tuple[float, float, float, float, float]] = {
        # name: (dit+lora, text encoder, activations, vae work, extra)
        "text_encode": (dit_before, te_encode, te_act, 0.0, 0.0),
        "denoise": (dit_denoise + lora, te_stay, activations, 0.0, 0.0),
        "vae_decode": ((experts_on_gpu_after + lora) if not o.offload_model else 0.0, te_stay, latents, decode_work, 0),
    }
    if params.task == "i2v":
        phases["vae_encode"] = (dit_before, te_stay, 0.0, encode_work, 0.0)
    peak_phase = max(phases, key=lambda name: sum(phases[name]))
    p_dit, p_te, p_act, p_vae, _ = phases[peak_phase]
    p_lora = min(lora, p_dit)
    p_dit -= p_lora

    # ---------------------------------------------------------------- host RAM
    # Per process, phase by phase (``_host_ram``): the peak is the largest phase.
    ram_w = max(host_ram.phases(o, d, stored_bpp, blocks_streamed).values()) * world
    # Every process: Python, torch, the CUDA context's host side and kernels; rank 0 also holds the decoded
    # video's fp32 host copy (what the pipeline returns before it is encoded).
    ram_rt = cal.host_runtime_mb * MIB * world + _OUT_BYTES * pixels * params.frames

    # ---------------------------------------------------------------- time (a roofline per phase: _roofline.py)
    moved = 0.0  # bytes moved whole-module between host and GPU
    switches = d.experts - 1
    if not blocks_streamed:
        if not o.dit_fsdp:
            moved += expert_bytes * (1 + 2 * switches)  # load the first expert, swap at each boundary
            if o.offload_model:
                moved += expert_bytes  # the last expert leaves before the VAE decode
        elif o.offload_model:
            moved += expert_bytes / world * (2 + 2 * switches)
    if not (o.t5_cpu or o.t5_fsdp):
        moved += te_full * (2.0 if o.offload_model else 1.0)
    streamed = 0.0  # bytes of DiT blocks streamed over the host link every forward
    if blocks_streamed:
        resident = 0 if o.sequential_offload else min(o.resident_blocks or 0, d.layers)
        # fp8 weights gain nothing on the link: they are upcast to the compute dtype before the copy
        streamed = (d.layers - resident) * d.block_params * max(stored_bpp, d.param_bytes)
    t = run_times(
        params,
        d,
        gpu,
        cal,
        tokens=tokens,
        pixels=pixels,
        moved=moved,
        streamed=streamed,
        block_bytes=block_compute_bytes,
    )
    return Breakdown(
        peak_phase=peak_phase,
        activation_peak=activation_peak,
        runner=o.runner,
        dit_weights=p_dit,
        lora=p_lora,
        text_encoder=p_te,
        vae_weights=vae_w,
        activations=p_act,
        vae_work=p_vae,
        runtime=runtime,
        ram_weights=ram_w,
        ram_runtime=ram_rt,
        t_denoise=t.denoise,
        t_comm=t.communication,
        t_text=t.text,
        t_vae=t.vae,
        t_transfers=t.transfers,
        t_stream=t.stream,
        t_overhead=cal.run_overhead_s,
        tokens=tokens,
        tokens_per_gpu=local_tokens,
        t_disk=host_ram.load_seconds(o, d),
    )
