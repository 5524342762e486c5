from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from rich.console import Console

from vramgate.demo import demo_requests, run_demo


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on both asyncio and trio (anyio's pytest plugin)."""
    backend: str = request.param
    return backend


@pytest.fixture(scope="session")
def small_demo_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real message log: the demo's first two requests, time compressed 10,000x."""
    path = tmp_path_factory.mktemp("demo-log") / "demo.jsonl"

    async def go() -> None:
        await run_demo(
            log_path=str(path),
            simulate=True,
            time_scale=1e-4,
            requests=demo_requests()[:2],
            console=Console(quiet=True),
            live=False,
        )

    anyio.run(go)
    return path
