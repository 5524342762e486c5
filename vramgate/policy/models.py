"""Model profiles: the architecture numbers of a video model, as data.

A :class:`ModelProfile` holds what the estimator needs to know about a model: the diffusion transformer (DiT)
shape, its experts and weight dtypes, the VAE family and stride, the text encoder, the generation defaults and
supported sizes, and the traced activation term of each runner. The built-in Wan2.2 and Wan2.1 profiles use the
same schema that users write in JSON or TOML files (:meth:`ModelCatalog.load_file`), so a user can describe
another model without code (``vramgate profile trace`` writes one from a transformer's configuration).

Numbers of the built-ins are from the Wan2.2 and Wan2.1 code's configs (``wan/configs/*.py``) and modules
(``wan/modules/model.py``, ``vae2_1.py``, ``vae2_2.py``, ``t5.py``); parameter counts are computed from those
shapes (see :func:`dit_params`); their activation and VAE decode terms are traced (``traced.json``).
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from vramgate.errors import ConfigError, DecodeError, UnknownModel
from vramgate.messages.codec import TOO_DEEP, Codec
from vramgate.messages.requests import ParamDtype, RunnerName, Task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

PosInt = Annotated[int, msgspec.Meta(gt=0)]
PosFloat = Annotated[float, msgspec.Meta(gt=0.0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]
Triple = tuple[PosInt, PosInt, PosInt]

#: Bytes per parameter of each weight dtype.
DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0}


class _Schema(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the profile schema: frozen, keyword-only, unknown fields rejected (typos fail loudly)."""


class DitSpec(_Schema, frozen=True):
    """The diffusion transformer.

    ``params_b`` is the parameter count of one expert in billions (computed from the shape when omitted);
    ``checkpoint_dtype`` is the dtype the weights have once loaded (Wan A14B/14B checkpoints load as fp32) and
    ``param_dtype`` the dtype ``--convert_model_dtype`` casts them to (and that FSDP computes in).
    ``expert_boundary`` maps a task to the timestep fraction at which the high-noise expert hands over.
    ``token_timesteps`` is true when the model conditions every token on its own timestep (Wan2.2 TI2V-5B, whose
    image frame stays clean): the runners that stream DiT blocks then also hold the time modulation for every
    token, as Wan's own code does for every model.
    """

    dim: PosInt
    ffn_dim: PosInt
    heads: PosInt
    layers: PosInt
    patch: Triple = (1, 2, 2)
    in_dim: PosInt = 16
    out_dim: PosInt = 16
    text_dim: PosInt = 4096
    freq_dim: PosInt = 256
    experts: Annotated[int, msgspec.Meta(ge=1, le=16)] = 1
    params_b: PosFloat | None = None
    checkpoint_dtype: ParamDtype = "bf16"
    param_dtype: ParamDtype = "bf16"
    expert_boundary: dict[str, Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]] = {}
    token_timesteps: bool = False


class VaeSpec(_Schema, frozen=True):
    """The video VAE: family (``wan2.1`` or ``wan2.2``), stride (t, h, w), latent channels, size and compute.

    ``decode_gflop_per_pixel``/``encode_gflop_per_pixel`` are the convolution work per output (input) pixel of
    one frame, summed over the decoder's stages from their channel widths (Wan2.1: about 8.2 MFLOP, Wan2.2:
    about 14.8 MFLOP); ``decode_bytes_per_pixel`` is the decoder's working memory per output pixel of one frame chunk
    (``None``: the calibrated value of the family).
    """

    family: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    stride: Triple
    z_dim: PosInt
    params_m: PosFloat = 127.0
    dtype: ParamDtype = "fp32"
    decode_gflop_per_pixel: PosFloat = 0.0082
    encode_gflop_per_pixel: PosFloat = 0.0041
    decode_bytes_per_pixel: PosFloat | None = None


