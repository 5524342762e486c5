"""``vramgate estimate``: the table, the JSON, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vramgate.cli import main

PROFILES = Path(__file__).parent / "profiles"
BASE = [
    "estimate",
    "--model",
    "t2v-A14B",
    "--size",
    "1280x720",
    "--frames",
    "81",
    "--steps",
    "40",
    "--gpu",
    "H100-80GB",
]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_json_has_the_documented_fields() -> None:
    code, out = run(*BASE, "--offload-model", "--convert-model-dtype", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert {"vram_peak_mb", "ram_peak_mb", "seconds", "components"} <= set(data)
    assert 55 * 1024 < data["vram_peak_mb"] < 66 * 1024
    assert data["components"]["dit_weights"]["vram_mb"] > 25 * 1024
    assert data["params"]["options"]["offload_model"] is True
    assert data["fits"] is True


def test_multi_gpu_flags_lower_the_per_gpu_peak() -> None:
    _, one = run(*BASE, "--json")
    code, four = run(*BASE, "--gpus", "4", "--ulysses", "4", "--dit-fsdp", "--t5-fsdp", "--json")
    assert code == 0, four
    assert json.loads(four)["world_size"] == 4
    assert json.loads(four)["vram_peak_mb"] < json.loads(one)["vram_peak_mb"]


def test_table_output_lists_components_and_verdict() -> None:
    code, out = run(*BASE, "--convert-model-dtype", "--lora", "2")
    assert code == 0, out
    for word in ("dit_weights", "activations", "lora", "total", "fits"):
        assert word in out


def test_user_profile_file() -> None:
    code, out = run(
        "estimate",
        "--model",
        "t2v-14B",
        "--size",
        "832x480",
        "--gpu",
        "L40S",
        "--profile",
        str(PROFILES / "wan21-t2v-14B.toml"),
        "--offload-model",
        "--t5-cpu",
        "--json",
    )
    assert code == 1, out  # does not fit
    assert json.loads(out)["fits"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "t2v-9B"], "valid: i2v-A14B, t2v-A14B, ti2v-5B"),
        (["--gpu", "Z80"], "valid: A100-40GB"),
        (["--size", "1280x721"], "multiple of 16"),
        (["--size", "big"], "WIDTHxHEIGHT"),
        (["--frames", "80"], "4k+1"),
        (["--frames", "0"], "must be positive"),
        (["--steps", "-3"], "must be positive"),
        (["--gpus", "0"], "must be positive"),
        (["--task", "i2v"], "does not support"),
    ],
)
def test_bad_input_says_what_would_be_valid(args: list[str], message: str) -> None:
    full = list(BASE)
    for i in range(0, len(args), 2):
        if args[i] in full:
            full[full.index(args[i]) + 1] = args[i + 1]
        else:
            full += args[i : i + 2]
    code, out = run(*full)
    assert code != 0
    assert message in out
