"""Building a ``GenerationRequest`` from command-line options (shared by ``estimate`` and ``optimize``)."""

from __future__ import annotations

from typing import Any

import click
import msgspec

from vramgate.messages import GenerationRequest
from vramgate.policy.models import parse_size


def positive(name: str, value: int | None) -> None:
    """Reject a non-positive option value as a usage error naming the option."""
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be positive, got {value}", param_hint=name)


def build_request(
    model: str,
    size: str,
    frames: int | None,
    steps: int | None,
    task: str | None,
    lora: int,
    options: dict[str, Any],
    *,
    max_level: str | None = None,
) -> GenerationRequest:
    """The request the options describe; bad values are usage errors that name the option or field."""
    try:
        width, height = parse_size(size)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (use WIDTHxHEIGHT, e.g. 1280x720)", param_hint="--size") from exc
    positive("--frames", frames)
    positive("--steps", steps)
    if lora < 0:
        raise click.BadParameter(f"must be 0 or more, got {lora}", param_hint="--lora")
    pinned = {k: v for k, v in options.items() if v is not None}
    raw: dict[str, Any] = {
        "model": model,
        "width": width,
        "height": height,
        "frames": frames,
        "steps": steps,
        "task": task,
        "lora": [{"name": f"lora{i + 1}"} for i in range(lora)],
        "max_level": max_level,
        "options": pinned or None,
    }
    try:
        return msgspec.convert({k: v for k, v in raw.items() if v is not None}, GenerationRequest)
    except (msgspec.ValidationError, ValueError) as exc:
        raise click.UsageError(f"invalid request: {exc}") from exc
