"""The base of every vramgate message: a frozen, tagged msgspec Struct.

Every concrete message class registers itself, so that the log codec can decode any message by its tag
(``{"type": "GenerationRequest", ...}``) without a hand-kept list. All message classes live in
``vramgate.messages``; importing that package registers them all.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

#: Memory in MiB (2**20 bytes). vramgate reports and budgets memory in whole MiB everywhere.
MB = Annotated[int, msgspec.Meta(ge=0, le=1 << 40, description="MiB (2**20 bytes)")]
#: A signed MiB figure (a change, which may be negative).
DeltaMB = Annotated[int, msgspec.Meta(ge=-(1 << 40), le=1 << 40, description="MiB, may be negative")]
#: A duration or time stamp in seconds.
Seconds = Annotated[float, msgspec.Meta(ge=0.0, description="seconds")]
#: A fraction in [0, 1].
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
#: A request or lease id: printable, no path separators, bounded.
Ident = Annotated[str, msgspec.Meta(max_length=128, pattern=r"^[A-Za-z0-9._:-]*$")]

_REGISTRY: dict[str, type[Message]] = {}


class Message(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag_field="type",
    tag=True,
    forbid_unknown_fields=True,
):
    """Base class of all messages. Subclasses are frozen, keyword-only and tagged by their class name."""

    registered: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__name__
        other = _REGISTRY.get(name)
        if other is not None and other is not cls:
            raise TypeError(f"message tag {name!r} is used by both {other.__module__} and {cls.__module__}")
        _REGISTRY[name] = cls


def message_types() -> tuple[type[Message], ...]:
    """Every registered message class, in registration order."""
    return tuple(_REGISTRY.values())
