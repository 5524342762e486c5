"""``vramgate optimize``: human output, JSON output, exit codes and usage errors."""

from __future__ import annotations

import json

import msgspec
import pytest
from click.testing import CliRunner

from vramgate.cli import main
from vramgate.messages import RunParams
from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG

BASE = ["optimize", "--model", "t2v-A14B", "--frames", "81", "--steps", "40"]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*BASE, *args])
    return result.exit_code, result.output


def test_json_plan_that_fits() -> None:
    code, out = invoke("--size", "832x480", "--gpu", "RTX4090-24GB", "--ram-mb", "131072", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["fits"] is True
    assert data["gpu"] == "RTX4090-24GB"
    assert data["requirement"]["vram_mb"] <= data["budget_mb"]
    assert data["requirement"]["ram_mb"] <= 131072
    assert {s["parameter"] for s in data["suggestions"]} <= {
        "free_text_encoder",
        "one_expert_in_ram",
        "convert_model_dtype",
        "offload_model",
        "t5_cpu",
        "vae_tiling",
        "resident_blocks",
        "sequential_offload",
    }
    assert (data["params"]["width"], data["params"]["height"], data["params"]["frames"]) == (832, 480, 81)
    gpu = DEFAULT_GPU_CATALOG.get("RTX4090-24GB")
    assert data["budget_mb"] == gpu.memory_mib - max(1024, -(-gpu.memory_mib * 5 // 100))
    assert "x the time" in data["summary"] or "no slower" in data["summary"]


def test_pinned_flags_reach_the_plan() -> None:
    code, out = invoke("--size", "832x480", "--vram-mb", "30000", "--t5-cpu", "--no-offload-model", "--json")
    data = json.loads(out)
    assert data["params"]["options"]["t5_cpu"] is True
    assert data["params"]["options"]["offload_model"] is False
    assert code == (0 if data["fits"] else 1)


def test_human_output_says_what_changes_and_how_much_slower() -> None:
    code, out = invoke("--size", "832x480", "--gpu", "RTX4090-24GB")
    assert code == 0, out
    assert "FITS on RTX4090-24GB" in out
    assert "the time" in out or "no slower" in out
    assert "run with:" in out
    assert "--offload_model" in out


def test_no_fit_exits_1_and_names_the_smallest_gpu() -> None:
    code, out = invoke("--size", "1280x720", "--gpu", "RTX3060-12GB", "--json")
    assert code == 1
    data = json.loads(out)
    assert data["fits"] is False
    assert data["needed_mb"] == data["requirement"]["vram_mb"]
    assert data["smallest_gpu"] in DEFAULT_GPU_CATALOG.names()
    code, out = invoke("--size", "1280x720", "--gpu", "RTX3060-12GB")
    assert code == 1
    assert "DOES NOT FIT" in out
    assert "smallest GPU" in out


def test_levels_lower_quality_only_when_allowed() -> None:
    _, basic = invoke("--size", "1280x720", "--vram-mb", "20000", "--level", "basic", "--json")
    _, maximum = invoke("--size", "1280x720", "--vram-mb", "20000", "--level", "maximum", "--json")
    b, m = json.loads(basic), json.loads(maximum)
    assert (b["params"]["width"], b["params"]["frames"]) == (1280, 81)
    assert m["fits"] is True
    assert m["requirement"]["vram_mb"] <= 20000
    estimated = Estimator().estimate(msgspec.convert(m["params"], RunParams), "20000MiB")
    assert estimated.vram_mb == m["requirement"]["vram_mb"]


def test_usage_errors() -> None:
    code, out = invoke("--size", "832x480")
    assert code == 2
    assert "--gpu" in out
    code, out = invoke("--size", "832x480", "--gpu", "TPU-9000")
    assert code == 2
    assert "unknown GPU" in out
    code, out = invoke("--size", "wide", "--gpu", "H100")
    assert code == 2
    assert "--size" in out
    code, out = invoke("--size", "830x480", "--gpu", "H100")
    assert code == 2
    assert "width" in out


def test_the_4090_with_64gb_fits_720p_and_says_what_it_costs() -> None:
    code, text = invoke("--size", "1280x720", "--gpu", "RTX4090-24GB", "--ram-mb", "65536")
    assert code == 0, text
    flat = " ".join(text.split())
    assert flat.startswith("FITS on RTX4090-24GB")
    assert "by memory techniques alone (no quality loss)" in flat
    assert "x the time (+" in flat
    assert "the text encoder freed after encoding" in flat


def test_a_host_ram_shortfall_says_host_ram_is_short_and_what_to_do() -> None:
    code, out = invoke("--size", "1280x720", "--gpu", "RTX4090-24GB", "--ram-mb", "24576", "--json")
    assert code == 1
    data = json.loads(out)
    assert data["requirement"]["vram_mb"] <= data["budget_mb"]  # the VRAM fits; host RAM does not
    need = data["requirement"]["ram_mb"]
    assert need > 24576
    # the nearest miss holds one bf16 expert (26.6 GiB) and the process, not both experts
    assert need < 30 * 1024
    assert data["params"]["options"]["one_expert_in_ram"] is True
    reason = data["reason"]
    assert "host RAM" in reason
    assert f"{need / 1024:.1f} GiB of host RAM" in reason
    assert "smallest GPU" not in reason
    code, text = invoke("--size", "1280x720", "--gpu", "RTX4090-24GB", "--ram-mb", "24576")
    assert code == 1
    assert f"--ram-mb {need}" in " ".join(text.split())


@pytest.mark.parametrize(("model", "size", "moe"), [("t2v-A14B", "1280x720", True), ("ti2v-5B", "1280x704", False)])
def test_offloading_speaks_of_the_idle_expert_only_for_moe_models(model: str, size: str, moe: bool) -> None:
    # the text encoder kept (pinned), so that offloading is what the plan uses
    args = ["optimize", "--model", model, "--size", size, "--gpu", "RTX4090-24GB", "--no-free-text-encoder", "--json"]
    result = CliRunner().invoke(main, args)
    data = json.loads(result.output)
    offload = [s["reason"] for s in data["suggestions"] if s["parameter"] == "offload_model"]
    assert offload, data["suggestions"]
    assert ("idle expert" in offload[0]) is moe
    assert "--offload_model True" in offload[0]
