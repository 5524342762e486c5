"""The estimator against published figures, known OOM reports, and its input validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from vramgate.errors import InvalidParameter, UnknownGPU, UnknownModel
from vramgate.messages import GenerationRequest, ResolvedOptions, RunOptions, RunParams
from vramgate.policy._reference import read_published
from vramgate.policy.estimate import Estimator, nearest_frames
from vramgate.policy.models import ModelCatalog

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "vramgate" / "data" / "reference"
PUBLISHED = REFERENCE / "wan_published.csv"
PROFILES = Path(__file__).parent / "profiles"


def test_the_reference_data_ships_with_the_project() -> None:
    from vramgate.policy._reference import REFERENCE_DIR

    assert REFERENCE_DIR.resolve() == REFERENCE.resolve()
    for name in ("README.md", "wan_published.csv", "offload_tradeoffs.csv", "wan_architectures.md"):
        assert (REFERENCE_DIR / name).is_file(), name
    assert len(read_published(REFERENCE_DIR / "wan_published.csv")) >= 10


def _rows() -> list[object]:
    return list(read_published(PUBLISHED))


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r.label)
def test_published_rows_within_tolerance(row: object) -> None:
    from vramgate.policy._reference import PublishedRow

    assert isinstance(row, PublishedRow)
    req = Estimator().estimate(row.params, row.gpu)
    assert abs(req.vram_mb / row.peak_mb - 1) <= 0.10, (req.vram_mb, row.peak_mb)
    assert abs(req.estimated_time_seconds / row.seconds - 1) <= 0.10, (req.estimated_time_seconds, row.seconds)
    assert req.world_size == row.params.options.gpus
    assert sum(c.vram_mb for c in req.components) == req.vram_mb


def _catalog_with_wan21() -> ModelCatalog:
    catalog = ModelCatalog()
    catalog.load_file(PROFILES / "wan21-t2v-14B.toml")
    catalog.load_file(PROFILES / "wan21-i2v-14B.json")
    return catalog


FSDP4 = ResolvedOptions(gpus=4, ulysses=4, dit_fsdp=True, t5_fsdp=True)
ONE_GPU = ResolvedOptions(offload_model=True, convert_model_dtype=True, t5_cpu=True)

OOM_REPORTS: list[tuple[Any, ...]] = [
    # (issue, model, task, width, height, frames, steps, gpu, options)
    ("Wan2.2#90", "ti2v-5B", "t2v", 1280, 704, 121, 50, "RTX3090-24GB", ONE_GPU),
    ("Wan2.2#144", "t2v-A14B", "t2v", 1280, 720, 81, 40, "RTX3060-12GB", ONE_GPU),
    (
        "Wan2.2#51",
        "t2v-A14B",
        "t2v",
        1280,
        720,
        81,
        40,
        "RTX5090-32GB",
        ResolvedOptions(gpus=8, ulysses=8, dit_fsdp=True, t5_fsdp=True),
    ),
    ("Wan2.2#87", "i2v-A14B", "i2v", 1280, 720, 81, 40, "A100-40GB", FSDP4),
    ("Wan2.2#87-480p", "i2v-A14B", "i2v", 832, 480, 81, 40, "A100-40GB", FSDP4),
    ("Wan2.2#269", "i2v-A14B", "i2v", 1280, 720, 193, 40, "H100-80GB", FSDP4),
    ("Wan2.1#205", "t2v-14B", "t2v", 832, 480, 81, 50, "L40S-48GB", ResolvedOptions(offload_model=True, t5_cpu=True)),
    ("Wan2.1#174", "i2v-14B", "i2v", 832, 480, 161, 40, "16GB", ResolvedOptions(offload_model=True, t5_cpu=True)),
]


@pytest.mark.parametrize("case", OOM_REPORTS, ids=lambda c: str(c[0]))
def test_reported_ooms_are_predicted_not_to_fit(case: tuple[Any, ...]) -> None:
    _, model, task, width, height, frames, steps, gpu, options = case
    estimator = Estimator(_catalog_with_wan21())
    params = RunParams(model=model, task=task, width=width, height=height, frames=frames, steps=steps, options=options)
    req = estimator.estimate(params, gpu)
    assert not estimator.fits(req, gpu), req.vram_mb


def test_the_replaced_systems_case_is_no_longer_six_gigabytes() -> None:
    estimator = Estimator()
    params = estimator.resolve(
        GenerationRequest(
            model="t2v-A14B",
            width=1280,
            height=720,
            options=RunOptions(offload_model=True, convert_model_dtype=True),
        )
    )
    req = estimator.estimate(params, "H100-80GB")
    assert req.vram_mb > 55 * 1024
    assert estimator.fits(req, "H100-80GB")
    assert not estimator.fits(req, "A100-40GB")


def test_resolve_fills_defaults_and_leaves_unpinned_options_off() -> None:
    estimator = Estimator()
    params = estimator.resolve(GenerationRequest(model="ti2v-5B", width=1280, height=704))
    assert (params.task, params.frames, params.steps, params.fps) == ("t2v", 121, 50, 24)
    assert params.options == ResolvedOptions()
    pinned = estimator.resolve(
        GenerationRequest(model="t2v-A14B", width=832, height=480, options=RunOptions(t5_cpu=True, gpus=2))
    )
    assert pinned.options.t5_cpu
    assert pinned.options.gpus == 2
    assert not pinned.options.offload_model


def test_duration_is_rounded_to_4k_plus_1_frames() -> None:
    estimator = Estimator()
    params = estimator.resolve(GenerationRequest(model="t2v-A14B", width=832, height=480, duration_s=5.0))
    assert params.frames == 81  # 5 s at 16 fps = 80 -> 81
    assert nearest_frames(2.0, 24, 4) == 49
    assert nearest_frames(0.01, 16, 4) == 1


@pytest.mark.parametrize(
    ("change", "field", "hint"),
    [
        ({"width": 1281}, "width", "1280 or 1296"),
        ({"height": 0}, "height", "positive"),
        ({"frames": 80}, "frames", "77 or 81"),
        ({"steps": 0}, "steps", "1 or more"),
        ({"task": "i2v"}, "task", "t2v"),
    ],
)
def test_invalid_values_name_the_field_and_what_is_valid(change: dict[str, object], field: str, hint: str) -> None:
    base = RunParams(model="t2v-A14B", task="t2v", width=1280, height=720, frames=81, steps=40)
    params = msgspec.structs.replace(base, **change)
    with pytest.raises(InvalidParameter) as info:
        Estimator().estimate(params, "H100")
    assert info.value.field == field
    assert hint in str(info.value)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (ResolvedOptions(gpus=4, ulysses=3), "ulysses"),
        (ResolvedOptions(dit_fsdp=True), "dit_fsdp/t5_fsdp"),
        (ResolvedOptions(gpus=2, t5_fsdp=True, t5_cpu=True), "t5_cpu"),
        (ResolvedOptions(resident_blocks=41), "resident_blocks"),
    ],
)
def test_invalid_option_combinations_are_rejected(options: ResolvedOptions, field: str) -> None:
    params = RunParams(model="t2v-A14B", task="t2v", width=1280, height=720, frames=81, steps=40, options=options)
    with pytest.raises(InvalidParameter) as info:
        Estimator().estimate(params, "H100")
    assert info.value.field == field


def test_unknown_model_and_gpu_list_the_known_ones() -> None:
    estimator = Estimator()
    with pytest.raises(UnknownModel, match="t2v-A14B"):
        estimator.resolve(GenerationRequest(model="t2v-1.3B", width=832, height=480))
    params = RunParams(model="t2v-A14B", task="t2v", width=1280, height=720, frames=81, steps=40)
    with pytest.raises(UnknownGPU, match="H100-80GB"):
        estimator.estimate(params, "B300")


def test_components_explain_the_peak_and_time() -> None:
    params = RunParams(model="t2v-A14B", task="t2v", width=1280, height=720, frames=81, steps=40, options=ONE_GPU)
    req = Estimator().estimate(params, "H100-80GB")
    parts = {c.name: c for c in req.components}
    assert {"dit_weights", "activations", "vae_work", "runtime", "text_encoder", "weight_transfers"} <= set(parts)
    # one bf16 14B expert resident (~26.6 GiB), T5 on the CPU
    assert 25 * 1024 < parts["dit_weights"].vram_mb < 28 * 1024
    assert parts["text_encoder"].vram_mb == 0
    assert parts["activations"].seconds > 0.8 * req.estimated_time_seconds
    assert req.ram_mb > 2 * parts["dit_weights"].vram_mb  # both experts wait on the host between swaps
    assert abs(sum(c.seconds for c in req.components) - req.estimated_time_seconds) < 1e-6


def test_fp8_and_lora_change_weights_as_expected() -> None:
    estimator = Estimator()
    base = RunParams(model="t2v-A14B", task="t2v", width=832, height=480, frames=81, steps=40, options=ONE_GPU)
    fp8 = msgspec.structs.replace(base, options=msgspec.structs.replace(ONE_GPU, dit_dtype="fp8"))
    w = {c.name: c.vram_mb for c in estimator.estimate(base, "H100").components}["dit_weights"]
    w8 = {c.name: c.vram_mb for c in estimator.estimate(fp8, "H100").components}["dit_weights"]
    assert abs(w8 / w - 0.5) < 0.01
    from vramgate.messages import LoraSpec

    lora = msgspec.structs.replace(base, lora=(LoraSpec(name="a", size_mb=600),))
    parts = {c.name: c.vram_mb for c in estimator.estimate(lora, "H100").components}
    assert parts["lora"] == 600


def test_host_ram_holds_what_the_gpu_does_not() -> None:
    estimator = Estimator()
    base = RunParams(
        model="t2v-A14B",
        task="t2v",
        width=832,
        height=480,
        frames=81,
        steps=40,
        options=ResolvedOptions(convert_model_dtype=True),
    )
    resident = estimator.estimate(base, "H100").ram_mb
    offload = estimator.estimate(msgspec.structs.replace(base, options=ONE_GPU), "H100").ram_mb
    # both bf16 experts wait on the host while the prompt is encoded (a GPU holds one at a time); with
    # offloading (and the T5 on the CPU) the T5 is on the host too
    assert 53 * 1024 < resident < 60 * 1024
    assert offload > resident + 9 * 1024


def _a14b(**options: Any) -> RunParams:
    return RunParams(
        model="t2v-A14B",
        task="t2v",
        width=1280,
        height=720,
        frames=81,
        steps=40,
        options=ResolvedOptions(convert_model_dtype=True, **options),
    )


def test_host_ram_is_the_largest_phase_not_everything_ever_loaded() -> None:
    estimator = Estimator()
    held = estimator.estimate(_a14b(offload_model=True), "RTX4090-24GB")
    freed = estimator.estimate(_a14b(offload_model=True, free_text_encoder=True), "RTX4090-24GB")
    one = estimator.estimate(_a14b(offload_model=True, free_text_encoder=True, one_expert_in_ram=True), "RTX4090-24GB")
    # offload_model returns the T5 (10.6 GiB bf16) to the host after encoding: freeing it removes it there
    assert 10 * 1024 < held.ram_mb - freed.ram_mb < 11 * 1024
    # one bf16 expert of 14.3B parameters less on the host
    assert 26 * 1024 < freed.ram_mb - one.ram_mb < 27.5 * 1024
    assert held.vram_mb == freed.vram_mb == one.vram_mb
    # the idle expert is read from the fp32 checkpoint at the boundary: 57 GB at the disk's read rate
    assert one.estimated_time_seconds - freed.estimated_time_seconds == pytest.approx(14.3e9 * 4 / 3.5e9, rel=0.05)
    reads = {c.name: c.seconds for c in one.components}["checkpoint_reads"]
    reads_te = {c.name: c.seconds for c in freed.components}["checkpoint_reads"]
    assert reads - reads_te == pytest.approx(one.estimated_time_seconds - freed.estimated_time_seconds, rel=1e-6)
    assert "checkpoint_reads" not in {c.name for c in held.components}


def test_freeing_the_text_encoder_frees_its_vram_after_encoding() -> None:
    estimator = Estimator()
    kept = estimator.estimate(_a14b(resident_blocks=2), "RTX4090-24GB")
    freed = estimator.estimate(_a14b(resident_blocks=2, free_text_encoder=True), "RTX4090-24GB")
    assert 10 * 1024 < kept.vram_mb - freed.vram_mb < 11 * 1024
    # the next run reads the text encoder (umT5, 11.4 GB in bf16) back from the checkpoint
    added = freed.estimated_time_seconds - kept.estimated_time_seconds
    assert added == pytest.approx(11.4e9 / 3.5e9, rel=0.05)


def _offload_rows() -> list[object]:
    from vramgate.policy.fit import offload_rows

    return list(offload_rows(REFERENCE))


def test_the_offload_rows_are_the_streamed_wan14b_runs() -> None:
    rows = _offload_rows()
    from vramgate.policy._reference import OffloadMemoryRow

    assert all(isinstance(r, OffloadMemoryRow) for r in rows)
    labels = [r.label for r in rows if isinstance(r, OffloadMemoryRow)]
    # DiffSynth 7e9 / 0 (bf16), 0 (fp8) persistent and diffusers leaf-level group offloading; no resident rows
    assert len(labels) == 4
    assert not any("resident" in label or "cpu_offload" in label for label in labels)
    seven = next(r for r in rows if isinstance(r, OffloadMemoryRow) and r.mode.startswith("7e9"))
    assert seven.params.options.resident_blocks == 19  # the embeddings, then 19 whole blocks within 7e9 params
    assert (seven.params.width, seven.params.height, seven.params.frames) == (832, 480, 81)


@pytest.mark.parametrize("row", _offload_rows(), ids=lambda r: r.label)
def test_streamed_offload_rows_within_tolerance(row: object) -> None:
    from vramgate.policy._reference import OffloadMemoryRow

    assert isinstance(row, OffloadMemoryRow)
    req = Estimator().estimate(row.params, row.gpu)
    assert abs(req.vram_mb / row.peak_mb - 1) <= 0.20, (req.vram_mb, row.peak_mb)


def test_the_fit_reproduces_the_shipped_calibration() -> None:
    from vramgate.policy.calibration import Calibration
    from vramgate.policy.fit import fit

    fitted, counts = fit(REFERENCE)
    assert counts["offload_memory_rows"] == 4
    shipped = Calibration.default()
    assert msgspec.structs.replace(fitted, source="") == msgspec.structs.replace(shipped, source="")


def test_block_streaming_prices_the_streaming_runners_activations() -> None:
    """Streamed plans hold fewer activations per token (bf16 residual, one modulation per sample)."""
    estimator = Estimator()
    params = RunParams(model="t2v-A14B", task="t2v", width=1280, height=720, frames=81, steps=40, options=ONE_GPU)
    streamed = msgspec.structs.replace(params, options=msgspec.structs.replace(ONE_GPU, sequential_offload=True))
    official = estimator.breakdown(params, "RTX4090-24GB")
    runner = estimator.breakdown(streamed, "RTX4090-24GB")
    cal = estimator.constants
    assert runner.activations < 0.75 * official.activations
    per_token = (cal.act_streamed_bytes_per_token_dim * 5120 + cal.act_ffn_bytes_per_token * 13824) * 75_600
    latents = 4.0 * 4.0 * 16 * 21 * 1280 * 720 / 64
    assert runner.activations == pytest.approx(per_token + latents)
    # ti2v-5B conditions every token on its own timestep: DiffSynth-Studio keeps that whole-sequence modulation
    options = msgspec.structs.replace(ONE_GPU, sequential_offload=True, vae_tiling=True, runner="diffsynth")
    five = RunParams(model="ti2v-5B", task="t2v", width=1280, height=704, frames=241, steps=50, options=options)
    catalog = ModelCatalog()
    profile = catalog.get("ti2v-5B")
    assert profile.dit.token_timesteps
    catalog.register(msgspec.structs.replace(profile, dit=msgspec.structs.replace(profile.dit, token_timesteps=False)))
    with_tokens = estimator.breakdown(five, "RTX4090-24GB")
    without = Estimator(models=catalog).breakdown(five, "RTX4090-24GB")
    assert with_tokens.peak_phase == without.peak_phase == "denoise"
    tokens = with_tokens.tokens
    assert with_tokens.activations - without.activations == pytest.approx(
        cal.act_full_bytes_per_token_dim * 3072 * tokens
    )


def test_host_runtime_ram_is_the_process_and_the_decoded_video() -> None:
    estimator = Estimator()
    short = RunParams(model="t2v-A14B", task="t2v", width=1280, height=720, frames=41, steps=40, options=ONE_GPU)
    long = msgspec.structs.replace(short, frames=81)
    a, b = estimator.breakdown(short, "H100"), estimator.breakdown(long, "H100")
    host = estimator.constants.host_runtime_mb * 2**20
    assert a.ram_runtime == pytest.approx(host + 12.0 * 1280 * 720 * 41)
    assert b.ram_runtime - a.ram_runtime == pytest.approx(12.0 * 1280 * 720 * 40)
    four = msgspec.structs.replace(long, options=FSDP4)
    assert estimator.breakdown(four, "H100").ram_runtime == pytest.approx(4 * host + 12.0 * 1280 * 720 * 81)


def test_an_estimate_follows_a_profile_registered_again_and_new_constants() -> None:
    """Estimates of the same run are remembered, but never past a change of what they are computed from."""
    catalog = ModelCatalog()
    est = Estimator(catalog)
    params = est.resolve(GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=121, steps=50))
    first = est.estimate(params, "H100-80GB")
    assert est.estimate(params, "H100-80GB") == first
    assert est.breakdown(params, "H100-80GB").vram == est.breakdown(params, "H100-80GB").vram
    profile = catalog.get("ti2v-5B")
    bigger = msgspec.structs.replace(profile, dit=msgspec.structs.replace(profile.dit, dim=profile.dit.dim * 2))
    catalog.register(bigger)
    second = est.estimate(params, "H100-80GB")
    assert second.vram_mb > first.vram_mb
    cal = est.constants
    est.constants = msgspec.structs.replace(cal, safety_margin_fraction=cal.safety_margin_fraction)  # equal values
    assert est.estimate(params, "H100-80GB") == second
    est.constants = msgspec.structs.replace(cal, runtime_overhead_mb=cal.runtime_overhead_mb * 4)
    assert est.estimate(params, "H100-80GB").vram_mb > second.vram_mb
