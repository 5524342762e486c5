"""``vramgate serve`` refuses bad options and configuration with exit 2 and a message naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from vramgate.cli import main


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
