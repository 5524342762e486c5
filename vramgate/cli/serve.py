"""``vramgate serve``: the example HTTP generation server (``pip install 'vramgate[server]'``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import click
import msgspec

from vramgate.errors import VramgateError

if TYPE_CHECKING:
    from vramgate.server import RunnerKind

DEFAULT_SIMULATED = ("RTX4090-24GB",)


class BadInput(click.ClickException):
    """A bad configuration, store or learned file: one line on stderr, exit status 2."""

    exit_code = 2


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="Gate config (TOML).")
@click.option(
    "--runner",
    type=click.Choice(["auto", "simulated", "torch", "diffusers"]),
    default="auto",
    show_default=True,
    help="What runs a generation: simulated on simulated GPUs, a torch workload on real ones, or diffusers.",
)
@click.option("--pipeline", type=click.Path(file_okay=False), default=None, help="Local diffusers pipeline dir.")
@click.option("--simulate", multiple=True, help="Simulate this GPU (repeatable; default one when none is found).")
@click.option("--time-scale", default=0.01, show_default=True, type=click.FloatRange(min=1e-9, max=1.0))
@click.option("--min-run-s", default=0.5, show_default=True, type=click.FloatRange(min=0.0), help="Shortest run.")
@click.option("--log", "log_path", default=None, help="Record every message to this JSON Lines log.")
@click.option("--max-body-bytes", default=64 * 1024, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--store",
    "store_path",
    default="vramgate.sqlite",
    show_default=True,
    help="SQLite file that keeps accepted requests across restarts (':memory:' keeps none).",
)
def command(
    host: str,
    port: int,
    config_path: str | None,
    runner: str,
    pipeline: str | None,
    simulate: tuple[str, ...],
    time_scale: float,
    min_run_s: float,
    log_path: str | None,
    max_body_bytes: int,
    store_path: str,
) -> None:
    """Serve POST /v1/generations, GET /v1/generations/{id}[/events], DELETE, /v1/devices, /healthz, /metrics."""
    from vramgate.config import load_config
    from vramgate.server import ServerSettings, create_app

    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise click.ClickException("the server needs uvicorn: pip install 'vramgate[server]'") from None
    from vramgate.server.app import serve

    try:
        config = load_config(config_path)
        devices = config.devices
        if simulate:
            devices = msgspec.structs.replace(devices, simulate=tuple(devices.simulate) + simulate)
        elif not devices.simulate and not _has_gpu(devices.use_real_gpus):
            click.echo(f"no GPU found here: serving on a simulated {', '.join(DEFAULT_SIMULATED)}", err=True)
            devices = msgspec.structs.replace(devices, simulate=DEFAULT_SIMULATED, use_real_gpus=False)
        config = msgspec.structs.replace(config, devices=devices, log_path=log_path or config.log_path)
        settings = ServerSettings(
            runner=cast("RunnerKind", runner),
            pipeline=pipeline,
            time_scale=time_scale,
            min_run_s=min_run_s,
            max_body_bytes=max_body_bytes,
            store_path=store_path,
        )
        app = create_app(config, settings=settings)
    except VramgateError as error:
        raise BadInput(str(error)) from None
    serve(app, host=host, port=port)


def _has_gpu(use_real: bool) -> bool:
    if not use_real:
        return False
    from vramgate.demo import has_real_gpu

    return has_real_gpu()
