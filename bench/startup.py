"""Startup time of ``vramgate check`` and of opening a gate with real-GPU probing, each in a fresh interpreter.

    python bench/startup.py [--repeat 5]

Baseline, measured in the same run: the same command in an interpreter that has imported torch first (what every
``check`` and every gate with real-GPU probing did before torch was imported only when a GPU is there to
measure), and a bare ``python -c pass``. Prints the best of ``--repeat`` runs and whether torch was imported.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = (
    "import sys\n"
    "sys.argv = ['vramgate', 'check', '--simulate', '24GB']\n"
    "from vramgate.cli import main\n"
    "try:\n"
    "    main()\n"
    "except SystemExit:\n"
    "    pass\n"
    "print('torch' in sys.modules, file=sys.stderr)\n"
)
GATE = (
    "import sys, anyio, vramgate\n"
    "from vramgate.config import GateConfig, DevicesConfig\n"
    "async def main():\n"
    "    async with vramgate.open_gate(GateConfig(devices=DevicesConfig(simulate=('24GB',)))):\n"
    "        pass\n"
    "anyio.run(main)\n"
    "print('torch' in sys.modules, file=sys.stderr)\n"
)


def best(code: str, repeat: int) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times: list[float] = []
    torch = ""
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True, timeout=300
        )
        times.append(time.perf_counter() - start)
        torch = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    return min(times), torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bare, _ = best("pass", args.repeat)
    print(f"python -c pass: {bare:.2f} s")
    for name, code in (("vramgate check --simulate 24GB", CHECK), ("open_gate, real-GPU probing + 24GB", GATE)):
        now, torch = best(code, args.repeat)
        then, _ = best("import torch\n" + code, args.repeat)
        print(f"{name}: {now:.2f} s (torch imported: {torch}); with torch imported first (baseline): {then:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
