"""Replay trusts nothing a log header says: only registered core kinds, and a bad config is bad input (exit 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vramgate.cli import main
from vramgate.errors import ReplayError
from vramgate.messages import LogHeader, encode_json
from vramgate.messages.log import CoreSpec
from vramgate.replay import replay


def _log(path: Path, *specs: CoreSpec) -> Path:
    path.write_bytes(encode_json(LogHeader(cores=specs)) + b"\n")
    return path


def test_a_module_named_in_the_header_is_never_imported(tmp_path: Path) -> None:
    sys.modules.pop("vramgate.__main__", None)
    log = _log(tmp_path / "evil.jsonl", CoreSpec(name="x", kind="evil", module="vramgate.__main__"))
    result = CliRunner().invoke(main, ["replay", str(log)])
    assert result.exit_code == 2, result.output
    assert "no core factory registered for kind 'evil' (actor 'x')" in result.output
    assert "vramgate.__main__" not in sys.modules


def test_built_in_kinds_are_found_without_the_header_naming_a_module(tmp_path: Path) -> None:
    log = _log(tmp_path / "ok.jsonl", CoreSpec(name="estimator", kind="estimator", module="elsewhere"))
    result = replay(log)
    assert result.identical
    assert result.cores == ("estimator",)


def test_a_malformed_core_config_is_bad_input(tmp_path: Path) -> None:
    log = _log(tmp_path / "bad.jsonl", CoreSpec(name="admission", kind="admission", config={"devices": 3}))
    with pytest.raises(ReplayError, match=r"core 'admission' \(kind 'admission'\)"):
        replay(log)
    result = CliRunner().invoke(main, ["replay", str(log)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ")
    assert "Traceback" not in result.output


def test_a_module_that_cannot_be_imported_is_a_usage_error(tmp_path: Path) -> None:
    log = _log(tmp_path / "ok.jsonl")
    result = CliRunner().invoke(main, ["replay", "--import", "vramgate.no_such_module", str(log)])
    assert result.exit_code == 2, result.output
    assert "error: cannot import vramgate.no_such_module" in result.output
