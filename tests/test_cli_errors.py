"""Bad input on the command line: one line naming what is wrong, exit status 2, never a traceback.

Exit statuses mean one thing in every command: 0 done, 1 "does not fit" (or a check that found problems),
2 bad input (an option, a size, a model, a file).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from vramgate.cli import main

ROOT = Path(__file__).resolve().parents[1]
TRACE = str(ROOT / "bench" / "traces" / "burst-24gb.jsonl")
RUN = ["--model", "t2v-A14B", "--size", "832x480"]


@pytest.fixture(scope="module")
def demo_log(small_demo_log: Path) -> Path:
    """A real message log (the demo's first two requests)."""
    return small_demo_log


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_bad_input(result: Result, fragment: str) -> None:
    """Exit 2, exactly one error line (naming ``fragment``) and no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0], errors[0]


@pytest.mark.parametrize("size", ["nanGB", "infGB", "1e400GB"])
@pytest.mark.parametrize("command", ["estimate", "optimize"])
def test_gpu_size_that_is_not_finite(command: str, size: str) -> None:
    assert_bad_input(invoke(command, *RUN, "--gpu", size), size)


def test_gpu_size_below_one_mib() -> None:
    assert_bad_input(invoke("estimate", *RUN, "--gpu", "0.5MiB"), "0.5MiB")


@pytest.mark.parametrize(
    "args",
    [
        ["check", "--simulate", "nanGB"],
        ["check", "--simulate", "0.5MiB"],
        ["monitor", "--simulate", "nanGB", "--count", "1", "--json"],
        ["simulate", "--trace", TRACE, "--devices", "nanGB"],
        ["simulate", "--trace", TRACE, "--devices", "2xinfGB"],
    ],
)
def test_simulated_device_size_that_is_not_a_size(args: list[str]) -> None:
    assert_bad_input(invoke(*args), "GB" if "GB" in args[-1] else "MiB")


def test_demo_requests_that_are_not_json(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)))
    assert_bad_input(invoke("demo", "--no-live", "--requests", str(garbage)), "garbage.bin")


def test_demo_log_that_is_a_directory(tmp_path: Path) -> None:
    assert_bad_input(invoke("demo", "--no-live", "--log", str(tmp_path)), "directory")


def test_plot_to_a_format_it_cannot_write(demo_log: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.txt"
    assert_bad_input(invoke("plot", str(demo_log), "-o", str(out)), ".txt")
    assert not out.exists()


def test_simulate_plot_to_a_path_that_cannot_be_written(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "p.png"
    assert_bad_input(invoke("simulate", "--trace", TRACE, "--devices", "24GB", "--plot", str(out)), "missing")


def test_validate_deeply_nested_json(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert_bad_input(invoke("validate", str(deep)), "nested")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_float_options_reject_nan_and_inf(value: str, tmp_path: Path) -> None:
    assert_bad_input(invoke("demo", "--no-live", "--log", str(tmp_path / "d.jsonl"), "--time-scale", value), value)
    assert_bad_input(invoke("monitor", "--simulate", "24GB", "--count", "1", "--interval", value), value)
    assert_bad_input(invoke("simulate", "--trace", TRACE, "--devices", "24GB", "--mem-spread", value), "--mem-spread")


# --------------------------------------------------------------------------- exit codes


def test_unknown_model_is_a_usage_error_in_estimate_and_optimize() -> None:
    for command in ("estimate", "optimize"):
        result = invoke(command, "--model", "t2v-9B", "--size", "832x480", "--gpu", "H100-80GB")
        assert_bad_input(result, "t2v-9B")


def test_does_not_fit_exits_1_in_estimate_as_in_optimize() -> None:
    for command in ("estimate", "optimize"):
        result = invoke(command, *RUN, "--gpu", "2GB")
        assert result.exit_code == 1, result.output
        assert "not fit" in result.output.lower()
    assert invoke("estimate", *RUN, "--gpu", "H200-141GB").exit_code == 0


def test_a_bad_device_or_policy_in_simulate_is_a_usage_error() -> None:
    assert_bad_input(invoke("simulate", "--trace", TRACE, "--devices", "3xB300"), "B300")
    assert_bad_input(invoke("simulate", "--trace", TRACE, "--devices", "24GB", "--policy", "fifo"), "fifo")


# --------------------------------------------------------------------------- the installed entry point


def _entry_point() -> str:
    found = Path(sys.executable).parent / "vramgate"
    if found.is_file():
        return str(found)
    which = shutil.which("vramgate")
    assert which is not None, "the vramgate entry point is not installed"
    return which


def _run_entry_point(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [_entry_point(), *args], capture_output=True, text=True, timeout=60, env=env, check=False, cwd=ROOT
    )


def _assert_one_line(done: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, done.stderr
    assert fragment in errors[0], errors[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--simulate", "nanGB"], "nanGB"),
        (["--simulate", "0.5MiB"], "0.5MiB"),
        (["--simulate", "100MiB"], "100MiB"),
        (["--log", "/"], "directory"),
        (["--log", "/no/such/dir/run.jsonl"], "/no/such/dir"),
        (["--config", "{tmp}/deep.toml"], "nested too deeply"),
        (["--config", "{tmp}/garbage.toml"], "not UTF-8"),
        (["--config", "{tmp}/bad-size.toml"], "nanGB"),
        (["--time-scale", "nan"], "--time-scale"),
    ],
)
def test_serve_rejects_bad_devices_logs_and_configs_before_it_starts(
    args: list[str], fragment: str, tmp_path: Path
) -> None:
    (tmp_path / "deep.toml").write_text("a = " + "[" * 5_000 + "]" * 5_000 + "\n")
    (tmp_path / "garbage.toml").write_bytes(bytes(range(256)))
    (tmp_path / "bad-size.toml").write_text('[devices]\nsimulate = ["nanGB"]\n')
    filled = [arg.format(tmp=tmp_path) for arg in args]
    _assert_one_line(_run_entry_point("serve", "--port", "0", *filled), fragment)


def test_entry_point_estimate_of_a_nan_gpu() -> None:
    _assert_one_line(_run_entry_point("estimate", *RUN, "--gpu", "nanGB"), "nanGB")
