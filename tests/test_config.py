from __future__ import annotations

from pathlib import Path

import pytest

from vramgate.config import GateConfig, load_config, parse_size_mb
from vramgate.errors import ConfigError, DecodeError


def test_defaults_need_nothing() -> None:
    config = load_config(environ={})
    assert config == GateConfig()
    assert config.admission.queue_limit == 1000


def test_toml_file_and_environment_override(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text('[devices]\nsimulate = ["RTX4090-24GB"]\n[admission]\nqueue_limit = 10\nmargin = "2GiB"\n')
    config = load_config(path, environ={"VRAMGATE_ADMISSION__QUEUE_LIMIT": "20", "OTHER": "x"})
    assert config.devices.simulate == ("RTX4090-24GB",)
    assert config.admission.queue_limit == 20
    assert parse_size_mb(config.admission.margin or 0) == 2048


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text("[admission]\nqueue_limt = 10\n")
    with pytest.raises(DecodeError) as info:
        load_config(path, environ={})
    assert "queue_limt" in info.value.reason
    assert info.value.path == "$.admission"


def test_bad_unit_is_named() -> None:
    with pytest.raises(DecodeError) as info:
        load_config(environ={"VRAMGATE_ADMISSION__MARGIN": "2GX"})
    assert info.value.path == "$.admission"
    assert "unknown unit 'GX'" in info.value.reason


def test_bad_value_names_the_field() -> None:
    with pytest.raises(DecodeError) as info:
        load_config(environ={"VRAMGATE_ADMISSION__QUEUE_LIMIT": "0"})
    assert info.value.path == "$.admission.queue_limit"


def test_unreadable_file() -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config("/nonexistent/gate.toml", environ={})


@pytest.mark.parametrize(
    ("text", "mb"), [(512, 512), ("512MiB", 512), ("24GiB", 24576), ("1.5GB", 1536), ("1TiB", 1048576)]
)
def test_sizes(text: int | str, mb: int) -> None:
    assert parse_size_mb(text) == mb


@pytest.mark.parametrize(
    "text", ["", "GiB", "-1GiB", "12 parsecs", True, -5, "nan", "nanGiB", "inf", "infGB", "1e400GB", "0.5MiB", "1KiB"]
)
def test_bad_sizes(text: int | str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size_mb(text, field="devices.context_overhead")
    assert str(info.value).startswith("devices.context_overhead: ")
