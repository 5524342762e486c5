"""The estimator's free constants, each with a physical meaning, fitted to published figures.

The values live in ``calibration.json`` next to this module, written by ``python -m vramgate.policy.fit`` from the
reference data (``wan_published.csv`` and ``offload_tradeoffs.csv``); the file records the data and the command
that produced it. Nothing here is typed in by hand except the starting point of the fit and the constants the
fit does not touch (marked "fixed" below, each derived from the code it describes).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Annotated

import msgspec

from vramgate.errors import ConfigError
from vramgate.messages.codec import Codec

Pos = Annotated[float, msgspec.Meta(gt=0.0)]
NonNeg = Annotated[float, msgspec.Meta(ge=0.0)]
Frac = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]

#: The file the default calibration is read from (inside the package).
CALIBRATION_FILE = "calibration.json"


class Calibration(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The constants of the memory and time model.

    Memory (per GPU):

    * ``act_local_bytes_per_token_dim`` - bytes of live DiT activations per token of the local (sequence-parallel
      split) sequence per unit of model width (float32 residual and modulation, qkv, the float64 RoPE copies),
      in ``generate.py``. Used only for profiles without a traced ``generate.py`` term (the built-ins have one,
      see ``vramgate profile trace``); fixed at the value once fitted to ``wan_published.csv``.
    * ``act_full_bytes_per_token_dim`` - bytes per token per unit of width that every rank holds for the *whole*
      sequence (the per-token time modulation ``e``/``e0`` that ``sp_dit_forward`` computes before it splits);
      a fallback like the one above.
    * ``sp_extra_bytes_per_token_dim`` - bytes per token of the whole sequence per unit of width that every rank
      of a Ulysses sequence-parallel run holds beyond what the traced forward does (the traced ``generate.py``
      term explains the one-GPU rows of ``wan_published.csv``; the four-GPU rows need this much more per token:
      all-to-all staging and allocator fragmentation, not in the trace). Fitted.
    * ``act_ffn_bytes_per_token`` - bytes per token per unit of FFN width (fixed: two bf16 tensors, pre/post GELU).
    * ``act_streamed_bytes_per_token_dim`` - bytes of live DiT activations per token of the local sequence per unit
      of width in the runners that stream DiT blocks (DiffSynth-Studio's VRAM management, diffusers' group and
      sequential offloading), which is what ``resident_blocks``/``sequential_offload`` plans run: their DiTs keep
      the residual stream in bf16 and compute the time modulation once per sample, so they have no whole-sequence
      term (except for models with per-token timesteps). Fitted to the streamed rows of ``offload_tradeoffs.csv``;
      used for ``diffsynth`` and for runners a profile has no traced term for.
    * ``runtime_overhead_mb`` - CUDA context, cuBLAS/cuDNN workspaces and allocator slack on every GPU.
    * ``multi_gpu_overhead_mb`` - NCCL communicators and FSDP bookkeeping of a DiT-sharded (FSDP) run, per GPU.
    * ``fsdp_unsharded_blocks`` - transformer blocks FSDP holds gathered at once (current and prefetched; fixed).
    * ``vae_decode_bytes_per_pixel`` - VAE decoder working memory per output pixel of one frame chunk, by family.
    * ``vae_encode_fraction`` - encoder working memory as a fraction of the decoder's (fixed).
    * ``vae_tile_pixels`` - pixels of one spatial tile when VAE tiling is on (fixed).
    * ``text_encoder_activation_mb`` - text encoder working memory for one prompt batch (fixed).

    Host RAM (per process, besides the weights it holds):

    * ``host_runtime_mb`` - the resident set of a Python process with torch, the CUDA context, cuBLAS, cuDNN,
      attention kernels and transformers/accelerate loaded (fixed: ``bench/host_ram.py`` measured 960 MiB on an
      H100; rounded up for the pipeline's own objects and the tokenizer). The decoded video's fp32 host copy is
      added per run. Pinned staging is not included: the placements vramgate plans (accelerate's sequential
      offload, diffusers group offloading without streams) copy from pageable memory.

    Time (a roofline per phase, see ``_roofline.py``):

    * ``compute_efficiency`` - achieved fraction of the GPU's dense bf16 peak in compute-bound work (the DiT's
      matmuls and attention, the text encoder), by GPU architecture (``default`` for others).
    * ``memory_efficiency`` - achieved fraction of the GPU's memory bandwidth in memory-bound work.
    * ``interconnect_efficiency`` - achieved fraction of the GPU-to-GPU link (the catalog's NVLink or PCIe figure,
      one direction) in the collectives of multi-GPU runs (Ulysses all-to-alls, FSDP all-gathers).
    * ``elementwise_bytes_per_token_dim`` - memory traffic of the DiT's elementwise work (fp32 modulation and
      norms, fp64 RoPE) per token per unit of width per layer.
    * ``vae_bytes_per_flop`` - memory traffic per convolution FLOP of the fp32 VAE (it is bandwidth-bound).
    * ``pageable_link_efficiency`` - fraction of the host link a whole-module ``.to()`` copy reaches.
    * ``stream_link_efficiency`` - fraction of the host link block/layer weight streaming reaches.
    * ``cpu_text_encoder_gflops`` - achieved CPU throughput of the text encoder with ``t5_cpu``.
    * ``run_overhead_s`` - per-run fixed seconds (scheduler setup, synchronisation, host-side work).

    Fit:

    * ``safety_margin_fraction`` - share of a GPU's memory kept free when deciding whether an estimate fits
      (allocator fragmentation and memory other libraries take outside the caching allocator).
    """

    act_local_bytes_per_token_dim: Pos = 40.4
    act_full_bytes_per_token_dim: Pos = 36.74
    sp_extra_bytes_per_token_dim: NonNeg = 0.0
    act_ffn_bytes_per_token: NonNeg = 4.0
    act_streamed_bytes_per_token_dim: Pos = 30.0
    runtime_overhead_mb: NonNeg = 1200.0
    multi_gpu_overhead_mb: NonNeg = 1500.0
    fsdp_unsharded_blocks: NonNeg = 2.0
    vae_decode_bytes_per_pixel: dict[str, Pos] = msgspec.field(
        default_factory=lambda: {"wan2.1": 12000.0, "wan2.2": 20000.0}
    )
    vae_encode_fraction: Pos = 0.5
    vae_tile_pixels: Pos = 256.0 * 256.0
    text_encoder_activation_mb: NonNeg = 300.0
    host_runtime_mb: NonNeg = 1024.0
    compute_efficiency: dict[str, Frac] = msgspec.field(
        default_factory=lambda: {"hopper": 0.55, "ampere": 0.62, "ada": 0.65, "blackwell": 0.6, "default": 0.5}
    )
    memory_efficiency: Frac = 0.7
    interconnect_efficiency: Frac = 0.6
    elementwise_bytes_per_token_dim: NonNeg = 200.0
    vae_bytes_per_flop: Pos = 0.5
    pageable_link_efficiency: Frac = 0.25
    stream_link_efficiency: Frac = 0.35
    cpu_text_encoder_gflops: Pos = 300.0
    run_overhead_s: NonNeg = 5.0
    safety_margin_fraction: Annotated[float, msgspec.Meta(ge=0.0, lt=0.5)] = 0.08
    source: str = ""

    def compute_efficiency_for(self, architecture: str) -> float:
        return self.compute_efficiency.get(architecture, self.compute_efficiency.get("default", 0.5))

    def vae_bytes_per_pixel(self, family: str) -> float:
        found = self.vae_decode_bytes_per_pixel.get(family)
        if found is not None:
            return found
        return max(self.vae_decode_bytes_per_pixel.values(), default=20000.0)

    @classmethod
    def default(cls) -> Calibration:
        """The calibration shipped with vramgate (``calibration.json``), read once."""
        return _default_calibration()


CALIBRATION_CODEC: Codec[Calibration] = Codec(Calibration)


def decode_calibration(data: bytes | str, *, source: str | None = None) -> Calibration:
    """Decode a calibration file; bad content raises :class:`DecodeError` naming the field."""
    return CALIBRATION_CODEC.decode_json(data, source=source)


@functools.cache
def _default_calibration() -> Calibration:
    try:
        data = resources.files("vramgate.policy").joinpath(CALIBRATION_FILE).read_bytes()
    except FileNotFoundError:
        return Calibration(source="built-in starting values (no calibration.json found)")
    except OSError as exc:  # pragma: no cover - unreadable package data
        raise ConfigError(f"cannot read {CALIBRATION_FILE}: {exc}") from None
    return decode_calibration(data, source=CALIBRATION_FILE)
