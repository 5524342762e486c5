"""The time model of one Wan-style generation run: a roofline per phase (see ``_physics.py`` for the memory model).

Each phase's time is the larger of its compute time (FLOPs over the GPU's dense bf16 throughput times the
architecture's fitted compute efficiency) and its memory time (bytes moved over the GPU's memory bandwidth times
the fitted memory efficiency):

* denoise, per forward pass and rank: the DiT's matmul and attention FLOPs against the weights read once and the
  elementwise traffic (fp32 modulation and norms, the fp64 RoPE); an FSDP run's all-gather of the weights over
  the interconnect is prefetched, so it is a third bound of the same step; a sequence-parallel (Ulysses) run adds
  its four all-to-alls per block (q, k, v and the attention output), which the next block waits for;
* text encode: the encoder's FLOPs against its weights (or the CPU's throughput with ``t5_cpu``);
* VAE decode (and encode for i2v): the fp32 convolutions against their traffic (memory-bound in practice);
* weight transfers and block streaming: bytes over the host link at the fitted link efficiencies.

GPU-to-GPU traffic runs at the catalog's interconnect (NVLink or PCIe) bandwidth times a fitted efficiency.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramgate.messages.plans import RunParams
from vramgate.policy._derived import Derived
from vramgate.policy.calibration import Calibration
from vramgate.policy.gpus import GpuSpec

#: bf16 activations crossing the interconnect in a Ulysses all-to-all, bytes per element.
_A2A_BYTES = 2.0
#: All-to-alls per DiT block in Ulysses sequence parallelism: q, k and v before attention, the output after.
_A2A_PER_BLOCK = 4


@dataclass(frozen=True, slots=True)
class Roofline:
    """The rates of one GPU under a calibration, in FLOP/s and bytes/s."""

    flops: float
    bandwidth: float
    interconnect: float
    host_link: float

    @classmethod
    def of(cls, gpu: GpuSpec, cal: Calibration) -> Roofline:
        return cls(
            flops=gpu.bf16_tflops * 1e12 * cal.compute_efficiency_for(gpu.architecture),
            bandwidth=gpu.memory_bandwidth_gbps * 1e9 * cal.memory_efficiency,
            interconnect=gpu.peer_link_gbps * 1e9 * cal.interconnect_efficiency,
            host_link=gpu.host_link_gbps * 1e9,
        )

    def phase(self, flops: float, moved: float) -> float:
        """Seconds of a phase doing ``flops`` and moving ``moved`` bytes through memory: whichever bounds it."""
        return max(flops / self.flops, moved / self.bandwidth)


@dataclass(frozen=True, slots=True)
class Times:
    """Seconds of each phase of one run."""

    denoise: float
    communication: float
    text: float
    vae: float
    transfers: float
    stream: float


def run_times(
    params: RunParams,
    d: Derived,
    gpu: GpuSpec,
    cal: Calibration,
    *,
    tokens: int,
    pixels: int,
    moved: float,
    streamed: float,
    block_bytes: float,
) -> Times:
    """The phase times of ``params`` on ``gpu``: ``moved`` bytes go whole-module over the host link, ``streamed``
    bytes of DiT blocks stream over it every forward, and ``block_bytes`` is one DiT block as computed on."""
    o = params.options
    world = o.gpus
    sp = o.ulysses
    roof = Roofline.of(gpu, cal)
    forwards = params.steps * d.guidance_passes

    per_forward = tokens * (d.linear_flops_per_token + d.cross_flops_per_token) + (
        tokens * tokens * d.attn_flops_per_token_per_token
    )
    weights = block_bytes * d.layers  # every rank reads the whole DiT once per forward
    elementwise = cal.elementwise_bytes_per_token_dim * tokens * d.dim * d.layers
    step = roof.phase(per_forward / sp, weights + elementwise / sp)
    if o.dit_fsdp:
        step = max(step, weights * (world - 1) / world / roof.interconnect)
    a2a = 0.0
    if sp > 1:
        a2a = _A2A_PER_BLOCK * d.layers * (tokens / sp) * d.dim * _A2A_BYTES * (sp - 1) / sp / roof.interconnect

    if o.t5_cpu:
        t_text = d.text_encoder_flops / (cal.cpu_text_encoder_gflops * 1e9)
    else:
        share = world if o.t5_fsdp else 1
        t_text = roof.phase(d.text_encoder_flops / share, d.text_encoder_bytes / share)

    vae_flops = d.vae_decode_flops_per_pixel * pixels * params.frames
    if params.task == "i2v":
        vae_flops += d.vae_encode_flops_per_pixel * pixels * params.frames
    t_vae = roof.phase(vae_flops, vae_flops * cal.vae_bytes_per_flop)
    if o.vae_tiling:
        t_vae *= 1.25  # overlapping tiles are computed twice at their seams

    return Times(
        denoise=forwards * step,
        communication=forwards * a2a,
        text=t_text,
        vae=t_vae,
        transfers=moved / (roof.host_link * cal.pageable_link_efficiency),
        stream=forwards * streamed / (roof.host_link * cal.stream_link_efficiency),
    )
