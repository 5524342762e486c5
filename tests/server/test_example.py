"""``python examples/server/app.py`` as a real process: SIGTERM drains it (streams end, it exits at once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ._serve import free_port

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "server" / "app.py"
#: About 5.5 s of simulated run each on a 24 GB card (the example's time scale): one runs, the rest wait.
LONG: dict[str, Any] = {"model": "ti2v-5B", "width": 1280, "height": 704, "frames": 121, "steps": 50}


def test_sigterm_drains_the_example_server(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMGATE_")}
    env.update(
        PORT=str(port),
        VRAMGATE_DEVICES__SIMULATE='["RTX4090-24GB"]',
        VRAMGATE_DEVICES__USE_REAL_GPUS="false",
        VRAMGATE_ADMISSION__RAM_BUDGET="256GiB",
    )
    log_path = tmp_path / "example.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, str(EXAMPLE)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        with httpx.Client(base_url=url, timeout=30) as client:
            ids = [client.post("/v1/generations", json=LONG).json()["request_id"] for _ in range(4)]
            names: list[str] = []
            with client.stream("GET", f"/v1/generations/{ids[-1]}/events") as stream:
                for line in stream.iter_lines():
                    if line.startswith("event: "):
                        names.append(line.removeprefix("event: "))
                    if line.startswith("data: ") and names[-1] == "RequestQueued":
                        process.send_signal(signal.SIGTERM)  # a run holds the card; this stream would stay open
                        signalled = time.monotonic()
            ended_s = time.monotonic() - signalled
        status = process.wait(timeout=15)
        stopped_s = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert names[-1] == "ServerShutdown", (names, output)  # the stream ended with the shutdown, not cut
    assert ended_s < 5.0, output
    assert stopped_s < 5.0, output  # the queue holds 20 s of runs: it did not wait for them
    assert status in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output


@pytest.mark.parametrize(
    ("missing", "call", "hint"),
    [
        ("fastapi", "from vramgate.server import create_app; create_app()", "pip install -e '.[server]'"),
        (
            "diffusers",
            "from vramgate.server.runners import load_pipeline; load_pipeline('/nonexistent')",
            "pip install -e '.[diffusers]'",
        ),
    ],
)
def test_a_missing_extra_names_the_install_command_that_works(missing: str, call: str, hint: str) -> None:
    # The package is absent in that interpreter (an import of it fails), as on a machine without the extra.
    code = f"import sys; sys.modules[{missing!r}] = None\nfrom vramgate.errors import ConfigError\n"
    code += f"try:\n    {call}\nexcept ConfigError as error:\n    print(error)\n"
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE.parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert hint in out.stdout
    assert "from a clone" in out.stdout
