"""Other video DiTs from their configuration alone: traced through the installed diffusers, then estimated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from vramgate.cli import main

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from vramgate.trace.dit import trace_diffusers  # noqa: E402
from vramgate.trace.profiles import FAMILIES, profile_from_config  # noqa: E402

HUNYUAN: dict[str, Any] = {
    "_class_name": "HunyuanVideoTransformer3DModel",
    "in_channels": 4,
    "out_channels": 4,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "num_layers": 1,
    "num_single_layers": 1,
    "num_refiner_layers": 1,
    "patch_size": 2,
    "patch_size_t": 1,
    "text_embed_dim": 32,
    "pooled_projection_dim": 16,
    "rope_axes_dim": [4, 6, 6],
}
COGVIDEOX: dict[str, Any] = {
    "_class_name": "CogVideoXTransformer3DModel",
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 4,
    "out_channels": 4,
    "time_embed_dim": 8,
    "text_embed_dim": 32,
    "num_layers": 1,
    "sample_width": 8,
    "sample_height": 8,
    "sample_frames": 8,
    "patch_size": 2,
    "max_text_seq_length": 16,
}
LTX: dict[str, Any] = {
    "_class_name": "LTXVideoTransformer3DModel",
    "in_channels": 8,
    "out_channels": 8,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "cross_attention_dim": 32,
    "num_layers": 1,
    "caption_channels": 32,
}
WAN: dict[str, Any] = {
    "_class_name": "WanTransformer3DModel",
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "text_dim": 32,
    "freq_dim": 16,
    "ffn_dim": 64,
    "num_layers": 1,
}
CONFIGS = {"hunyuanvideo": HUNYUAN, "cogvideox": COGVIDEOX, "ltx-video": LTX, "wan": WAN}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_meta_trace_of_a_diffusers_dit_is_a_real_cpu_run(name: str) -> None:
    config = {k: v for k, v in CONFIGS[name].items() if not k.startswith("_")}
    family = FAMILIES[CONFIGS[name]["_class_name"]]
    model_cls = getattr(diffusers, family.loader)
    patch = family.spec(config)["patch"]
    grids = ((9, 32, 32), (9, 48, 48))
    runs = [trace_diffusers(model_cls, config, family.inputs(config), grids, patch, device=d) for d in ("cpu", "meta")]
    (real, real_points, real_weights), (fake, fake_points, fake_weights) = runs
    assert real_points == fake_points
    assert real == fake
    assert real_weights == fake_weights
    assert real.bytes_per_token > 0


@pytest.mark.parametrize("name", ["hunyuanvideo", "cogvideox"])
def test_a_config_becomes_a_profile_the_estimator_prices(name: str, tmp_path: Path) -> None:
    from vramgate.messages import ResolvedOptions, RunParams
    from vramgate.policy._derived import derive
    from vramgate.policy._physics import dit_activations
    from vramgate.policy.estimate import Estimator
    from vramgate.policy.models import ModelCatalog

    profile = profile_from_config(CONFIGS[name], name)
    term = profile.activations["diffusers"]
    assert term.bytes_per_token > 0
    assert profile.dit.params_b is not None
    assert profile.dit.params_b > 0
    # the profile is plain data: written, read back and priced
    path = tmp_path / f"{name}.json"
    path.write_bytes(msgspec.json.encode(profile))
    catalog = ModelCatalog()
    loaded = catalog.load_file(path)
    assert loaded == profile
    width, height = (int(x) for x in profile.sizes[-1].split("*"))
    params = RunParams(
        model=name,
        task="t2v",
        width=width,
        height=height,
        frames=profile.default_frames,
        steps=10,
        options=ResolvedOptions(runner="diffusers"),
    )
    estimator = Estimator(catalog)
    b = estimator.breakdown(params, "H100")
    tokens = profile.tokens(width, height, profile.default_frames)
    assert b.tokens == tokens
    assert b.runner == "diffusers"
    derived = derive(loaded)
    value, peak = dit_activations(params.options, derived, estimator.constants, tokens, tokens, False)
    assert value == term.bytes_per_token * tokens + term.fixed_bytes
    assert peak == term.peak_phase


def test_profile_trace_cli_writes_a_profile_that_estimate_loads(tmp_path: Path) -> None:
    config = tmp_path / "cogvideox" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(COGVIDEOX))
    out = tmp_path / "cog.json"
    result = CliRunner().invoke(main, ["profile", "trace", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["name"] == "cogvideox"  # named after the config's folder
    args = ["estimate", "--profile", str(out), "--model", "cogvideox", "--size", "720x480", "--gpu", "H100"]
    result = CliRunner().invoke(main, [*args, "--runner", "diffusers", "--json"])
    assert result.exit_code == 0, result.output
    note = json.loads(result.output)["components"]["activations"]["note"]
    assert "diffusers" in note
    assert "peak in transformer_blocks" in note


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"_class_name": "UNet2DConditionModel"}', "cannot be traced"),
        ("[1, 2]", "JSON object"),
        ("{not json", "not a JSON object"),
        ('{"_class_name": "WanModel", "dim": 64}', "missing"),
    ],
)
def test_profile_trace_rejects_bad_configs_with_exit_2(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "config.json"
    config.write_text(content)
    result = CliRunner().invoke(main, ["profile", "trace", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_profile_trace_rejects_a_name_the_estimator_could_not_load(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(COGVIDEOX))
    result = CliRunner().invoke(main, ["profile", "trace", "--config", str(config), "--name", "my model!"])
    assert result.exit_code == 2, result.output
    assert "$.name" in result.output


def test_profile_trace_needs_exactly_one_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["profile", "trace"])
    assert result.exit_code == 2
    assert "--config" in result.output
    missing = CliRunner().invoke(main, ["profile", "trace", "--config", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2
    assert "cannot read" in missing.output
    unknown = CliRunner().invoke(main, ["profile", "trace", "--builtin", "wan-99B"])
    assert unknown.exit_code == 2
    assert "ti2v-5B" in unknown.output


def test_a_wan_model_config_traces_both_runners() -> None:
    config = {"_class_name": "WanModel", "dim": 128, "ffn_dim": 256, "num_heads": 4, "num_layers": 2}
    profile = profile_from_config(config, "tiny-wan", family="wan2.1")
    assert set(profile.activations) == {"generate.py", "diffusers"}
    # Wan2.1: no per-token modulation; every rank builds only the RoPE frequencies of the whole sequence
    assert profile.activations["generate.py"].bytes_per_full_token == 8 * (128 // 4)
