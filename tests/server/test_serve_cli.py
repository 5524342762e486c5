"""``vramgate serve`` refuses bad options and configuration with exit 2 and a message naming what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vramgate.cli import main
from vramgate.cli.serve import host_warning
from vramgate.config import LOOPBACK_HOSTS


def serve(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["serve", "--simulate", "RTX4090-24GB", "--runner", "simulated", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize("name", ["gpu box", "host:8000", "http://host"])
def test_a_bad_allowed_host_is_exit_2(name: str) -> None:
    code, output = serve("--allow-host", name)
    assert code == 2
    assert "--allow-host" in output
    assert "is not a host name" in output
    assert "Traceback" not in output


def test_a_bad_number_in_the_config_is_exit_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text("[monitor]\ninterval_s = inf\n")
    code, output = serve("--config", str(path))
    assert code == 2
    assert "monitor.interval_s" in output
    assert "Traceback" not in output


def test_a_non_loopback_address_without_allowed_names_warns_at_start() -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the server warns, then cannot bind, and exits.
    command = [
        sys.executable, "-m", "vramgate", "serve", "--host", "192.0.2.1", "--port", "0", "--store", ":memory:",
        "--simulate", "RTX4090-24GB", "--runner", "simulated",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMGATE_")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, done.stderr
    assert "192.0.2.1" in warnings[0]
    assert "only loopback Host names" in warnings[0]
    assert "--allow-host NAME" in warnings[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("host", "allowed", "warns"),
    [
        ("127.0.0.1", LOOPBACK_HOSTS, False),
        ("localhost", LOOPBACK_HOSTS, False),
        ("::1", LOOPBACK_HOSTS, False),
        ("127.0.0.2", LOOPBACK_HOSTS, False),
        ("0.0.0.0", LOOPBACK_HOSTS, True),
        ("::", LOOPBACK_HOSTS, True),
        ("gpu-box.lan", LOOPBACK_HOSTS, True),
        ("0.0.0.0", (*LOOPBACK_HOSTS, "gpu-box.lan"), False),
        ("0.0.0.0", ("*",), False),
    ],
)
def test_the_warning_is_given_only_when_other_names_would_be_refused(
    host: str, allowed: tuple[str, ...], warns: bool
) -> None:
    warning = host_warning(host, allowed)
    assert (warning is not None) == warns
    if warning is not None:
        assert host in warning


@pytest.mark.parametrize("value", ["-1", "nan", "61", "soon"])
def test_a_bad_position_timeout_is_exit_2_naming_the_option(value: str) -> None:
    code, output = serve("--position-timeout", value)
    assert code == 2
    assert "--position-timeout" in output
    assert "Traceback" not in output
