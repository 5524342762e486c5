"""Every command, every option that takes a value, a set of bad values: exit 2, one error line, no traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from vramgate.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
TRACE = str(ROOT / "bench" / "traces" / "burst-24gb.jsonl")

SIZES = ["nanGB", "infGB", "-infGB", "1e400GB", "-1GB", "0.5MiB", "GB", "", "24XB"]
NUMBERS = ["nan", "inf", "-inf", "-1", "abc", ""]
RUN = ["--model", "t2v-A14B", "--size", "832x480"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, small_demo_log: Path) -> dict[str, str]:
    """Good inputs (a real log, a request) and bad ones (garbage bytes, deep nesting, a directory, a missing path)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    log = small_demo_log
    garbage = tmp / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    deep = tmp / "deep.json"
    deep.write_text("[" * 50_000 + "]" * 50_000)
    garbage_toml = tmp / "garbage.toml"
    garbage_toml.write_bytes(bytes(range(256)) * 4)
    deep_toml = tmp / "deep.toml"
    deep_toml.write_text("a = " + "[" * 5_000 + "]" * 5_000 + "\n")
    request = tmp / "request.json"
    request.write_text('{"model": "t2v-A14B", "width": 832, "height": 480}')
    return {
        "tmp": str(tmp),
        "log": str(log),
        "garbage": str(garbage),
        "deep": str(deep),
        "garbage_toml": str(garbage_toml),
        "deep_toml": str(deep_toml),
        "request": str(request),
        "dir": str(tmp),
        "missing": str(tmp / "missing" / "x"),
    }


#: command -> (arguments that work, {option: bad values}); "{name}" is replaced from the ``files`` fixture.
#: ``serve`` is absent: a value it wrongly accepted would start a server (tests/test_cli_errors.py covers it).
CASES: dict[str, tuple[list[str], dict[str, list[str]]]] = {
    "estimate": (
        [*RUN, "--gpu", "H200-141GB"],
        {
            "--gpu": SIZES,
            "--model": ["nope", ""],
            "--size": ["nanxnan", "0x0", "-16x16", "832x", "big", "99999999999x480"],
            "--frames": NUMBERS,
            "--steps": NUMBERS,
            "--gpus": ["0", *NUMBERS],
            "--ulysses": ["0", *NUMBERS],
            "--resident-blocks": NUMBERS,
            "--lora": NUMBERS,
            "--profile": ["{garbage}", "{deep}", "{garbage_toml}", "{deep_toml}", "{dir}", "{missing}"],
        },
    ),
    "optimize": (
        [*RUN, "--gpu", "H100-80GB"],
        {
            "--gpu": SIZES,
            "--model": ["nope"],
            "--size": ["nanxnan", "0x0", "big"],
            "--frames": NUMBERS,
            "--vram-mb": ["0", *NUMBERS],
            "--ram-mb": NUMBERS,
            "--margin-mb": NUMBERS,
            "--level": ["extreme"],
            "--profile": ["{garbage}", "{deep}", "{garbage_toml}", "{deep_toml}", "{missing}"],
        },
    ),
    "check": (["--simulate", "24GB", "--no-nvml", "--no-torch"], {"--simulate": SIZES, "--disk": ["{garbage}"]}),
    "monitor": (
        ["--simulate", "24GB", "--count", "1", "--json", "--no-nvml", "--no-torch"],
        {"--simulate": SIZES, "--interval": NUMBERS, "--count": NUMBERS, "--history": NUMBERS},
    ),
    "simulate": (
        ["--trace", TRACE, "--devices", "24GB", "--policy", "serial"],
        {
            "--devices": [*SIZES, "3xB300", "0x24GB"],
            "--trace": ["{garbage}", "{deep}", "{dir}", "{missing}"],
            "--policy": ["fifo"],
            "--faults": ["crash=nan", "nope=1", "crash=2"],
            "--mem-spread": NUMBERS,
            "--time-spread": NUMBERS,
            "--seed": ["nan", "abc"],
            "--plot": ["{dir}", "{missing}", "{tmp}/p.txt"],
        },
    ),
    "demo": (
        ["--no-live", "--simulate", "--log", "{tmp}/d.jsonl"],
        {
            "--requests": ["{garbage}", "{deep}", "{dir}", "{missing}", "{log}"],
            "--log": ["{dir}", "{missing}"],
            "--time-scale": NUMBERS,
        },
    ),
    "plot": (["{log}", "-o", "{tmp}/p.png"], {"-o": ["{dir}", "{missing}", "{tmp}/p.txt"], "--width": NUMBERS}),
    "validate": (["{request}"], {"--kind": ["nope"]}),
}

#: positional arguments that must be readable files of the right kind
POSITIONAL: dict[str, tuple[list[str], list[str]]] = {
    "plot": (["-o", "{tmp}/p.png"], ["{garbage}", "{deep}", "{dir}", "{missing}", "{request}"]),
    "replay": ([], ["{garbage}", "{deep}", "{dir}", "{missing}", "{request}"]),
    "validate": ([], ["{deep}", "{deep_toml}", "{dir}", "{missing}"]),
}


#: commands with subcommands: whole argument lists, each with one bad value (good runs are tested where they live)
SUBCOMMANDS: dict[str, list[list[str]]] = {
    "cluster": [
        ["demo", "--nodes", "0"],
        ["demo", "--nodes", "nan"],
        ["demo", "--requests", "0"],
        ["demo", "--time-scale", "nan"],
        ["demo", "--time-scale", "inf"],
    ],
    "profile": [
        ["trace", "--config", "{garbage}"],
        ["trace", "--config", "{deep}"],
        ["trace", "--config", "{dir}"],
        ["trace", "--config", "{missing}"],
        ["trace", "--builtin", "nope"],
        ["trace", "--builtins", "--layers", "0"],
        ["trace", "--builtins", "--layers", "nan"],
    ],
}


def _with(base: list[str], option: str, value: str) -> list[str]:
    args = list(base)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    return args


def _cases() -> Iterator[tuple[str, list[str]]]:
    for command, (base, options) in CASES.items():
        for option, values in options.items():
            for value in values:
                yield command, _with(base, option, value)
    for command, (rest, values) in POSITIONAL.items():
        for value in values:
            yield command, [value, *rest]
    for command, cases in SUBCOMMANDS.items():
        for args in cases:
            yield command, args


def _fill(args: list[str], files: dict[str, str]) -> list[str]:
    return [arg.format(**files) for arg in args]


def test_every_command_with_a_value_is_covered() -> None:
    covered = {command for command, _ in _cases()} | {"serve"}
    assert covered == set(COMMANDS)


@pytest.mark.parametrize(("command", "args"), list(_cases()), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_value_is_one_line_and_exit_2(command: str, args: list[str], files: dict[str, str]) -> None:
    result = CliRunner().invoke(main, [command, *_fill(args, files)])
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), (result.exception, result.output)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, result.stderr


@pytest.mark.parametrize("command", sorted(CASES))
def test_the_good_arguments_work(command: str, files: dict[str, str]) -> None:
    base = _fill(CASES[command][0], files)
    result = CliRunner().invoke(main, [command, *base])
    assert result.exit_code == 0, result.output
