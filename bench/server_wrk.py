"""Requests per second ``vramgate serve`` accepts on uvicorn over loopback, against a bare FastAPI endpoint.

Each server runs in its own process on 127.0.0.1, one after the other, and wrk (``apt-get install -y wrk``) POSTs
the same JSON body to it (a Lua script) over ``--connections`` keep-alive connections for ``--seconds``, best of
``--rounds``. The servers:

* a raw ASGI app on uvicorn that answers 202 without reading the body: what wrk can drive on this box, to show
  the load generator is not the bottleneck (it must drive this far faster than the bare FastAPI endpoint);
* the bare FastAPI endpoint (``bench/server.py``'s ``bare_app``) on uvicorn with uvicorn's defaults;
* ``vramgate serve`` as it runs by default, on a simulated H100-80GB with the simulated runner and near-zero
  run time, a large queue and a SQLite store file: answering at once (``--position-timeout 0``) and waiting
  for the queue position (the default);
* the same two on runs of ``vramgate serve``'s default length (``--time-scale 0.01 --min-run-s 0.5``): the burst
  queues behind the runs, as it would behind real generations.

Only 202 answers count as accepted (wrk's "Non-2xx" count is taken off). Printed: each rate and its ratio to the
bare endpoint.

    python bench/server_wrk.py [--seconds 5] [--connections 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server import BODY  # the same request body as the in-process bench

ROOT = Path(__file__).resolve().parents[1]
RAW = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 202, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"request_id":"x","state":"queued"}'})
"""
CONFIG = """
[admission]
queue_limit = 1000000
ram_budget = "4TiB"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}) before it listened on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listened on {port} within {limit_s} s")


def start(kind: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    python = sys.executable
    if kind == "raw ASGI":
        (workdir / "raw_app.py").write_text(RAW)
        argv = [python, "-m", "uvicorn", "--app-dir", str(workdir), "raw_app:app", "--port", str(port)]
    elif kind == "bare FastAPI":
        code = (
            "import sys, uvicorn; sys.path.insert(0, sys.argv[1]); from server import bare_app; "
            "uvicorn.run(bare_app(), host='127.0.0.1', port=int(sys.argv[2]))"
        )
        argv = [python, "-c", code, str(ROOT / "bench"), str(port)]
    else:
        config = workdir / "gate.toml"
        config.write_text(CONFIG)
        store = workdir / f"store-{port}.sqlite"
        timeout = "0" if kind.endswith("at once") else "1"
        runs = ("0.01", "0.5") if "queues" in kind else ("1e-6", "0")
        argv = [
            *(python, "-m", "vramgate", "serve", "--port", str(port), "--config", str(config)),
            *("--simulate", "H100-80GB", "--runner", "simulated", "--time-scale", runs[0], "--min-run-s", runs[1]),
            *("--store", str(store), "--position-timeout", timeout),
        ]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    try:
        wait_listening(port, process)
    except BaseException:
        process.kill()
        raise
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server process (SIGTERM, then SIGKILL after 30 s)."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def post_script(workdir: Path) -> Path:
    """A wrk Lua script in ``workdir`` that POSTs the bench's JSON body."""
    script = workdir / "post.lua"
    body = msgspec.json.encode(BODY.decode())
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {body.decode()}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    return script


def wrk(port: int, script: Path, seconds: float, connections: int) -> tuple[float, int, int]:
    """``(accepted per second, requests, non-2xx answers)``."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script)]
    done = subprocess.run([*argv, f"http://127.0.0.1:{port}/v1/generations"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr.strip()}")
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", done.stdout)
    if total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{done.stdout}")
    requests = int(total.group(1))
    elapsed = float(total.group(2)) / (1000 if total.group(3) == "ms" else 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    rejected = int(bad.group(1)) if bad else 0
    return (requests - rejected) / elapsed, requests, rejected


def main(seconds: float, connections: int, rounds: int) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("this bench needs wrk: apt-get install -y wrk")
    kinds = [
        *("raw ASGI", "bare FastAPI", "vramgate serve, at once", "vramgate serve, waits for position"),
        *("burst queues behind runs, at once", "burst queues behind runs, waits"),
    ]
    best = dict.fromkeys(kinds, 0.0)
    with tempfile.TemporaryDirectory(prefix="vramgate-wrk-") as tmp:
        workdir = Path(tmp)
        script = post_script(workdir)
        for _ in range(rounds):
            for kind in kinds:
                port = free_port()
                process = start(kind, port, workdir)
                try:
                    wrk(port, script, 1.0, connections)  # warm up (imports, caches, the first plans)
                    rate, requests, rejected = wrk(port, script, seconds, connections)
                finally:
                    stop(process)
                if rejected:
                    print(f"  {kind}: {rejected} of {requests} answers were not 2xx", file=sys.stderr)
                best[kind] = max(best[kind], rate)
    bare = best["bare FastAPI"]
    print(f"uvicorn on 127.0.0.1, wrk -t1 -c{connections} -d{seconds:g}s POSTing JSON, best of {rounds}")
    for kind, rate in best.items():
        print(f"{kind:38s} {rate:8.0f} accepted/s   {rate / bare:6.2f} of bare FastAPI")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    main(args.seconds, args.connections, args.rounds)
