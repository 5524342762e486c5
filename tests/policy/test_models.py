"""Model profiles: built-ins, the documented schema, and user profiles from JSON and TOML files."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from vramgate.errors import ConfigError, DecodeError, UnknownModel
from vramgate.policy.models import DEFAULT_MODEL_CATALOG, ModelCatalog, ModelProfile, dit_params, parse_size

PROFILES = Path(__file__).parent / "profiles"


def test_builtins_match_the_wan_configs() -> None:
    assert set(DEFAULT_MODEL_CATALOG.names()) == {
        "t2v-A14B",
        "i2v-A14B",
        "ti2v-5B",
        "wan2.1-t2v-14B",
        "wan2.1-i2v-14B",
        "wan2.1-t2v-1.3B",
    }
    a14b = DEFAULT_MODEL_CATALOG.get("t2v-A14B")
    assert (a14b.dit.dim, a14b.dit.ffn_dim, a14b.dit.heads, a14b.dit.layers) == (5120, 13824, 40, 40)
    assert a14b.dit.experts == 2
    assert a14b.dit.expert_boundary == {"t2v": 0.875}
    assert DEFAULT_MODEL_CATALOG.get("i2v-A14B").dit.expert_boundary == {"i2v": 0.9}
    five = DEFAULT_MODEL_CATALOG.get("ti2v-5B")
    assert five.vae.stride == (4, 16, 16)
    assert five.vae.z_dim == 48
    assert five.spatial_multiple == 32
    assert five.frame_multiple == 4
    small = DEFAULT_MODEL_CATALOG.get("wan2.1-t2v-1.3B")
    assert (small.dit.dim, small.dit.ffn_dim, small.dit.heads, small.dit.layers) == (1536, 8960, 12, 30)
    assert small.dit.checkpoint_dtype == "fp32"  # Wan2.1's DiT checkpoints hold fp32 weights
    assert 1.2e9 < dit_params(small.dit) < 1.5e9  # "1.3B"
    assert DEFAULT_MODEL_CATALOG.get("wan2.1-i2v-14B").dit.in_dim == 36


def test_builtins_carry_the_traced_terms_of_both_runners() -> None:
    for profile in DEFAULT_MODEL_CATALOG.all():
        assert set(profile.activations) == {"generate.py", "diffusers"}, profile.name
        # Wan2.2's own code embeds the timestep per token and holds it for the whole sequence; Wan2.1's does not
        full = profile.activations["generate.py"].bytes_per_full_token
        if profile.family == "wan2.2":
            assert full > 20 * profile.dit.dim
        else:
            assert full < 0.5 * profile.dit.dim
        # diffusers' AutoencoderKLWan is traced for the Wan2.1 VAE
        assert set(profile.vae_decode) == ({"diffusers"} if profile.vae.family == "wan2.1" else set())


def test_parameter_counts_and_tokens_follow_the_architecture() -> None:
    a14b = DEFAULT_MODEL_CATALOG.get("t2v-A14B")
    assert 13.9e9 < dit_params(a14b.dit) < 14.5e9  # "~14B per expert"
    assert 4.8e9 < dit_params(DEFAULT_MODEL_CATALOG.get("ti2v-5B").dit) < 5.2e9
    assert a14b.tokens(1280, 720, 81) == 75_600
    assert a14b.tokens(832, 480, 81) == 32_760
    assert DEFAULT_MODEL_CATALOG.get("ti2v-5B").tokens(1280, 704, 121) == 27_280


def test_lookup_is_case_insensitive_and_unknown_names_list_the_known() -> None:
    assert DEFAULT_MODEL_CATALOG.get("T2V-a14b").name == "t2v-A14B"
    with pytest.raises(UnknownModel) as info:
        DEFAULT_MODEL_CATALOG.get("wan-99B")
    assert "ti2v-5B" in str(info.value)


def test_builtins_round_trip_through_the_json_schema() -> None:
    for profile in DEFAULT_MODEL_CATALOG.all():
        data = msgspec.json.encode(profile)
        assert msgspec.json.decode(data, type=ModelProfile) == profile


def test_user_profiles_load_from_toml_and_json() -> None:
    catalog = ModelCatalog()
    t2v = catalog.load_file(PROFILES / "wan21-t2v-14B.toml")
    i2v = catalog.load_file(PROFILES / "wan21-i2v-14B.json")
    assert catalog.get("t2v-14B") is t2v
    assert i2v.tasks == ("i2v",)
    assert t2v.dit.checkpoint_dtype == "fp32"
    assert "t2v-14B" not in DEFAULT_MODEL_CATALOG.names()


def test_bad_profile_files_name_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"name": "x", "dit": {"dim": -1, "ffn_dim": 1, "heads": 1, "layers": 1}, '
        '"vae": {"family": "f", "stride": [4, 8, 8], "z_dim": 16}}'
    )
    with pytest.raises(DecodeError) as info:
        ModelCatalog().load_file(bad)
    assert info.value.path == "$.dit.dim"
    assert info.value.source == str(bad)

    typo = tmp_path / "typo.toml"
    typo.write_text(
        'name = "x"\nlayerz = 3\n[dit]\ndim = 8\nffn_dim = 8\nheads = 1\nlayers = 1\n'
        '[vae]\nfamily = "f"\nstride = [4, 8, 8]\nz_dim = 4\n'
    )
    with pytest.raises(DecodeError, match="layerz"):
        ModelCatalog().load_file(typo)

    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(DecodeError):
        ModelCatalog().load_file(broken)

    wrong_frames = tmp_path / "frames.json"
    wrong_frames.write_text(
        '{"name": "x", "default_frames": 80, "dit": {"dim": 8, "ffn_dim": 8, "heads": 1, '
        '"layers": 1}, "vae": {"family": "f", "stride": [4, 8, 8], "z_dim": 4}}'
    )
    with pytest.raises(DecodeError, match="4k\\+1"):
        ModelCatalog().load_file(wrong_frames)

    with pytest.raises(ConfigError, match=r"\.json or \.toml"):
        ModelCatalog().load_file(tmp_path / "profile.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        ModelCatalog().load_file(tmp_path / "missing.json")


def test_parse_size() -> None:
    assert parse_size("1280*720") == (1280, 720)
    assert parse_size("832x480") == (832, 480)
    for bad in ("1280", "a*b", "0*720", "1280*720*3"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)
