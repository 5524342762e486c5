"""A plan is priced for the runner that will run it: generate.py, diffusers or DiffSynth-Studio."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from vramgate.cli import main
from vramgate.errors import DecodeError
from vramgate.messages import GenerationRequest, ResolvedOptions, RunOptions, RunParams
from vramgate.messages.codec import decode_json
from vramgate.policy.estimate import Estimator, resolve_options
from vramgate.policy.models import ModelCatalog
from vramgate.policy.optimize import Optimizer

PROFILES = Path(__file__).parent / "profiles"
GIB = 2.0**30
OFFLOAD = ResolvedOptions(offload_model=True, convert_model_dtype=True)


def _params(model: str, width: int, height: int, frames: int, options: ResolvedOptions) -> RunParams:
    return RunParams(model=model, task="t2v", width=width, height=height, frames=frames, steps=40, options=options)


def _with_runner(params: RunParams, runner: str) -> RunParams:
    return msgspec.structs.replace(params, options=msgspec.structs.replace(params.options, runner=runner))


def test_generate_py_is_the_default_runner_and_keeps_its_numbers() -> None:
    assert resolve_options(None).runner == resolve_options(RunOptions()).runner == "generate.py"
    estimator = Estimator()
    params = _params("t2v-A14B", 1280, 720, 81, OFFLOAD)
    assert estimator.estimate(params, "H100") == estimator.estimate(_with_runner(params, "generate.py"), "H100")


def test_diffusers_holds_a_quarter_of_generate_py_activations() -> None:
    estimator = Estimator()
    params = _params("t2v-A14B", 1280, 720, 81, OFFLOAD)
    own = estimator.breakdown(params, "H100")
    dif = estimator.breakdown(_with_runner(params, "diffusers"), "H100")
    latents = 4.0 * 4.0 * 16 * 21 * 1280 * 720 / 64
    assert (own.activations - latents) / GIB == pytest.approx(31.87, abs=0.05)
    assert (dif.activations - latents) / GIB == pytest.approx(8.02, abs=0.05)
    assert own.activation_peak == "blocks.*.self_attn.rope"
    assert estimator.estimate(_with_runner(params, "diffusers"), "H100").vram_mb < 0.8 * own.vram / 2**20


def test_wan21_has_no_whole_sequence_modulation_and_fits_an_h100_at_720p() -> None:
    """Wan2.1-14B 720p with --offload_model is published at 69.1 GB: priced as Wan2.2 it did not fit an H100."""
    estimator = Estimator()
    params = _params("wan2.1-t2v-14B", 1280, 720, 81, ResolvedOptions(offload_model=True))
    req = estimator.estimate(params, "H100-80GB")
    assert req.vram_mb / 1024 == pytest.approx(69.1, rel=0.03)
    assert estimator.fits(req, "H100-80GB")
    catalog = ModelCatalog()
    catalog.load_file(PROFILES / "wan21-t2v-14B.toml")  # the same model without traced terms
    untraced = Estimator(catalog).estimate(msgspec.structs.replace(params, model="t2v-14B"), "H100-80GB")
    assert untraced.vram_mb > 85 * 1024
    assert not estimator.fits(untraced, "H100-80GB")


def test_ti2v_5b_is_not_charged_an_ffn_that_is_not_live_at_the_peak() -> None:
    estimator = Estimator()
    params = _params("ti2v-5B", 1280, 704, 121, ResolvedOptions(vae_tiling=True))
    b = estimator.breakdown(params, "H100")
    assert b.peak_phase == "denoise"
    profile = estimator.profile("ti2v-5B")
    term = profile.activations["generate.py"]
    assert term.peak_phase == "blocks.*.self_attn.rope"
    latents = 4.0 * 4.0 * 48 * 31 * 1280 * 704 / 256
    traced = (b.activations - latents) / GIB
    assert traced == pytest.approx(6.92, abs=0.03)
    cal = estimator.constants
    formula = ((cal.act_local_bytes_per_token_dim + cal.act_full_bytes_per_token_dim) * 3072 + 4 * 14336) * 27_280
    assert formula / GIB > 1.08 * traced


def test_diffusers_decodes_with_its_own_vae_code() -> None:
    estimator = Estimator()
    params = _params("t2v-A14B", 1280, 720, 81, ResolvedOptions(runner="diffusers"))
    b = estimator.breakdown(params, "H100")
    assert b.peak_phase == "vae_decode"
    term = estimator.profile("t2v-A14B").vae_decode["diffusers"]
    pixels = 1280 * 720
    assert b.vae_work == pytest.approx(term.bytes_per_pixel * pixels + term.bytes_per_pixel_frame * pixels * 81)
    # generate.py keeps the calibrated working memory of Wan's own VAE code (not traced): diffusers' holds more
    assert term.bytes_per_pixel > 1.5 * estimator.constants.vae_bytes_per_pixel("wan2.1")


def test_block_streaming_under_diffusers_keeps_the_diffusers_term() -> None:
    estimator = Estimator()
    streamed = ResolvedOptions(convert_model_dtype=True, sequential_offload=True, vae_tiling=True)
    params = _params("t2v-A14B", 832, 480, 81, streamed)
    dif = estimator.breakdown(_with_runner(params, "diffusers"), "A100")
    syn = estimator.breakdown(_with_runner(params, "diffsynth"), "A100")
    own = estimator.breakdown(params, "A100")
    assert dif.peak_phase == syn.peak_phase == own.peak_phase == "denoise"
    assert own.activations == syn.activations  # generate.py cannot stream: priced as DiffSynth-Studio
    latents = 4.0 * 4.0 * 16 * 21 * 832 * 480 / 64
    assert (dif.activations - latents) / GIB == pytest.approx(3.48, abs=0.02)
    assert dif.activations < syn.activations


def test_the_optimizer_keeps_the_runner_and_prices_by_it() -> None:
    optimizer = Optimizer(Estimator())
    plans = {}
    for runner in ("generate.py", "diffusers"):
        request = GenerationRequest(
            model="t2v-A14B",
            width=1280,
            height=720,
            frames=81,
            options=RunOptions(runner=runner),  # type: ignore[arg-type]
        )
        plans[runner] = optimizer.optimize(
            request, gpu="H100", budget_mb=200_000, ram_budget_mb=None, max_level="basic"
        )
    assert plans["diffusers"].params.options.runner == "diffusers"
    assert plans["generate.py"].params.options.runner == "generate.py"
    assert plans["diffusers"].requirement.vram_mb < plans["generate.py"].requirement.vram_mb - 10 * 1024


def test_an_unknown_runner_is_a_decode_error_naming_the_field() -> None:
    body = '{"model": "t2v-A14B", "width": 1280, "height": 720, "options": {"runner": "comfyui"}}'
    with pytest.raises(DecodeError) as info:
        decode_json(body, GenerationRequest)
    assert info.value.path == "$.options.runner"


def test_estimate_and_optimize_take_a_runner() -> None:
    base = ["--model", "t2v-A14B", "--size", "1280x720", "--gpu", "H100-80GB", "--json"]
    runs = {r: CliRunner().invoke(main, ["estimate", *base, "--runner", r]) for r in ("generate.py", "diffusers")}
    for result in runs.values():  # exit 1: the run does not fit the GPU
        assert result.exit_code == (0 if json.loads(result.output)["fits"] else 1), result.output
    own, dif = (json.loads(runs[r].output)["vram_peak_mb"] for r in ("generate.py", "diffusers"))
    assert dif < own
    plan = CliRunner().invoke(main, ["optimize", *base, "--runner", "diffusers"])
    assert plan.exit_code == 0, plan.output
    assert json.loads(plan.output)["params"]["options"]["runner"] == "diffusers"
    bad = CliRunner().invoke(main, ["estimate", *base, "--runner", "comfyui"])
    assert bad.exit_code == 2
    assert "--runner" in bad.output
