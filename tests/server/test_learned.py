"""The gate's ``learned_path``: what the estimator learns is written on every lesson and on exit; a corrupt file is
a clear error (the server does not start, ``vramgate serve`` exits 2 with one line)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from vramgate.errors import DecodeError
from vramgate.policy.learning import load_corrections
from vramgate.server import create_app, open_service

from ._helpers import FAST, SMALL, sim_config

pytestmark = pytest.mark.anyio


async def test_lessons_are_saved_as_they_are_learned_and_on_exit(tmp_path: Path) -> None:
    path = tmp_path / "learned.json"
    config = msgspec.structs.replace(sim_config(), learned_path=str(path))
    async with open_service(config, settings=FAST) as service:
        first = await service.submit(msgspec.json.encode(SMALL))
        await service.live[first.request_id].wait_ended()
        await service.gate.wait_idle()
        learned = load_corrections(path)  # written while the server runs, not only at exit
        assert learned.runs("ti2v-5B", "RTX4090-24GB") == 1
        second = await service.submit(msgspec.json.encode(SMALL))
        await service.live[second.request_id].wait_ended()
    assert load_corrections(path).runs("ti2v-5B", "RTX4090-24GB") == 2
    assert sorted(os.listdir(tmp_path)) == ["learned.json"]  # no temporary file left behind

    # A restarted server starts from what was learned.
    async with open_service(config, settings=FAST) as service:
        assert service.gate.estimator.learned.runs("ti2v-5B", "RTX4090-24GB") == 2


def test_a_corrupt_learned_file_is_a_typed_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "learned.json"
    path.write_bytes(b'{"entries": {"ti2v-5B@RTX4090-24GB": {"ratios": [1.0,')  # a torn write
    config = msgspec.structs.replace(sim_config(), learned_path=str(path))
    with pytest.raises(DecodeError) as info:
        create_app(config, settings=FAST)
    assert str(path) in str(info.value)


def test_serve_with_a_corrupt_learned_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "learned.json"
    path.write_text("not json")
    config = tmp_path / "gate.toml"
    config.write_text(f'learned_path = "{path}"\n[devices]\nuse_real_gpus = false\nsimulate = ["RTX4090-24GB"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMGATE_")}
    done = subprocess.run(
        [sys.executable, "-m", "vramgate", "serve", "--port", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(path) in lines[0]
    assert "Traceback" not in done.stderr
