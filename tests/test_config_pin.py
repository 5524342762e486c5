"""``[run] pin_reservation``: "auto" (simulated devices only), true or false, from TOML and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramgate.config import GateConfig, RunConfig, load_config
from vramgate.errors import DecodeError


def test_auto_pins_simulated_devices_only() -> None:
    auto = GateConfig().run
    assert auto.pin_reservation == "auto"
    assert auto.pins(simulated=True)
    assert not auto.pins(simulated=False)
    assert RunConfig(pin_reservation=True).pins(simulated=False)
    assert RunConfig(pin_reservation=True).pins(simulated=True)
    assert not RunConfig(pin_reservation=False).pins(simulated=True)


@pytest.mark.parametrize(("text", "value"), [('"auto"', "auto"), ("true", True), ("false", False)])
def test_loaded_from_toml_and_the_environment(tmp_path: Path, text: str, value: bool | str) -> None:
    path = tmp_path / "gate.toml"
    path.write_text(f"[run]\npin_reservation = {text}\n", encoding="utf-8")
    assert load_config(path, environ={}).run.pin_reservation == value
    raw = text.strip('"')
    assert load_config(environ={"VRAMGATE_RUN__PIN_RESERVATION": raw}).run.pin_reservation == value


@pytest.mark.parametrize("text", ['"always"', "2", '"yes"'])
def test_a_bad_value_names_the_key(tmp_path: Path, text: str) -> None:
    path = tmp_path / "gate.toml"
    path.write_text(f"[run]\npin_reservation = {text}\n", encoding="utf-8")
    with pytest.raises(DecodeError) as info:
        load_config(path, environ={})
    assert info.value.path == "$.run.pin_reservation"
