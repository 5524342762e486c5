"""What every configuration section shares: memory sizes with units, bounded numbers, checks that name the key.

Memory sizes are written with a unit (``"24GiB"``, ``"512MiB"``, ``"1.5GB"``) or as a bare number of MiB. A
section's numbers are checked against their annotated bounds when it is built in Python too (msgspec checks them
only when decoding), so that ``inf`` or ``nan`` never gets in. The sections themselves live with what they
configure (``[admission]`` is the admission core's :class:`~vramgate.policy.admission_config.AdmissionConfig`);
:mod:`vramgate.config` gathers them into one file.
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Annotated, ClassVar

import msgspec

from vramgate.errors import ConfigError

_SIZE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[a-zA-Z]*)\s*$")
_UNITS = {
    "": 1.0,
    "mib": 1.0,
    "mb": 1.0,
    "m": 1.0,
    "gib": 1024.0,
    "gb": 1024.0,
    "g": 1024.0,
    "tib": 1048576.0,
    "tb": 1048576.0,
    "kib": 1 / 1024,
    "kb": 1 / 1024,
}

#: A memory size: a number of MiB, or a string with a unit.
Size = int | str
#: Durations and rates are finite and bounded: ``inf`` or ``nan`` would stall the monitor or admission.
DAY_S = 86_400.0
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0.0, le=DAY_S)]
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=DAY_S)]


def parse_size_mb(value: Size, *, field: str = "size") -> int:
    """MiB for ``value`` (``512``, ``"512MiB"``, ``"24GiB"``, ``"1.5GB"``). GB and GiB are both read as GiB.

    Raises :class:`ConfigError` naming ``field`` for anything else: no number, an unknown unit, a negative size,
    or one above 0 but below 1 MiB.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{field}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{field}: a size cannot be negative ({value})")
        return value
    match = _SIZE.match(value)
    if match is None:
        raise ConfigError(f"{field}: {value!r} is not a size (examples: 512, '512MiB', '24GiB')")
    unit = match.group("unit").lower()
    if unit not in _UNITS:
        raise ConfigError(f"{field}: unknown unit {match.group('unit')!r} in {value!r} (use MiB, GiB or TiB)")
    mb = float(match.group("number")) * _UNITS[unit]
    if not math.isfinite(mb):
        raise ConfigError(f"{field}: {value!r} is too large to be a size")
    if 0 < mb < 1:
        raise ConfigError(f"{field}: {value!r} is less than 1 MiB (sizes are whole MiB; use 0 for none)")
    return int(mb)


def check_size(value: Size | None, field: str) -> None:
    """Raise :class:`ValueError` (which msgspec reports at the field's path) when ``value`` is not a size."""
    if value is not None:
        try:
            parse_size_mb(value, field=field)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A configuration section. Its numbers are checked against their annotated bounds when it is built in Python
    too (msgspec checks them only when decoding), so that ``inf`` or ``nan`` never gets in."""

    #: The section's name in the TOML file, for errors.
    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, low, low_open, high, high_open in _bounds(type(self)):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            below = value <= low if low_open else value < low
            above = value >= high if high_open else value > high
            if not math.isfinite(value) or below or above:
                lo = f"{'(' if low_open else '['}{low:g}" if math.isfinite(low) else "(-inf"
                hi = f"{high:g}{')' if high_open else ']'}" if math.isfinite(high) else "inf)"
                raise ValueError(f"{self.section}.{name} must be a finite number in {lo}, {hi}, not {value!r}")


@cache
def _bounds(cls: type[Section]) -> tuple[tuple[str, float, bool, float, bool], ...]:
    """``(field, low, low is open, high, high is open)`` for each numeric field, from its msgspec annotation."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    found: list[tuple[str, float, bool, float, bool]] = []
    for field in info.fields:
        kind = field.type
        options = kind.types if isinstance(kind, msgspec.inspect.UnionType) else (kind,)
        for option in options:
            if isinstance(option, msgspec.inspect.FloatType | msgspec.inspect.IntType):
                low, low_open = (option.gt, True) if option.gt is not None else (option.ge, False)
                high, high_open = (option.lt, True) if option.lt is not None else (option.le, False)
                found.append(
                    (
                        field.name,
                        -math.inf if low is None else float(low),
                        low_open,
                        math.inf if high is None else float(high),
                        high_open,
                    )
                )
                break
    return tuple(found)
