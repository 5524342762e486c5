"""Profiles from traces: the built-in Wan models' activation terms, and whole profiles from a DiT configuration.

:func:`traced_activations` traces a built-in (or any Wan-family) profile for each runner that has its code
here: ``generate.py`` (:mod:`vramgate.trace.wan_reference`) and ``diffusers`` (the installed
``WanTransformer3DModel`` built from the equivalent diffusers configuration). :func:`profile_from_config`
reads a transformer's ``config.json`` (a diffusers one, or Wan's own ``WanModel`` one), traces it and returns a
complete :class:`~vramgate.policy.models.ModelProfile` the estimator can load without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import torch

from vramgate.errors import ConfigError
from vramgate.messages.requests import RunnerName
from vramgate.policy.models import (
    ActivationTerm,
    DitSpec,
    ModelProfile,
    TextEncoderSpec,
    Traced,
    VaeDecodeTerm,
    VaeSpec,
    parse_size,
)
from vramgate.trace.dit import Grid, InputBuilder, trace_diffusers, trace_wan_reference
from vramgate.trace.vae import trace_vae_decode
from vramgate.trace.wan_reference import WanShape

BF16 = torch.bfloat16


def _zeros(*shape: int, device: torch.device, dtype: torch.dtype = BF16) -> torch.Tensor:
    return torch.zeros(*shape, device=device, dtype=dtype)


# --------------------------------------------------------------------------- grids


def trace_grids(profile: ModelProfile) -> tuple[Grid, Grid]:
    """Two latent grids to trace: the smallest and the largest supported size at the default frame count
    (the default frames and about half of them when the profile lists one size)."""
    st, sh, sw = profile.vae.stride
    sizes = sorted((parse_size(s) for s in profile.sizes), key=lambda wh: (wh[0] * wh[1], wh[0])) or [(832, 480)]
    frames = profile.default_frames
    lt = (frames - 1) // st + 1
    (w0, h0), (w1, h1) = sizes[0], sizes[-1]
    if w0 * h0 == w1 * h1:
        return ((max(1, lt // 2), h1 // sh, w1 // sw), (lt, h1 // sh, w1 // sw))
    return ((lt, h0 // sh, w0 // sw), (lt, h1 // sh, w1 // sw))


# --------------------------------------------------------------------------- Wan family


def wan_shape(profile: ModelProfile, *, layers: int | None = None) -> WanShape:
    """The reference DiT of a Wan-family profile (Wan2.2's code embeds the timestep per token)."""
    d = profile.dit
    return WanShape(
        dim=d.dim,
        ffn_dim=d.ffn_dim,
        heads=d.heads,
        layers=layers or d.layers,
        in_dim=d.in_dim,
        out_dim=d.out_dim,
        text_dim=d.text_dim,
        freq_dim=d.freq_dim,
        text_len=profile.text_encoder.text_len,
        patch=d.patch,
        per_token_time=profile.family != "wan2.1",
    )


def wan_diffusers_config(profile: ModelProfile, *, layers: int | None = None) -> dict[str, Any]:
    """The diffusers ``WanTransformer3DModel`` configuration of a Wan-family profile."""
    d = profile.dit
    config: dict[str, Any] = {
        "patch_size": list(d.patch),
        "num_attention_heads": d.heads,
        "attention_head_dim": d.dim // d.heads,
        "in_channels": d.in_dim,
        "out_channels": d.out_dim,
        "text_dim": d.text_dim,
        "freq_dim": d.freq_dim,
        "ffn_dim": d.ffn_dim,
        "num_layers": layers or d.layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
    }
    if profile.image_encoder_params_b > 0:  # Wan2.1 I2V: CLIP image tokens through added k/v projections
        config.update(image_dim=1280, added_kv_proj_dim=d.dim)
    return config


def wan_diffusers_inputs(config: dict[str, Any], per_token_time: bool, text_len: int) -> InputBuilder:
    """Inputs of ``WanTransformer3DModel.forward`` (unset keys take the class defaults: the 14B's)."""
    patch = tuple(config.get("patch_size", (1, 2, 2)))
    channels, text_dim = int(config.get("in_channels", 16)), int(config.get("text_dim", 4096))

    def build(grid: Grid, device: torch.device) -> dict[str, Any]:
        tokens = (grid[0] // patch[0]) * (grid[1] // patch[1]) * (grid[2] // patch[2])
        kwargs: dict[str, Any] = {
            "hidden_states": _zeros(1, channels, *grid, device=device),
            # diffusers' Wan2.2 TI2V pipeline expands the timestep to every token (``expand_timesteps``)
            "timestep": torch.full((1, tokens) if per_token_time else (1,), 999.0, device=device),
            "encoder_hidden_states": _zeros(1, text_len, text_dim, device=device),
            "return_dict": False,
        }
        if config.get("image_dim"):
            kwargs["encoder_hidden_states_image"] = _zeros(1, 257, config["image_dim"], device=device)
        return kwargs

    return build


def vae_grids(profile: ModelProfile) -> tuple[Grid, Grid, Grid]:
    """Three latent grids for a VAE decode trace: two sizes at the default length, the larger at about half."""
    (t0, h0, w0), (t1, h1, w1) = trace_grids(profile)
    if (h0, w0) == (h1, w1):
        h0, w0 = h1 // 2, w1 // 2
    t = max(t0, t1)
    return ((t, h0, w0), (t, h1, w1), (t // 2 + 1, h1, w1))


def traced_vae_decode(
    profile: ModelProfile, *, grids: tuple[Grid, Grid, Grid] | None = None
) -> dict[RunnerName, VaeDecodeTerm]:
    """diffusers' VAE decode of a Wan2.1-VAE profile (``AutoencoderKLWan``'s defaults are that VAE); other VAEs
    have no term (the estimator keeps the calibrated working memory)."""
    if profile.vae.family != "wan2.1":
        return {}
    from diffusers import AutoencoderKLWan

    term, _ = trace_vae_decode(
        AutoencoderKLWan, {}, grids or vae_grids(profile), profile.vae.stride, channels=profile.vae.z_dim
    )
    return {"diffusers": term}


def traced_terms(profile: ModelProfile, *, layers: int | None = None) -> Traced:
    """Everything ``vramgate profile trace`` derives for a built-in: DiT activations and the VAE decode."""
    return Traced(activations=traced_activations(profile, layers=layers), vae_decode=traced_vae_decode(profile))


def traced_activations(
    profile: ModelProfile, *, layers: int | None = None, grids: tuple[Grid, Grid] | None = None
) -> dict[RunnerName, ActivationTerm]:
    """Trace a Wan-family profile's DiT as ``generate.py`` and as diffusers run it."""
    from diffusers import WanTransformer3DModel

    grids = grids or trace_grids(profile)
    shape = wan_shape(profile, layers=layers)
    reference, _ = trace_wan_reference(shape, grids)
    config = wan_diffusers_config(profile, layers=layers)
    inputs = wan_diffusers_inputs(config, profile.dit.token_timesteps, profile.text_encoder.text_len)
    diffusers_term, _, _ = trace_diffusers(WanTransformer3DModel, config, inputs, grids, profile.dit.patch)
    return {"generate.py": reference, "diffusers": diffusers_term}


# --------------------------------------------------------------------------- any diffusers video DiT


@dataclass(frozen=True)
class Family:
    """How to build, feed and describe one diffusers transformer class."""

    loader: str  # attribute of ``diffusers``
    inputs: Callable[[dict[str, Any]], InputBuilder]
    spec: Callable[[dict[str, Any]], dict[str, Any]]  # DitSpec fields besides params_b
    vae: VaeSpec
    text_encoder: TextEncoderSpec
    defaults: dict[str, Any]  # ModelProfile fields: frames, fps, steps, sizes, guidance


def _hunyuan_inputs(c: dict[str, Any]) -> InputBuilder:
    def build(grid: Grid, device: torch.device) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "hidden_states": _zeros(1, c.get("in_channels", 16), *grid, device=device),
            "timestep": torch.full((1,), 999, device=device, dtype=torch.long),
            "encoder_hidden_states": _zeros(1, 256, c.get("text_embed_dim", 4096), device=device),
            "encoder_attention_mask": torch.ones(1, 256, device=device, dtype=torch.bool),
            "pooled_projections": _zeros(1, c.get("pooled_projection_dim", 768), device=device),
            "return_dict": False,
        }
        if c.get("guidance_embeds", True):
            kwargs["guidance"] = torch.full((1,), 6000.0, device=device)
        return kwargs

    return build


def _ltx_inputs(c: dict[str, Any]) -> InputBuilder:
    def build(grid: Grid, device: torch.device) -> dict[str, Any]:
        p, pt = c.get("patch_size", 1), c.get("patch_size_t", 1)
        f, h, w = grid[0] // pt, grid[1] // p, grid[2] // p
        channels = c.get("in_channels", 128) * p * p * pt
        return {
            "hidden_states": _zeros(1, f * h * w, channels, device=device),  # the pipeline packs the latents
            "encoder_hidden_states": _zeros(1, 128, c.get("caption_channels", 4096), device=device),
            "timestep": torch.full((1,), 999, device=device, dtype=torch.long),
            "encoder_attention_mask": torch.ones(1, 128, device=device, dtype=torch.long),
            "num_frames": f,
            "height": h,
            "width": w,
            "rope_interpolation_scale": (1.0, 1.0, 1.0),
            "return_dict": False,
        }

    return build


def _cog_inputs(c: dict[str, Any]) -> InputBuilder:
    def build(grid: Grid, device: torch.device) -> dict[str, Any]:
        f, h, w = grid
        kwargs: dict[str, Any] = {
            "hidden_states": _zeros(1, f, c.get("in_channels", 16), h, w, device=device),
            "encoder_hidden_states": _zeros(
                1, c.get("max_text_seq_length", 226), c.get("text_embed_dim", 4096), device=device
            ),
            "timestep": torch.full((1,), 999, device=device, dtype=torch.long),
            "return_dict": False,
        }
        if c.get("use_rotary_positional_embeddings"):  # the pipeline passes (cos, sin) per token
            p = c.get("patch_size", 2)
            pt = c.get("patch_size_t") or 1
            tokens = -(-f // pt) * (h // p) * (w // p)
            head = c.get("attention_head_dim", 64)
            kwargs["image_rotary_emb"] = tuple(
                torch.zeros(tokens, head, device=device, dtype=torch.float32) for _ in range(2)
            )
        return kwargs

    return build


def _heads_dim(c: dict[str, Any], heads: int, head_dim: int) -> tuple[int, int]:
    h, d = int(c.get("num_attention_heads", heads)), int(c.get("attention_head_dim", head_dim))
    return h, h * d


def _wan_spec(c: dict[str, Any]) -> dict[str, Any]:
    heads, dim = _heads_dim(c, 40, 128)
    return {
        "dim": dim,
        "ffn_dim": int(c.get("ffn_dim", 13824)),
        "heads": heads,
        "layers": int(c.get("num_layers", 40)),
        "patch": tuple(c.get("patch_size", (1, 2, 2))),
        "in_dim": int(c.get("in_channels", 16)),
        "out_dim": int(c.get("out_channels", 16)),
        "text_dim": int(c.get("text_dim", 4096)),
        "freq_dim": int(c.get("freq_dim", 256)),
    }


def _hunyuan_spec(c: dict[str, Any]) -> dict[str, Any]:
    heads, dim = _heads_dim(c, 24, 128)
    p = int(c.get("patch_size", 2))
    return {
        "dim": dim,
        "ffn_dim": int(dim * float(c.get("mlp_ratio", 4.0))),
        "heads": heads,
        "layers": int(c.get("num_layers", 20)) + int(c.get("num_single_layers", 40)),
        "patch": (int(c.get("patch_size_t", 1)), p, p),
        "in_dim": int(c.get("in_channels", 16)),
        "out_dim": int(c.get("out_channels", 16)),
        "text_dim": int(c.get("text_embed_dim", 4096)),
    }


def _ltx_spec(c: dict[str, Any]) -> dict[str, Any]:
    heads, dim = _heads_dim(c, 32, 64)
    p = int(c.get("patch_size", 1))
    return {
        "dim": dim,
        "ffn_dim": 4 * dim,
        "heads": heads,
        "layers": int(c.get("num_layers", 28)),
        "patch": (int(c.get("patch_size_t", 1)), p, p),
        "in_dim": int(c.get("in_channels", 128)),
        "out_dim": int(c.get("out_channels", 128)),
        "text_dim": int(c.get("caption_channels", 4096)),
    }


def _cog_spec(c: dict[str, Any]) -> dict[str, Any]:
    heads, dim = _heads_dim(c, 30, 64)
    p = int(c.get("patch_size", 2))
    return {
        "dim": dim,
        "ffn_dim": 4 * dim,
        "heads": heads,
        "layers": int(c.get("num_layers", 30)),
        "patch": (int(c.get("patch_size_t") or 1), p, p),
        "in_dim": int(c.get("in_channels", 16)),
        "out_dim": int(c.get("out_channels") or 16),
        "text_dim": int(c.get("text_embed_dim", 4096)),
    }


_T5_XXL = TextEncoderSpec(name="t5-v1_1-xxl", params_b=4.76, dtype="bf16", text_len=226, ffn_dim=10240)

#: diffusers transformer classes that can be traced from their configuration alone. The VAE, text encoder and
#: defaults are those of the model's diffusers pipeline; edit the written profile for a different one.
FAMILIES: dict[str, Family] = {
    "WanTransformer3DModel": Family(
        loader="WanTransformer3DModel",
        inputs=lambda c: wan_diffusers_inputs(c, False, 512),
        spec=_wan_spec,
        vae=VaeSpec(family="wan2.1", stride=(4, 8, 8), z_dim=16, params_m=127.0),
        text_encoder=TextEncoderSpec(),
        defaults={"default_frames": 81, "default_fps": 16, "default_steps": 50, "sizes": ("832*480", "1280*720")},
    ),
    "HunyuanVideoTransformer3DModel": Family(
        loader="HunyuanVideoTransformer3DModel",
        inputs=_hunyuan_inputs,
        spec=_hunyuan_spec,
        vae=VaeSpec(family="hunyuanvideo", stride=(4, 8, 8), z_dim=16, params_m=246.0),
        text_encoder=TextEncoderSpec(name="llava-llama-3-8b", params_b=7.5, text_len=256, ffn_dim=14336, layers=32),
        defaults={
            "default_frames": 129,
            "default_fps": 24,
            "default_steps": 50,
            "guidance": False,  # guidance-distilled: one forward per step, the scale enters as an embedding
            "sizes": ("960*544", "1280*720"),
        },
    ),
    "LTXVideoTransformer3DModel": Family(
        loader="LTXVideoTransformer3DModel",
        inputs=_ltx_inputs,
        spec=_ltx_spec,
        vae=VaeSpec(family="ltx-video", stride=(8, 32, 32), z_dim=128, params_m=419.0),
        text_encoder=msgspec.structs.replace(_T5_XXL, text_len=128),
        defaults={"default_frames": 161, "default_fps": 24, "default_steps": 50, "sizes": ("704*480", "1216*704")},
    ),
    "CogVideoXTransformer3DModel": Family(
        loader="CogVideoXTransformer3DModel",
        inputs=_cog_inputs,
        spec=_cog_spec,
        vae=VaeSpec(family="cogvideox", stride=(4, 8, 8), z_dim=16, params_m=216.0),
        text_encoder=_T5_XXL,
        defaults={"default_frames": 49, "default_fps": 8, "default_steps": 50, "sizes": ("720*480",)},
    ),
}

#: Keys of Wan's own ``WanModel`` configuration (the ``config.json`` of a Wan checkpoint).
_WAN_MODEL_KEYS = {"dim", "ffn_dim", "num_heads", "num_layers"}


def profile_from_config(
    config: dict[str, Any],
    name: str,
    *,
    family: str | None = None,
    layers: int | None = None,
) -> ModelProfile:
    """A traced profile from a transformer configuration (diffusers ``_class_name`` or Wan's ``WanModel``).

    ``family`` (``wan2.1``/``wan2.2``) says which Wan code a ``WanModel`` configuration is run by;
    ``layers`` traces fewer blocks (the terms do not depend on depth; the weights are counted at full depth).
    Raises :class:`ConfigError` naming what is missing or unsupported.
    """
    class_name = str(config.get("_class_name", ""))
    if class_name == "WanModel" or (not class_name and config.keys() >= _WAN_MODEL_KEYS):
        return _wan_model_profile(
            config, name, family=family or ("wan2.2" if config.get("model_type") == "ti2v" else "wan2.1"), layers=layers
        )
    found = FAMILIES.get(class_name)
    if found is None:
        known = ", ".join(sorted(FAMILIES))
        raise ConfigError(
            f"config _class_name {class_name or '(missing)'!r} cannot be traced; known: WanModel, {known}"
        )
    import diffusers

    model_cls = getattr(diffusers, found.loader)
    spec = found.spec(config)
    base = ModelProfile(
        name=name,
        description=f"{class_name} traced from its configuration",
        family=class_name,
        dit=DitSpec(**spec),
        vae=found.vae,
        text_encoder=found.text_encoder,
        source=f"vramgate profile trace of a {class_name} config.json",
        **found.defaults,
    )
    full = {k: v for k, v in config.items() if not k.startswith("_")}
    traced = dict(full, num_layers=layers) if layers else full
    if layers and "num_single_layers" in traced:
        traced["num_single_layers"] = layers
    term, _, _ = trace_diffusers(model_cls, traced, found.inputs(traced), trace_grids(base), spec["patch"])
    params = _count_params(model_cls, full)
    dit = msgspec.structs.replace(base.dit, params_b=params / 1e9)
    return msgspec.structs.replace(base, dit=dit, activations={"diffusers": term})


def _count_params(model_cls: type[Any], config: dict[str, Any]) -> int:
    with torch.device("meta"):
        model = model_cls.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _wan_model_profile(config: dict[str, Any], name: str, *, family: str, layers: int | None) -> ModelProfile:
    if family not in ("wan2.1", "wan2.2"):
        raise ConfigError(f"family must be wan2.1 or wan2.2 for a WanModel config, got {family!r}")
    missing = sorted(_WAN_MODEL_KEYS - config.keys())
    if missing:
        raise ConfigError(f"WanModel config is missing {', '.join(missing)}")
    in_dim = int(config.get("in_dim", 16))
    wide_vae = in_dim == 48 or int(config.get("out_dim", 16)) == 48
    vae = (
        VaeSpec(
            family="wan2.2",
            stride=(4, 16, 16),
            z_dim=48,
            params_m=705.0,
            decode_gflop_per_pixel=0.0148,
            encode_gflop_per_pixel=0.0074,
        )
        if wide_vae
        else VaeSpec(family="wan2.1", stride=(4, 8, 8), z_dim=16, params_m=127.0)
    )
    model_type = str(config.get("model_type", "t2v"))
    tasks: tuple[Any, ...] = ("t2v", "i2v") if model_type == "ti2v" else ("i2v",) if model_type == "i2v" else ("t2v",)
    profile = ModelProfile(
        name=name,
        description=f"Wan {model_type} DiT traced from its WanModel config",
        family=family,
        dit=DitSpec(
            dim=int(config["dim"]),
            ffn_dim=int(config["ffn_dim"]),
            heads=int(config["num_heads"]),
            layers=int(config["num_layers"]),
            in_dim=in_dim,
            out_dim=int(config.get("out_dim", 16)),
            freq_dim=int(config.get("freq_dim", 256)),
            text_dim=int(config.get("text_dim", 4096)),
            checkpoint_dtype="bf16" if wide_vae else "fp32",
            token_timesteps=model_type == "ti2v",
        ),
        vae=vae,
        tasks=tasks,
        default_task=tasks[0],
        text_encoder=msgspec.structs.replace(TextEncoderSpec(), text_len=int(config.get("text_len", 512))),
        default_frames=121 if wide_vae else 81,
        default_fps=24 if wide_vae else 16,
        sizes=("1280*704", "704*1280") if wide_vae else ("832*480", "1280*720"),
        source="vramgate profile trace of a WanModel config.json",
    )
    return msgspec.structs.replace(profile, activations=traced_activations(profile, layers=layers))


__all__ = [
    "FAMILIES",
    "profile_from_config",
    "trace_grids",
    "traced_activations",
    "traced_terms",
    "traced_vae_decode",
    "vae_grids",
    "wan_diffusers_config",
    "wan_diffusers_inputs",
    "wan_shape",
]
