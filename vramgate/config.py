"""The gate's configuration: one msgspec struct, loadable from a TOML file and ``VRAMGATE_*`` environment variables.

Memory sizes are written with a unit (``"24GiB"``, ``"512MiB"``, ``"1.5GB"``) or as a bare number of MiB; durations
are seconds. Unknown keys and bad units are errors that name the key::

    [devices]
    simulate = ["RTX4090-24GB", "H100-80GB"]   # simulated devices, used besides (or instead of) real GPUs
    use_real_gpus = true

    [admission]
    queue_limit = 1000
    margin = "1GiB"

``[admission]`` decodes straight into the admission core's
:class:`~vramgate.policy.admission_config.AdmissionConfig`: the gate, the simulator and replay share its defaults.

Environment variables override the file: ``VRAMGATE_ADMISSION__QUEUE_LIMIT=500`` sets ``admission.queue_limit``
(sections and keys joined by a double underscore; values are parsed as TOML values, falling back to strings).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from vramgate._sections import DAY_S as DAY_S
from vramgate._sections import PositiveSeconds, Seconds
from vramgate._sections import Section as _Section
from vramgate._sections import Size as Size
from vramgate._sections import check_size as _check_size
from vramgate._sections import parse_size_mb as parse_size_mb
from vramgate.errors import ConfigError, DecodeError
from vramgate.messages.codec import TOO_DEEP, Codec
from vramgate.policy.admission_config import AdmissionConfig, renamed
from vramgate.policy.timing import expected_run_s

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


class DevicesConfig(_Section, frozen=True):
    """Which devices the gate manages."""

    section: ClassVar[str] = "devices"
    use_real_gpus: bool = True
    simulate: tuple[str, ...] = ()
    context_overhead: Size = "500MiB"
    #: Declared devices when no GPU is found and nothing is simulated: ``"none"`` runs with no device at all.
    fallback: Literal["none", "demo"] = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_size(self.context_overhead, "devices.context_overhead")


class MonitorConfig(_Section, frozen=True):
    section: ClassVar[str] = "monitor"
    #: Seconds between samples (at most a minute: admission needs fresh samples).
    interval_s: Annotated[float, msgspec.Meta(gt=0.0, le=60.0)] = 0.5
    history_s: PositiveSeconds = 600.0
    probe_timeout_s: Annotated[float, msgspec.Meta(gt=0.0, le=60.0)] = 2.0
    disk_path: str = "."


#: The ``[admission]`` section is the admission core's own configuration (its former name here).
AdmissionSettings = AdmissionConfig


class CleanupConfig(_Section, frozen=True):
    section: ClassVar[str] = "cleanup"
    after_run: bool = True
    aggressive: bool = False
    #: At most one post-run cleanup per this many seconds; runs ending closer together share one.
    min_interval_s: Seconds = 1.0
    #: Clean up proactively when a device's free memory stays below this fraction of capacity ...
    proactive_below_fraction: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.05
    #: ... for this long, while torch holds at least ``proactive_min_unused`` reserved but unused.
    proactive_after_s: PositiveSeconds = 10.0
    proactive_min_unused: Size = "512MiB"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_size(self.proactive_min_unused, "cleanup.proactive_min_unused")


class RunConfig(_Section, frozen=True):
    section: ClassVar[str] = "run"
    retry_on_oom: bool = False
    max_oom_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 1
    #: Pin each lease's reservation on its devices when it is granted, so that other processes cannot take the
    #: memory before the run allocates it (:meth:`vramgate.Lease.pin`). ``"auto"``: on simulated devices only;
    #: ``true`` also on real CUDA devices (through torch's caching allocator: opt-in, see the README).
    pin_reservation: bool | Literal["auto"] = "auto"
    #: Runs last their plan's estimated time times this, at least ``min_seconds``: 1 for real generations; a
    #: server whose runs are simulated or compressed says so (``vramgate serve`` does), so that admission's
    #: expected ends, ``Retry-After`` and the ETA before any progress follow the runs it really has.
    time_scale: Annotated[float, msgspec.Meta(gt=0.0, le=100.0)] = 1.0
    min_seconds: Seconds = 0.0

    def expected_seconds(self, estimated_s: float) -> float:
        """How long a run whose plan estimates ``estimated_s`` seconds is expected to last."""
        return expected_run_s(estimated_s, self.time_scale, self.min_seconds)

    def pins(self, *, simulated: bool) -> bool:
        """Whether a lease on a simulated (or real) device is pinned."""
        if self.pin_reservation == "auto":
            return simulated
        return self.pin_reservation


_HOST_NAME = re.compile(r"^(\*|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])$")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class ServerConfig(_Section, frozen=True):
    """The example HTTP server (``vramgate serve``): who may call it, and how long a connection may hold it."""

    section: ClassVar[str] = "server"
    #: Names a request's ``Host`` may carry (any port): loopback only by default, so that a web page elsewhere
    #: (DNS rebinding) cannot reach the server; ``"*"`` trusts every name.
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    #: An idle connection (before or between requests) is closed after this many seconds.
    keep_alive_s: Annotated[int, msgspec.Meta(ge=1, le=600)] = 5
    #: A request's head and body must arrive within this many seconds of its first byte (slow clients are cut).
    request_timeout_s: Annotated[float, msgspec.Meta(gt=0.0, le=600.0)] = 15.0
    #: Connections (and requests in progress) held at once; beyond, new requests are answered 503.
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.allowed_hosts:
            if not _HOST_NAME.match(name):
                raise ValueError(
                    f"server.allowed_hosts: {name!r} is not a host name (a name or address without port, "
                    "an IPv6 address in brackets, or '*')"
                )


class GateConfig(_Section, frozen=True):
    """Everything a gate needs. Every field has a default, so ``GateConfig()`` works on any machine."""

    devices: DevicesConfig = DevicesConfig()
    monitor: MonitorConfig = MonitorConfig()
    admission: AdmissionConfig = AdmissionConfig()
    cleanup: CleanupConfig = CleanupConfig()
    run: RunConfig = RunConfig()
    server: ServerConfig = ServerConfig()
    #: Write every message to this JSON Lines log (``None``: no log). A restart appends a run; it never erases.
    log_path: str | None = None
    #: Rotate the log when it reaches this many bytes (0: never): it becomes ``log_path.1``, older ones ``.2`` ...
    log_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 100 * (1 << 20)
    #: How many rotated log files to keep (the oldest is removed past it).
    log_backups: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    #: Persist what the estimator learns from runs here (``None``: keep it in memory).
    learned_path: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        interval, stale = self.monitor.interval_s, self.admission.stale_after_s
        if stale is not None and interval >= stale:
            raise ValueError(
                f"monitor.interval_s ({interval:g}) must be shorter than admission.stale_after_s ({stale:g}): "
                "every sample would be stale by the next one and admission would stop"
            )


_CODEC: Codec[GateConfig] = Codec(GateConfig)
ENV_PREFIX = "VRAMGATE_"


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, raw in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            raise ConfigError(f"{key}: empty section or key name")
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> GateConfig:
    """Load the configuration from a TOML file (optional) and ``VRAMGATE_*`` environment variables.

    Raises :class:`~vramgate.errors.DecodeError` naming the key (``$.admission.queue_limit``) on a bad value, an
    unknown key or a bad unit, and :class:`~vramgate.errors.ConfigError` when the file cannot be read.
    """
    raw: dict[str, Any] = {}
    source = str(path) if path is not None else "environment"
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise DecodeError(f"not UTF-8 text (byte {exc.start})", source=str(path)) from None
        except tomllib.TOMLDecodeError as exc:
            raise DecodeError(f"not valid TOML: {exc}", source=str(path)) from None
        except RecursionError:
            raise DecodeError(TOO_DEEP, source=str(path)) from None
    raw = _merge(raw, _env_overrides(os.environ if environ is None else environ))
    _refuse_old_names(raw, source)
    return _CODEC.convert(raw, source=source)


def _refuse_old_names(raw: Mapping[str, Any], source: str) -> None:
    """A key of ``[admission]`` under a name it no longer has is a :class:`DecodeError` naming the new one."""
    section = raw.get("admission")
    found = renamed(section) if isinstance(section, Mapping) else None
    if found is not None:
        old, new = found
        raise DecodeError(f"{old} is now {new}: write {new} instead", path=f"$.{old}", source=source)
