"""``vramgate serve`` as a real process on a loopback port, started, signalled and restarted by the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

CONFIG = """
[devices]
use_real_gpus = false
[monitor]
interval_s = 0.05
[admission]
queue_limit = {queue_limit}
ram_budget = "256GiB"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Serve:
    """One ``vramgate serve`` process on a simulated 24 GB card, keeping its requests in ``store``."""

    def __init__(
        self,
        directory: Path,
        *,
        store: Path,
        queue_limit: int = 50,
        min_run_s: float = 1.0,
        options: tuple[str, ...] = (),
    ) -> None:
        self.options = options
        self.config = directory / "gate.toml"
        self.config.write_text(CONFIG.format(queue_limit=queue_limit))
        self.store = store
        self.min_run_s = min_run_s
        self.log: IO[bytes] = (directory / "serve.log").open("ab")
        self.log_path = directory / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, *, timeout_s: float = 30.0) -> str:
        port = free_port()
        command = [
            sys.executable, "-m", "vramgate", "serve", "--port", str(port), "--config", str(self.config),
            "--store", str(self.store), "--simulate", "RTX4090-24GB", "--runner", "simulated",
            "--time-scale", "0.0001", "--min-run-s", str(self.min_run_s), *self.options,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMGATE_")}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self.url
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"vramgate serve did not start:\n{self.output()}")
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        """The exit status, once the process ended (AssertionError, and the process killed, past ``timeout_s``)."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"vramgate serve did not exit within {timeout_s} s:\n{self.output()}") from None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()
