"""``vramgate serve``: the example HTTP generation server (``pip install -e '.[server]'`` from a clone)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, cast

import click
import msgspec

from vramgate.cli._errors import FiniteFloat, InputError, OutputFile, bad_input
from vramgate.errors import VramgateError

if TYPE_CHECKING:
    from vramgate.config import GateConfig
    from vramgate.server import RunnerKind

DEFAULT_SIMULATED = ("RTX4090-24GB",)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind.")
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None, help="Gate config (TOML)."
)
@click.option(
    "--runner",
    type=click.Choice(["auto", "simulated", "torch", "diffusers"]),
    default="auto",
    show_default=True,
    help="What runs a generation: simulated on simulated GPUs, a torch workload on real ones, or diffusers.",
)
@click.option("--pipeline", type=click.Path(file_okay=False), default=None, help="Local diffusers pipeline dir.")
@click.option("--simulate", multiple=True, help="Simulate this GPU (repeatable; default one when none is found).")
@click.option("--time-scale", default=0.01, show_default=True, type=FiniteFloat(min=1e-9, max=1.0))
@click.option("--min-run-s", default=0.5, show_default=True, type=FiniteFloat(0.0, 86_400.0), help="Shortest run.")
@click.option("--log", "log_path", default=None, type=OutputFile(), help="Record every message to this JSON Lines log.")
@click.option("--max-body-bytes", default=64 * 1024, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--position-timeout",
    "position_timeout_s",
    default=1.0,
    show_default=True,
    type=FiniteFloat(0.0, 60.0),
    help="How long a POST waits for the gate to queue, admit or reject the request before it answers (seconds); "
    "0 answers once the request is kept, before the gate decides.",
)
@click.option(
    "--store",
    "store_path",
    default="vramgate.sqlite",
    show_default=True,
    help="SQLite file that keeps accepted requests across restarts (':memory:' keeps none).",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer requests whose Host is NAME (repeatable; besides [server] allowed_hosts, loopback by "
    "default; '*' for any). Needed to serve on another address than loopback.",
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    help="Log every HTTP request (uvicorn's access log, at INFO).",
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
    position_timeout_s: float,
    store_path: str,
    allow_hosts: tuple[str, ...],
    access_log: bool,
) -> None:
    """Serve POST /v1/generations, GET /v1/generations/{id}[/events], DELETE, /v1/devices, /healthz, /metrics."""
    from vramgate.config import load_config
    from vramgate.server import ServerSettings, create_app

    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "the server needs uvicorn: pip install -e '.[server]' from a vramgate clone"
        ) from None
    from vramgate.server.app import serve

    try:
        config = load_config(config_path)
        devices = config.devices
        if simulate:
            devices = msgspec.structs.replace(devices, simulate=tuple(devices.simulate) + simulate)
        elif not devices.simulate and not _has_gpu(devices.use_real_gpus):
            click.echo(f"no GPU found here: serving on a simulated {', '.join(DEFAULT_SIMULATED)}", err=True)
            devices = msgspec.structs.replace(devices, simulate=DEFAULT_SIMULATED, use_real_gpus=False)
        server = config.server
        if allow_hosts:
            try:
                hosts = tuple(dict.fromkeys(server.allowed_hosts + allow_hosts))
                server = msgspec.structs.replace(server, allowed_hosts=hosts)
            except ValueError as error:
                raise click.BadParameter(str(error), param_hint="--allow-host") from None
        config = msgspec.structs.replace(config, devices=devices, server=server, log_path=log_path or config.log_path)
        _check_devices(config)
        settings = ServerSettings(
            runner=cast("RunnerKind", runner),
            pipeline=pipeline,
            time_scale=time_scale,
            min_run_s=min_run_s,
            max_body_bytes=max_body_bytes,
            position_timeout_s=position_timeout_s,
            store_path=store_path,
        )
        app = create_app(config, settings=settings)
    except VramgateError as error:
        raise bad_input(error) from None
    warning = host_warning(host, config.server.allowed_hosts)
    if warning is not None:
        click.echo(f"warning: {warning}", err=True)
    serve(app, host=host, port=port, limits=config.server, access_log=access_log)


def host_warning(host: str, allowed_hosts: tuple[str, ...]) -> str | None:
    """What to tell someone who binds ``host``, a non-loopback address, while the server answers only loopback
    ``Host`` names (``None`` when the address is loopback or other names are allowed)."""
    from vramgate.config import LOOPBACK_HOSTS

    if _is_loopback(host) or any(name not in LOOPBACK_HOSTS for name in allowed_hosts):
        return None
    return (
        f"serving on {host}, but only loopback Host names are answered ({', '.join(LOOPBACK_HOSTS)}; others get "
        "421): add the names clients use with --allow-host NAME (repeatable, '*' for any) or [server] allowed_hosts"
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: whatever it resolves to, clients may reach it by that name


def _check_devices(config: GateConfig) -> None:
    """Build each simulated device once, so that a bad size fails here rather than in the server's startup."""
    from vramgate.config import parse_size_mb
    from vramgate.hardware.simulated import SimulatedGpu

    overhead = parse_size_mb(config.devices.context_overhead, field="devices.context_overhead")
    for name in config.devices.simulate:
        try:
            SimulatedGpu(name, context_overhead_mb=overhead)
        except VramgateError as error:
            raise InputError(str(error) if name in str(error) else f"simulated GPU {name!r}: {error}") from None
    if config.log_path is not None:
        OutputFile().convert(config.log_path, None, None)


def _has_gpu(use_real: bool) -> bool:
    if not use_real:
        return False
    from vramgate.demo import has_real_gpu

    return has_real_gpu()
