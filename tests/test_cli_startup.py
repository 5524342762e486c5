"""Startup: no command imports torch unless it needs CUDA figures (torch takes seconds to import)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Runs vramgate's commands in one fresh interpreter and prints the ones after which torch was imported.
SCRIPT = """
import sys
from click.testing import CliRunner
import vramgate, vramgate.cli, vramgate.config, vramgate.hardware, vramgate.policy.estimate, vramgate.policy.optimize
from vramgate.cli import main
assert "torch" not in sys.modules, "import"
for args in {commands!r}:
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 1), (args, result.output)
    if "torch" in sys.modules:
        print("imported torch:", " ".join(args))
        break
"""

COMMANDS = [
    ["--help"],
    ["estimate", "--model", "t2v-A14B", "--size", "832x480", "--gpu", "H200-141GB"],
    ["optimize", "--model", "t2v-A14B", "--size", "832x480", "--gpu", "RTX4090-24GB"],
    ["validate", str(ROOT / "tests" / "policy" / "profiles" / "wan21-t2v-14B.toml")],
    ["simulate", "--trace", str(ROOT / "bench" / "traces" / "burst-24gb.jsonl"), "--devices", "24GB"],
    ["check", "--simulate", "24GB"],
    ["check", "--simulate", "24GB", "--json"],
    ["monitor", "--simulate", "24GB", "--count", "1", "--json"],
]


def _torch_may_be_needed() -> bool:
    """A GPU device node without NVML (a ROCm machine, say): there ``check`` loads torch to measure the GPUs."""
    from vramgate.hardware.detect import gpu_device_node
    from vramgate.hardware.nvml import NvmlProbe, NvmlUnavailable

    try:
        NvmlProbe().close()
    except NvmlUnavailable:
        return gpu_device_node()
    return False


TORCH_NEEDED = _torch_may_be_needed()


@pytest.mark.skipif(TORCH_NEEDED, reason="GPUs that only torch can measure: check loads torch for them")
def test_no_command_imports_torch_unless_only_torch_can_measure_the_gpus() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(commands=COMMANDS)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "imported torch" not in done.stdout, done.stdout


@pytest.mark.skipif(TORCH_NEEDED, reason="GPUs that only torch can measure: the gate loads torch for them")
def test_gate_opened_with_real_gpu_probing_does_not_import_torch() -> None:
    script = (
        "import sys, anyio, vramgate\n"
        "from vramgate.config import GateConfig, DevicesConfig\n"
        "async def main():\n"
        "    async with vramgate.open_gate(GateConfig(devices=DevicesConfig(simulate=('24GB',)))) as gate:\n"
        "        assert gate.statistics().devices\n"
        "anyio.run(main)\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]


def test_loading_torch_is_announced_on_a_terminal_only() -> None:
    pty = pytest.importorskip("pty")
    code = (
        "from vramgate.hardware.cuda import TorchUnavailable, load_torch\n"
        "try:\n"
        "    load_torch()\n"
        "except TorchUnavailable:\n"
        "    pass\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    master, slave = pty.openpty()
    with os.fdopen(master, "rb", buffering=0) as terminal:
        done = subprocess.run([sys.executable, "-c", code], stderr=slave, env=env, timeout=120, check=False)
        os.close(slave)
        assert done.returncode == 0
        said = terminal.read(4096).decode()
    assert "loading torch for CUDA figures..." in said
    piped = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert piped.returncode == 0
    assert "loading torch" not in piped.stderr
