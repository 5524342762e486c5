"""Reading and writing simulator traces (JSON Lines of :mod:`vramgate.messages.trace` records), and device lists."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vramgate.errors import ConfigError, DecodeError, InvalidParameter
from vramgate.messages.codec import Codec
from vramgate.messages.trace import Arrival, Outside, TraceLine
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG, GpuCatalog, GpuSpec

_CODEC: Codec[TraceLine] = Codec(TraceLine)
_DEVICE = re.compile(r"^\s*(?:(?P<count>\d+)\s*[xX*]\s*)?(?P<name>[^\s].*?)\s*$")


@dataclass(frozen=True, slots=True)
class Trace:
    """A decoded trace: arrivals and outside loads, each in time order (stable for equal times)."""

    arrivals: tuple[Arrival, ...]
    outside: tuple[Outside, ...]
    source: str = ""

    @property
    def records(self) -> int:
        return len(self.arrivals) + len(self.outside)

    def check_devices(self, count: int) -> None:
        """Raise :class:`InvalidParameter` when an outside record names a device the simulation does not have."""
        for record in self.outside:
            if record.device >= count:
                raise InvalidParameter(
                    "device", record.device, f"the trace names device {record.device}", valid=f"0..{count - 1}"
                )


def trace_codec() -> Codec[TraceLine]:
    """The codec of one trace line."""
    return _CODEC


def decode_trace(data: bytes | str, *, source: str = "") -> Trace:
    """Decode a JSON Lines trace; a bad line raises :class:`DecodeError` with its line number and field path."""
    raw = data.encode() if isinstance(data, str) else data
    arrivals: list[Arrival] = []
    outside: list[Outside] = []
    for _, record in _CODEC.iter_json_lines(raw, source=source or None):
        if isinstance(record, Arrival):
            arrivals.append(record)
        else:
            outside.append(record)
    arrivals.sort(key=lambda r: r.at)
    outside.sort(key=lambda r: r.at)
    return Trace(arrivals=tuple(arrivals), outside=tuple(outside), source=source)


def load_trace(path: str | Path) -> Trace:
    """Read and decode a trace file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read trace {path}: {exc.strerror}") from None
    return decode_trace(data, source=str(path))


def encode_trace(records: Iterable[TraceLine]) -> bytes:
    """Encode records as JSON Lines (one deterministic JSON object a line)."""
    return b"".join(_CODEC.encode_json(record) + b"\n" for record in records)


def parse_devices(spec: str | Sequence[str], *, catalog: GpuCatalog = DEFAULT_GPU_CATALOG) -> tuple[GpuSpec, ...]:
    """``"2xH100-80GB,RTX4090-24GB"`` -> three GPU specs. Unknown names raise :class:`UnknownGPU`."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    devices: list[GpuSpec] = []
    for part in parts:
        if not part.strip():
            continue
        match = _DEVICE.match(part)
        if match is None:
            raise DecodeError(f"not a device: {part!r} (example: 2xH100-80GB)", path="$.devices")
        count = int(match.group("count") or 1)
        if not 1 <= count <= 1024:
            raise InvalidParameter("devices", part, "the count must be between 1 and 1024")
        gpu = catalog.get(match.group("name"))
        devices.extend([gpu] * count)
    if not devices:
        raise InvalidParameter("devices", spec, "no device given", valid="e.g. 2xH100-80GB,RTX4090-24GB")
    if len(devices) > 1024:
        raise InvalidParameter("devices", spec, "at most 1024 devices")
    return tuple(devices)