class TextEncoderSpec(_Schema, frozen=True):
    """The text encoder (umT5-XXL's encoder for Wan)."""

    name: str = "umt5-xxl"
    params_b: PosFloat = 5.68
    dtype: ParamDtype = "bf16"
    text_len: PosInt = 512
    dim: PosInt = 4096
    ffn_dim: PosInt = 10240
    layers: PosInt = 24


class ActivationTerm(_Schema, frozen=True):
    """The DiT's live activation memory in one runner at its peak, as traced by ``vramgate profile trace``.

    Peak live bytes of one denoising forward are linear in the sequence length once attention is
    memory-efficient: ``bytes_per_token`` for each token a GPU computes (split by sequence parallelism),
    ``bytes_per_full_token`` for each token of the whole sequence, held on every GPU (Wan2.2's per-token time
    modulation, computed before the sequence is split), and ``fixed_bytes`` that do not grow with the sequence
    (the text context). ``peak_phase`` is the module that was running at the peak.
    """

    bytes_per_token: NonNegFloat
    bytes_per_full_token: NonNegFloat = 0.0
    fixed_bytes: NonNegFloat = 0.0
    peak_phase: str = ""
    source: str = ""


class VaeDecodeTerm(_Schema, frozen=True):
    """A runner's VAE decode at its peak, as traced: ``bytes_per_pixel`` of working memory per output pixel of one
    frame (the decoder works a frame chunk at a time) and ``bytes_per_pixel_frame`` per output pixel of every
    frame (the decoded video it holds)."""

    bytes_per_pixel: NonNegFloat
    bytes_per_pixel_frame: NonNegFloat = 0.0
    peak_phase: str = ""
    source: str = ""


