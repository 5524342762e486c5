"""``vramgate validate``: every error with its line and field path; exit 1 on any."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from vramgate.cli import main
from vramgate.cli.validate import KINDS, Kind, check, register_kind
from vramgate.messages import LogHeader, LogRecord, RequestQueued, encode_json

GOOD = '{"model": "t2v-A14B", "width": 1280, "height": 720}'


def run(path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["validate", str(path), *args])
    return result.exit_code, result.output


def test_json_lines_report_every_error_with_line_and_path(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text(
        "\n".join(
            [
                GOOD,
                '{"model": "t2v-A14B", "width": 0, "height": 720}',
                "",
                '{"model": "t2v-A14B", "width": 1280, "height": 720, "options": {"ulysses": 0}}',
                '{"model": "t2v-A14B", "width": 1280, "height": 720, "lora": [{"name": "x", "rank": 0}]}',
                '{"model": "t2v-A14B", "width": 1280, "height": 720, "frames": 81, "duration_s": 3}',
                "{not json",
                GOOD,
            ]
        )
    )
    code, out = run(path)
    assert code == 1
    lines = out.splitlines()
    assert lines[:5] == [
        f"{path}:2: $.width: Expected `int` >= 1",
        f"{path}:4: $.options.ulysses: Expected `int` >= 1",
        f"{path}:5: $.lora[0].rank: Expected `int` >= 1",
        f"{path}:6: $: give either `frames` or `duration_s`, not both",
        f"{path}:7: $: JSON is malformed: object keys must be strings (byte 1)",
    ]
    assert "5 error(s) in 7 request item(s)" in out


def test_a_json_array_reports_item_index_and_line(tmp_path: Path) -> None:
    path = tmp_path / "requests.json"
    path.write_text(f'[\n  {GOOD},\n  {{"model": "m", "width": 8, "height": 0}}\n]\n')
    code, out = run(path, "--kind", "request")
    assert code == 1
    assert out.splitlines()[0] == f"{path}:3: $[1].height: Expected `int` >= 1"


def test_a_single_pretty_printed_object_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text('{\n  "model": "t2v-A14B",\n  "width": 1280,\n  "height": 720\n}\n')
    code, out = run(path)
    assert code == 0, out
    assert out.strip() == "ok: 1 request item(s)"


def test_log_kind_checks_header_and_records(tmp_path: Path) -> None:
    header = encode_json(LogHeader()).decode()
    record = encode_json(
        LogRecord(seq=1, at=0.0, sender="a", recipient="b", message=RequestQueued(request_id="r", position=1))
    ).decode()
    good = tmp_path / "good.jsonl"
    good.write_text(f"{header}\n{record}\n")
    assert run(good, "--kind", "log") == (0, "ok: 2 log item(s)\n")

    bad = tmp_path / "bad.jsonl"
    broken = record.replace('"position":1', '"position":0')
    continued = encode_json(LogHeader(segment=2, first_seq=2)).decode()
    bad.write_text(f"{record}\n{broken}\n{continued}\n")
    code, out = run(bad, "--kind", "log")
    assert code == 1
    assert out.splitlines()[:3] == [
        f"{bad}:1: $: the first line of a log must be a LogHeader",
        f"{bad}:2: $.message.position: Expected `int` >= 1",
        f"{bad}:3: $.segment: a LogHeader after the first line starts a new run: its segment must be 0, not 2",
    ]


def test_an_appended_log_is_valid_with_every_run_header(tmp_path: Path) -> None:
    header = encode_json(LogHeader()).decode()
    record = encode_json(
        LogRecord(seq=1, at=0.0, sender="a", recipient="b", message=RequestQueued(request_id="r", position=1))
    ).decode()
    path = tmp_path / "restarted.jsonl"
    path.write_text(f"{header}\n{record}\n{header}\n{record}\n{header}\n")  # three runs, the last one empty
    assert run(path, "--kind", "log") == (0, "ok: 5 log item(s)\n")
    assert run(path) == (0, "ok: 5 log item(s)\n")


def test_unknown_kind_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(GOOD)
    code, out = run(path, "--kind", "nope")
    assert code == 2
    assert "unknown kind 'nope'; known:" in out


@pytest.fixture
def restore_kinds() -> object:
    saved = dict(KINDS)
    yield None
    KINDS.clear()
    KINDS.update(saved)


@pytest.mark.usefixtures("restore_kinds")
def test_registered_kinds_are_used(tmp_path: Path) -> None:
    register_kind("queued", RequestQueued, "queue notices")
    path = tmp_path / "q.jsonl"
    path.write_text('{"type": "RequestQueued", "request_id": "r", "position": 1}\n{"type": "RequestQueued"}\n')
    code, out = run(path, "--kind", "queued")
    assert code == 1
    assert out.splitlines()[0] == f"{path}:2: $: Object missing required field `request_id`"
    count, problems = check(b'{"model": "m", "width": 1, "height": 1}', Kind(len, "whole", whole_file=True))
    assert (count, problems) == (1, [])


def test_config_kind_names_the_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text('[admission]\nqueue_limit = 10\nmargin = "2GX"\n')
    code, out = run(path, "--kind", "config")
    assert code == 1
    assert "$.admission" in out
    assert "unknown unit 'GX'" in out
    path.write_text("[admission]\nqueue_limit = 10\n")
    assert run(path, "--kind", "config")[0] == 0


def test_trace_kind_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(
        '{"type": "arrival", "at": 0, "request": {"model": "ti2v-5B", "width": 1280, "height": 704}}\n'
        '{"type": "outside", "at": 1, "device": 0, "mb": -5, "until": 2}\n'
    )
    code, out = run(path, "--kind", "trace")
    assert code == 1
    assert ":2:" in out
    assert "$.mb" in out
    shipped = Path(__file__).parent.parent / "bench" / "traces" / "burst-24gb.jsonl"
    assert run(shipped, "--kind", "trace")[0] == 0


def test_profile_kind_checks_json_and_toml(tmp_path: Path) -> None:
    profiles = Path(__file__).parent / "policy" / "profiles"
    for profile in profiles.iterdir():
        assert run(profile, "--kind", "profile")[0] == 0, profile
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "dit": {"dim": -1}}')
    code, out = run(bad, "--kind", "profile")
    assert code == 1
    assert "$.dit" in out


def test_a_log_is_recognised_without_kind(tmp_path: Path) -> None:
    header = encode_json(LogHeader()).decode()
    record = encode_json(
        LogRecord(seq=1, at=0.0, sender="a", recipient="b", message=RequestQueued(request_id="r", position=1))
    ).decode()
    path = tmp_path / "run.jsonl"
    path.write_text(header + "\n" + "\n".join([record] * 500) + "\n")
    assert run(path) == (0, "ok: 501 log item(s)\n")


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        (
            "trace.jsonl",
            '{"type": "arrival", "at": 0, "request": {"model": "ti2v-5B", "width": 1280, "height": 704}}',
            "trace",
        ),
        ("gate.toml", "[admission]\nqueue_limit = 10\n", "config"),
        ("one.json", GOOD, "request"),
    ],
)
def test_other_kinds_are_recognised_from_the_content(tmp_path: Path, name: str, text: str, kind: str) -> None:
    path = tmp_path / name
    path.write_text(text + "\n")
    assert run(path) == (0, f"ok: 1 {kind} item(s)\n")


def test_a_profile_is_recognised_from_the_content() -> None:
    for profile in (Path(__file__).parent / "policy" / "profiles").iterdir():
        code, out = run(profile)
        assert (code, out) == (0, "ok: 1 profile item(s)\n"), profile


def test_repeated_identical_errors_are_printed_a_few_times_then_counted(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(['{"model": "t2v-A14B", "width": 0, "height": 720}'] * 1000 + [GOOD, "{"]) + "\n")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines == [
        f"{path}:1: $.width: Expected `int` >= 1",
        f"{path}:2: $.width: Expected `int` >= 1",
        f"{path}:3: $.width: Expected `int` >= 1",
        f"{path}:1002: $: Input data was truncated",
        f"{path}: $.width: Expected `int` >= 1 (997 more times)",
    ]
    assert "1001 error(s) in 1002 request item(s)" in result.stderr


@pytest.mark.parametrize(
    ("body", "path", "reason"),
    [
        (
            '{"model": "x", "width": 1280, "height": 720}',
            "$.model",
            "unknown model 'x' (known: i2v-A14B, t2v-A14B, ti2v-5B, wan2.1-i2v-14B, wan2.1-t2v-1.3B, wan2.1-t2v-14B)",
        ),
        ('{"model": "t2v-A14B", "width": 1281, "height": 720}', "$.width", "must be a multiple of 16"),
        ('{"model": "ti2v-5B", "width": 1280, "height": 720}', "$.height", "must be a multiple of 32"),
        ('{"model": "t2v-A14B", "width": 1280, "height": 720, "frames": 80}', "$.frames", "4k+1"),
        ('{"model": "t2v-A14B", "width": 1280, "height": 720, "task": "i2v"}', "$.task", "does not support"),
    ],
)
def test_requests_are_checked_against_the_model_catalog(tmp_path: Path, body: str, path: str, reason: str) -> None:
    file = tmp_path / "request.json"
    file.write_text(body)
    code, out = run(file)
    assert code == 1
    first = out.splitlines()[0]
    assert first.startswith(f"{file}:1: {path}: "), first
    assert reason in first
