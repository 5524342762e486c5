"""Per-profile numbers the estimator needs on every call, computed once per profile."""

from __future__ import annotations

from dataclasses import dataclass

from vramgate.messages.requests import RunnerName
from vramgate.policy.models import DTYPE_BYTES, ActivationTerm, ModelProfile, VaeDecodeTerm, dit_params

GIB = float(1 << 30)
MIB = float(1 << 20)


@dataclass(frozen=True, slots=True)
class Derived:
    """Sizes (parameters, bytes) and FLOPs per token of one profile."""

    expert_params: float  # parameters of one DiT expert
    block_params: float  # parameters of one transformer block
    nonblock_params: float  # embeddings and head of one expert
    layers: int
    experts: int
    dim: int
    ffn_dim: int
    heads: int
    checkpoint_bytes: float  # bytes per parameter as loaded
    param_bytes: float  # bytes per parameter after --convert_model_dtype
    linear_flops_per_token: float  # all linear layers of one forward, per token
    attn_flops_per_token_per_token: float  # self-attention, per token per token of sequence
    cross_flops_per_token: float  # cross-attention score/value work per token
    text_encoder_bytes: float
    text_encoder_flops: float  # one prompt batch (prompt and negative prompt), padded to text_len
    image_encoder_bytes: float
    vae_bytes: float
    vae_family: str
    vae_decode_flops_per_pixel: float
    vae_encode_flops_per_pixel: float
    vae_decode_bytes_per_pixel: float | None
    latent_channels: int
    vae_pixels_per_latent: int  # vae_h * vae_w
    frame_multiple: int
    spatial_multiple: int
    guidance_passes: int
    token_timesteps: bool  # per-token time modulation in every runner (not only in Wan's own code)
    activations: dict[RunnerName, ActivationTerm]  # traced activation terms by runner
    vae_decode: dict[RunnerName, VaeDecodeTerm]  # traced VAE decode terms by runner


def derive(profile: ModelProfile) -> Derived:
    dit = profile.dit
    expert = profile.expert_params_b() * 1e9
    d, f = dit.dim, dit.ffn_dim
    block = float(8 * d * d + 2 * d * f + 19 * d + f)
    shape_total = dit_params(dit)
    # Scale the block to the declared expert size when the profile gives params_b explicitly.
    scale = expert / shape_total if shape_total > 0 else 1.0
    block *= scale
    nonblock = max(expert - block * dit.layers, 0.0)
    text_len = profile.text_encoder.text_len
    # Per token per layer: self-attn q,k,v,o (4 d^2) + cross-attn q,o (2 d^2) + FFN (2 d f), 2 FLOPs per MAC.
    linear = 2.0 * (6 * d * d + 2 * d * f) * dit.layers
    te = profile.text_encoder
    te_bytes = te.params_b * 1e9 * DTYPE_BYTES[te.dtype]
    te_flops = 2.0 * te.params_b * 1e9 * te.text_len * 2
    return Derived(
        expert_params=expert,
        block_params=block,
        nonblock_params=nonblock,
        layers=dit.layers,
        experts=dit.experts,
        dim=d,
        ffn_dim=f,
        heads=dit.heads,
        checkpoint_bytes=DTYPE_BYTES[dit.checkpoint_dtype],
        param_bytes=DTYPE_BYTES[dit.param_dtype],
        linear_flops_per_token=linear,
        # QK^T and AV: 2 * 2 * d FLOPs per (query, key) pair, per layer.
        attn_flops_per_token_per_token=4.0 * d * dit.layers,
        cross_flops_per_token=4.0 * d * text_len * dit.layers,
        text_encoder_bytes=te_bytes,
        text_encoder_flops=te_flops,
        image_encoder_bytes=profile.image_encoder_params_b * 1e9 * 2.0,
        vae_bytes=profile.vae.params_m * 1e6 * DTYPE_BYTES[profile.vae.dtype],
        vae_family=profile.vae.family,
        vae_decode_flops_per_pixel=profile.vae.decode_gflop_per_pixel * 1e9,
        vae_encode_flops_per_pixel=profile.vae.encode_gflop_per_pixel * 1e9,
        vae_decode_bytes_per_pixel=profile.vae.decode_bytes_per_pixel,
        latent_channels=profile.vae.z_dim,
        vae_pixels_per_latent=profile.vae.stride[1] * profile.vae.stride[2],
        frame_multiple=profile.frame_multiple,
        spatial_multiple=profile.spatial_multiple,
        guidance_passes=2 if profile.guidance else 1,
        token_timesteps=dit.token_timesteps,
        activations=dict(profile.activations),
        vae_decode=dict(profile.vae_decode),
    )