class ModelProfile(_Schema, frozen=True):
    """One model: its architecture, the defaults ``generate.py`` uses, and the sizes it supports.

    ``sizes`` are ``"W*H"`` strings as Wan's ``--size`` takes them. ``image_encoder_params_b`` is a CLIP image
    encoder's size (Wan2.1 I2V has one; Wan2.2 has none). ``guidance`` is true when each step runs the DiT twice
    (classifier-free guidance, conditional and unconditional). ``activations`` holds the traced activation term
    of each runner (``generate.py``, ``diffusers``, ``diffsynth``); a runner without one is priced by the
    calibrated formula. ``vae_decode`` likewise holds each runner's traced VAE decode.
    """

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._+-]+$")]
    dit: DitSpec
    vae: VaeSpec
    text_encoder: TextEncoderSpec = TextEncoderSpec()
    description: str = ""
    family: str = "wan2.2"
    tasks: tuple[Task, ...] = ("t2v",)
    default_task: Task = "t2v"
    default_frames: PosInt = 81
    default_fps: PosInt = 16
    default_steps: PosInt = 40
    default_guidance_scale: NonNegFloat = 5.0
    guidance: bool = True
    sizes: tuple[str, ...] = ()
    image_encoder_params_b: NonNegFloat = 0.0
    source: str = ""
    activations: dict[RunnerName, ActivationTerm] = {}
    vae_decode: dict[RunnerName, VaeDecodeTerm] = {}

    def __post_init__(self) -> None:
        if self.default_task not in self.tasks:
            raise ValueError(f"default_task {self.default_task!r} is not one of tasks {list(self.tasks)}")
        for size in self.sizes:
            parse_size(size)
        if (self.default_frames - 1) % self.vae.stride[0]:
            raise ValueError(f"default_frames must be {self.vae.stride[0]}k+1, got {self.default_frames}")

    # ---------------------------------------------------------------- derived numbers

    @property
    def spatial_multiple(self) -> int:
        """Width and height must be multiples of this (VAE stride times DiT patch)."""
        return max(self.vae.stride[1] * self.dit.patch[1], self.vae.stride[2] * self.dit.patch[2])

    @property
    def frame_multiple(self) -> int:
        """Frames must be ``frame_multiple * k + 1``."""
        return self.vae.stride[0] * self.dit.patch[0]

    def expert_params_b(self) -> float:
        """Parameters of one DiT expert, in billions."""
        return self.dit.params_b if self.dit.params_b is not None else dit_params(self.dit) / 1e9

    def tokens(self, width: int, height: int, frames: int) -> int:
        """DiT sequence length: ``((frames-1)/vae_t + 1) * (h/vae_h/patch_h) * (w/vae_w/patch_w)``."""
        st, sh, sw = self.vae.stride
        pt, ph, pw = self.dit.patch
        latent_t = (frames - 1) // st + 1
        return ((latent_t + pt - 1) // pt) * (height // sh // ph) * (width // sw // pw)


def parse_size(size: str) -> tuple[int, int]:
    """``"1280*720"`` (or ``1280x720``) -> ``(1280, 720)``; raises ``ValueError`` on anything else."""
    text = size.lower().replace("x", "*")
    parts = text.split("*")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size {size!r} is not of the form W*H")
    width, height = int(parts[0]), int(parts[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"size {size!r} must be positive")
    return width, height


def dit_params(dit: DitSpec) -> float:
    """Parameter count of one Wan DiT expert from its shape (``wan/modules/model.py``).

    Per block: self-attention q, k, v, o (4 d^2), cross-attention q, k, v, o (4 d^2), FFN (2 d f), norms and
    modulation (small). Outside the blocks: patch embedding, text and time embeddings, the head.
    """
    d, f = dit.dim, dit.ffn_dim
    pt, ph, pw = dit.patch
    per_block = 8 * d * d + 2 * d * f + 9 * d + f + 6 * d + 4 * d
    patch = dit.in_dim * pt * ph * pw * d + d
    text = dit.text_dim * d + d * d + 2 * d
    time = dit.freq_dim * d + d * d + 2 * d + 6 * d * d + 6 * d
    head = d * dit.out_dim * pt * ph * pw + 2 * d
    return float(dit.layers * per_block + patch + text + time + head)


# --------------------------------------------------------------------------- built-in Wan2.2 profiles

_WAN21_VAE = VaeSpec(
    family="wan2.1",
    stride=(4, 8, 8),
    z_dim=16,
    params_m=127.0,
    dtype="fp32",
    decode_gflop_per_pixel=0.0082,
    encode_gflop_per_pixel=0.0041,
)
_WAN22_VAE = VaeSpec(
    family="wan2.2",
    stride=(4, 16, 16),
    z_dim=48,
    params_m=705.0,
    dtype="fp32",
    decode_gflop_per_pixel=0.0148,
    encode_gflop_per_pixel=0.0074,
)
_A14B_DIT = DitSpec(
    dim=5120,
    ffn_dim=13824,
    heads=40,
    layers=40,
    experts=2,
    checkpoint_dtype="fp32",
    param_dtype="bf16",
)
_A14B_SIZES = ("1280*720", "720*1280", "832*480", "480*832")

BUILTIN_MODELS: tuple[ModelProfile, ...] = (
    ModelProfile(
        name="t2v-A14B",
        description="Wan2.2 text-to-video, mixture of two 14B experts (high noise, low noise)",
        dit=msgspec.structs.replace(_A14B_DIT, expert_boundary={"t2v": 0.875}),
        vae=_WAN21_VAE,
        tasks=("t2v",),
        default_task="t2v",
        default_frames=81,
        default_fps=16,
        default_steps=40,
        default_guidance_scale=4.0,
        sizes=_A14B_SIZES,
        source="Wan-Video/Wan2.2 wan/configs/wan_t2v_A14B.py",
    ),
    ModelProfile(
        name="i2v-A14B",
        description="Wan2.2 image-to-video, mixture of two 14B experts; the image latent is concatenated",
        dit=msgspec.structs.replace(_A14B_DIT, in_dim=36, expert_boundary={"i2v": 0.900}),
        vae=_WAN21_VAE,
        tasks=("i2v",),
        default_task="i2v",
        default_frames=81,
        default_fps=16,
        default_steps=40,
        default_guidance_scale=3.5,
        sizes=_A14B_SIZES,
        source="Wan-Video/Wan2.2 wan/configs/wan_i2v_A14B.py",
    ),
    ModelProfile(
        name="ti2v-5B",
        description="Wan2.2 text/image-to-video 5B dense DiT with the high-compression Wan2.2 VAE",
        dit=DitSpec(
            dim=3072,
            ffn_dim=14336,
            heads=24,
            layers=30,
            in_dim=48,
            out_dim=48,
            experts=1,
            checkpoint_dtype="bf16",
            param_dtype="bf16",
            token_timesteps=True,
        ),
        vae=_WAN22_VAE,
        tasks=("t2v", "i2v"),
        default_task="t2v",
        default_frames=121,
        default_fps=24,
        default_steps=50,
        default_guidance_scale=5.0,
        sizes=("1280*704", "704*1280"),
        source="Wan-Video/Wan2.2 wan/configs/wan_ti2v_5B.py",
    ),
    # Wan2.1: the same DiT and VAE code, but one timestep per sample (no per-token time modulation); its
    # checkpoints hold fp32 DiT weights.
    ModelProfile(
        name="wan2.1-t2v-14B",
        description="Wan2.1 text-to-video 14B",
        family="wan2.1",
        dit=DitSpec(dim=5120, ffn_dim=13824, heads=40, layers=40, checkpoint_dtype="fp32", param_dtype="bf16"),
        vae=_WAN21_VAE,
        default_steps=50,
        default_guidance_scale=5.0,
        sizes=("1280*720", "720*1280", "832*480", "480*832"),
        source="Wan-Video/Wan2.1 wan/configs/wan_t2v_14B.py",
    ),
    ModelProfile(
        name="wan2.1-i2v-14B",
        description="Wan2.1 image-to-video 14B with a CLIP image encoder; the image latent is concatenated",
        family="wan2.1",
        dit=DitSpec(
            dim=5120, ffn_dim=13824, heads=40, layers=40, in_dim=36, checkpoint_dtype="fp32", param_dtype="bf16"
        ),
        vae=_WAN21_VAE,
        tasks=("i2v",),
        default_task="i2v",
        default_steps=40,
        default_guidance_scale=5.0,
        sizes=("1280*720", "720*1280", "832*480", "480*832"),
        image_encoder_params_b=0.63,
        source="Wan-Video/Wan2.1 wan/configs/wan_i2v_14B.py",
    ),
    ModelProfile(
        name="wan2.1-t2v-1.3B",
        description="Wan2.1 text-to-video 1.3B",
        family="wan2.1",
        dit=DitSpec(dim=1536, ffn_dim=8960, heads=12, layers=30, checkpoint_dtype="fp32", param_dtype="bf16"),
        vae=_WAN21_VAE,
        default_steps=50,
        default_guidance_scale=6.0,
        sizes=("832*480", "480*832"),
        source="Wan-Video/Wan2.1 wan/configs/wan_t2v_1_3B.py",
    ),
)


class Traced(_Schema, frozen=True):
    """What ``vramgate profile trace`` derived for one model: activation and VAE decode terms by runner."""

    activations: dict[RunnerName, ActivationTerm] = {}
    vae_decode: dict[RunnerName, VaeDecodeTerm] = {}


#: The built-ins' traced terms (package data), written by ``vramgate profile trace --builtins``.
TRACED_FILE = "traced.json"
TracedTerms = dict[str, Traced]

_TRACED_CODEC: Codec[TracedTerms] = Codec(TracedTerms)


def decode_traced(data: bytes | str, *, source: str | None = None) -> TracedTerms:
    """Decode a traced-terms file (model name -> terms); bad content raises :class:`DecodeError`."""
    return _TRACED_CODEC.decode_json(data, source=source)


def encode_traced(terms: TracedTerms) -> bytes:
    """The traced-terms file for ``terms``: indented JSON, keys sorted, a trailing newline."""
    return msgspec.json.format(msgspec.json.encode(terms, order="sorted"), indent=2) + b"\n"


def with_traced(profiles: tuple[ModelProfile, ...], terms: TracedTerms) -> tuple[ModelProfile, ...]:
    """``profiles`` with the traced terms of ``terms`` added (a profile's own terms win)."""
    out = []
    for p in profiles:
        found = terms.get(p.name)
        if found is not None:
            p = msgspec.structs.replace(
                p,
                activations={**found.activations, **p.activations},
                vae_decode={**found.vae_decode, **p.vae_decode},
            )
        out.append(p)
    return tuple(out)


def _shipped_traced() -> TracedTerms:
    try:
        data = resources.files("vramgate.policy").joinpath(TRACED_FILE).read_bytes()
    except FileNotFoundError:
        return {}
    return decode_traced(data, source=TRACED_FILE)


BUILTIN_MODELS = with_traced(BUILTIN_MODELS, _shipped_traced())

_PROFILE_CODEC: Codec[ModelProfile] = Codec(ModelProfile)


def decode_profile(data: bytes | str, *, source: str | None = None, toml: bool = False) -> ModelProfile:
    """Decode one profile from JSON (or TOML with ``toml=True``); bad input raises :class:`DecodeError`."""
    if not toml:
        return _PROFILE_CODEC.decode_json(data, source=source)
    try:
        text = data.decode() if isinstance(data, bytes) else data
        raw = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not UTF-8 text (byte {exc.start})", source=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise DecodeError(str(exc), source=source) from None
    except RecursionError:
        raise DecodeError(TOO_DEEP, source=source) from None
    return _PROFILE_CODEC.convert(raw, source=source)


class ModelCatalog:
    """Model profiles by name (case-insensitive). Built-ins are registered at construction."""

    def __init__(self, profiles: tuple[ModelProfile, ...] = BUILTIN_MODELS) -> None:
        self._profiles: dict[str, ModelProfile] = {}
        self._index: dict[str, str] = {}
        for profile in profiles:
            self.register(profile)

    def register(self, profile: ModelProfile) -> None:
        """Add ``profile`` (replacing one of the same name)."""
        self._profiles[profile.name] = profile
        self._index[profile.name.lower()] = profile.name

    def names(self) -> list[str]:
        return list(self._profiles)

    def all(self) -> tuple[ModelProfile, ...]:
        return tuple(self._profiles.values())

    def find(self, name: str) -> ModelProfile | None:
        key = self._index.get(name.lower())
        return self._profiles[key] if key is not None else None

    def get(self, name: str) -> ModelProfile:
        """The profile named ``name``; raises :class:`~vramgate.errors.UnknownModel` listing the known ones."""
        found = self.find(name)
        if found is None:
            raise UnknownModel(name, self.names())
        return found

    def load_file(self, path: str | Path, *, register: bool = True) -> ModelProfile:
        """Decode a profile from a ``.json`` or ``.toml`` file and (by default) register it.

        Raises :class:`DecodeError` (with the file as ``source`` and the field ``path``) on bad content and
        :class:`ConfigError` when the file cannot be read or has another suffix.
        """
        file = Path(path)
        suffix = file.suffix.lower()
        if suffix not in (".json", ".toml"):
            raise ConfigError(f"{file}: model profile files must end in .json or .toml")
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read model profile: {exc.strerror or exc}") from None
        profile = decode_profile(data, source=str(file), toml=suffix == ".toml")
        if register:
            self.register(profile)
        return profile


#: Literal names of the built-in profiles.
BuiltinModel = Literal["t2v-A14B", "i2v-A14B", "ti2v-5B", "wan2.1-t2v-14B", "wan2.1-i2v-14B", "wan2.1-t2v-1.3B"]

DEFAULT_MODEL_CATALOG = ModelCatalog()
