from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from vramgate.cli import main
from vramgate.messages import ResourceSample, decode_json


def _check(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["check", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_check_json_has_the_documented_fields(tmp_path: object) -> None:
    code, output = _check("--json", "--simulate", "H100-80GB", "--simulate", "24GB", "--disk", str(tmp_path))
    assert code == 0
    data = json.loads(output)
    simulated = [device for device in data["devices"] if device["simulated"]]
    assert [device["name"] for device in simulated] == ["H100-80GB", "24GB"]
    for device in data["devices"]:
        for key in ("index", "name", "uuid", "total_mb", "free_mb", "used_mb", "backend"):
            assert key in device
    assert simulated[0]["backend"] == "simulated"
    assert simulated[0]["total_mb"] == 81559
    assert simulated[0]["used_mb"] + simulated[0]["free_mb"] == 81559
    for key in ("ram_total_mb", "ram_available_mb", "cpu_count", "disk_free_mb"):
        assert isinstance(data["host"][key], int)
    assert data["host"]["disk_path"] == str(tmp_path)
    assert isinstance(data["warnings"], list)
    # the output is a ResourceSample message that other tools can decode
    decoded = decode_json(output.encode(), ResourceSample)
    assert [device.name for device in decoded.devices if device.simulated] == ["H100-80GB", "24GB"]


@pytest.mark.parametrize("missing", [("pynvml",), ("torch",), ("pynvml", "torch")])
def test_check_without_libraries_exits_0_and_says_so(monkeypatch: pytest.MonkeyPatch, missing: tuple[str, ...]) -> None:
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # ``import name`` now fails as if not installed
    code, output = _check("--json")
    assert code == 0
    warnings = json.loads(output)["warnings"]
    if "pynvml" in missing:
        assert any("nvidia-ml-py (pynvml) is not installed" in warning for warning in warnings)
        # without NVML torch is tried: it measures the GPUs, or says why it cannot
        torch_devices = [device for device in json.loads(output)["devices"] if device["backend"] == "torch"]
        assert torch_devices or any(warning.startswith("torch:") for warning in warnings)
    if missing == ("pynvml", "torch"):
        assert any("torch: not installed" in warning for warning in warnings)
        assert any("no GPU backend" in warning for warning in warnings)
    code, output = _check()
    assert code == 0
    if warnings:  # (with NVML working, a missing torch is nothing to report)
        assert "Warnings (what could not be measured)" in output
        assert warnings[0] in output.replace("\n", " ") or warnings[0][:40] in output
    else:
        assert "no warnings" in output
    assert "Host" in output


def test_check_readable_report_marks_simulated_devices() -> None:
    code, output = _check("--simulate", "L40S", "--no-nvml", "--no-torch")
    assert code == 0
    assert "L40S-48GB" in output
    assert "simulated" in output
    assert "nvml: disabled" in output
    assert "RAM" in output


def test_check_rejects_an_unknown_gpu_name() -> None:
    result = CliRunner().invoke(main, ["check", "--simulate", "H999"])
    assert result.exit_code == 2
    assert "unknown GPU" in result.output
    assert "H100-80GB" in result.output  # names the valid choices


def test_monitor_json_streams_count_samples() -> None:
    result = CliRunner().invoke(
        main,
        ["monitor", "--json", "--count", "3", "--interval", "0.05", "--simulate", "24GB", "--no-nvml", "--no-torch"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == 3
    samples = [decode_json(line.encode(), ResourceSample) for line in lines]
    times = [sample.at for sample in samples]
    assert times == sorted(times)
    assert times[-1] - times[0] >= 0.09  # two intervals of 0.05 s
    assert all(sample.devices[0].name == "24GB" and sample.devices[0].simulated for sample in samples)
    assert all(sample.host is not None for sample in samples)


def test_monitor_live_view_stops_after_count() -> None:
    result = CliRunner().invoke(
        main,
        ["monitor", "--count", "2", "--interval", "0.05", "--simulate", "H100-80GB", "--no-nvml", "--no-torch"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0
    assert "sample 2 of 2" in result.output
    assert "H100-80GB" in result.output
    assert "history" in result.output
