"""Numbers in the configuration: finite, in range, and consistent, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramgate.config import GateConfig, MonitorConfig, load_config
from vramgate.errors import DecodeError
from vramgate.gate import open_gate
from vramgate.replay import read_log

KEYS = [
    ("monitor", "interval_s"),
    ("monitor", "history_s"),
    ("monitor", "probe_timeout_s"),
    ("admission", "stale_after_s"),
    ("admission", "aging_per_s"),
    ("admission", "permanent_after_s"),
    ("admission", "margin_fraction"),
    ("cleanup", "min_interval_s"),
    ("cleanup", "proactive_below_fraction"),
    ("cleanup", "proactive_after_s"),
    ("run", "time_scale"),
    ("run", "min_seconds"),
    ("server", "keep_alive_s"),
    ("server", "request_timeout_s"),
    ("server", "max_connections"),
]


@pytest.mark.parametrize(("section", "key"), KEYS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-1.0", "1e300"])
def test_a_number_out_of_range_names_its_key(tmp_path: Path, section: str, key: str, value: str) -> None:
    path = tmp_path / "gate.toml"
    path.write_text(f"[{section}]\n{key} = {value}\n")
    with pytest.raises(DecodeError) as info:
        load_config(path, environ={})
    assert f"{section}.{key}" in str(info.value)


@pytest.mark.parametrize(("section", "key"), KEYS)
def test_the_environment_is_checked_the_same_way(section: str, key: str) -> None:
    with pytest.raises(DecodeError) as info:
        load_config(environ={f"VRAMGATE_{section.upper()}__{key.upper()}": "inf"})
    assert f"{section}.{key}" in str(info.value)


def test_an_infinite_interval_is_refused_even_when_built_in_python() -> None:
    with pytest.raises(ValueError, match=r"monitor\.interval_s"):
        MonitorConfig(interval_s=float("inf"))
    with pytest.raises(ValueError, match=r"monitor\.history_s"):
        MonitorConfig(history_s=float("nan"))


def test_sampling_slower_than_staleness_would_stall_admission(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text("[monitor]\ninterval_s = 30\n[admission]\nstale_after_s = 10\n")
    with pytest.raises(DecodeError) as info:
        load_config(path, environ={})
    assert "monitor.interval_s" in str(info.value)
    assert "admission.stale_after_s" in str(info.value)


def test_sane_values_still_load(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text(
        "[monitor]\ninterval_s = 0.25\nhistory_s = 3600\n[admission]\nstale_after_s = 5\naging_per_s = 0\n"
        "[cleanup]\nmin_interval_s = 0\n"
    )
    config = load_config(path, environ={})
    assert config.monitor.interval_s == 0.25
    assert config.monitor.history_s == 3600
    assert config.admission.stale_after_s == 5
    assert config.cleanup.min_interval_s == 0
    assert GateConfig() == load_config(environ={})


@pytest.mark.anyio
async def test_permanent_after_s_reaches_admission(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    log = tmp_path / "gate.jsonl"
    path.write_text(
        f'log_path = "{log}"\n[devices]\nuse_real_gpus = false\nsimulate = ["RTX4090-24GB"]\n'
        "[admission]\npermanent_after_s = 120\n"
    )
    config = load_config(path, environ={})
    assert config.admission.permanent_after_s == 120
    assert load_config(environ={"VRAMGATE_ADMISSION__PERMANENT_AFTER_S": "30"}).admission.permanent_after_s == 30
    async with open_gate(config):
        pass
    header, _ = read_log(log)
    admission = header.core("admission")
    assert admission is not None
    assert admission.config["admission"]["permanent_after_s"] == 120  # what the admission core was built with
