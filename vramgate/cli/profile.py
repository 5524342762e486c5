"""``vramgate profile trace``: derive a model's activation memory by tracing its DiT's forward pass.

Needs the ``trace`` extra (torch and diffusers: ``pip install -e '.[trace]'``); the profiles it writes are
plain JSON that the estimator loads without torch::

    vramgate profile trace --config hunyuan/transformer/config.json --name hunyuanvideo --out hunyuan.json
    vramgate estimate --profile hunyuan.json --model hunyuanvideo --size 1280x720 --gpu H100 --runner diffusers
    vramgate profile trace --builtins --write vramgate/policy/traced.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from vramgate.errors import DecodeError, VramgateError
from vramgate.messages.codec import decode_json
from vramgate.policy.models import BUILTIN_MODELS, DEFAULT_MODEL_CATALOG, TracedTerms, decode_profile, encode_traced


def _import_trace() -> Any:
    try:
        from vramgate.trace import profiles
    except ImportError as exc:
        raise click.ClickException(
            f"tracing needs torch and diffusers ({exc.name or exc} is missing): pip install -e '.[trace]'"
        ) from None
    return profiles


def _read_config(path: str) -> dict[str, Any]:
    try:
        raw: dict[str, Any] = decode_json(Path(path).read_bytes(), dict[str, Any], source=path)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror or exc}", param_hint="--config") from None
    except DecodeError as exc:
        raise click.BadParameter(f"{path} is not a JSON object: {exc.reason}", param_hint="--config") from None
    return raw


@click.group("profile")
def command() -> None:
    """Model profiles derived by tracing the model's own code."""


@command.command("trace")
@click.option("--config", "config_path", default=None, help="A transformer config.json (diffusers, or Wan's WanModel).")
@click.option("--name", default=None, help="Profile name (default: the config's folder name).")
@click.option(
    "--family",
    type=click.Choice(["wan2.1", "wan2.2"]),
    default=None,
    help="Wan code a WanModel config runs on (default: wan2.2 for model_type ti2v, else wan2.1).",
)
@click.option("--builtin", "builtins", multiple=True, help="Trace a built-in Wan profile (repeatable).")
@click.option("--builtins", "all_builtins", is_flag=True, help="Trace every built-in Wan profile.")
@click.option(
    "--layers",
    type=click.IntRange(1, 1024),
    default=None,
    help="Trace this many blocks (terms do not depend on depth).",
)
@click.option("--out", default=None, help="Write the profile (--config) here instead of printing it.")
@click.option("--write", "write_path", default=None, help="Write the built-ins' traced terms to this file.")
def trace(
    config_path: str | None,
    name: str | None,
    family: str | None,
    builtins: tuple[str, ...],
    all_builtins: bool,
    layers: int | None,
    out: str | None,
    write_path: str | None,
) -> None:
    """Trace one denoising forward per token count on the meta device and write the activation terms.

    With --config: a whole profile (DiT shape and weights from the configuration, traced activations of the
    runners that have code here). With --builtin/--builtins: the built-in Wan profiles' terms for generate.py
    and diffusers, and diffusers' VAE decode (--write saves them as the file the estimator ships with).
    """
    if (config_path is None) == (not builtins and not all_builtins):
        raise click.UsageError("give --config PATH, or --builtin NAME / --builtins")
    profiles = _import_trace()
    if config_path is not None:
        config = _read_config(config_path)
        label = name or Path(config_path).resolve().parent.name or "traced"
        try:
            profile = profiles.profile_from_config(config, label, family=family, layers=layers)
        except (VramgateError, ValueError, TypeError) as exc:
            raise click.UsageError(f"{config_path}: {exc}") from None
        data = msgspec.json.format(msgspec.json.encode(profile), indent=2) + b"\n"
        try:
            decode_profile(data, source="the traced profile")  # what the estimator will load: validated now
        except VramgateError as exc:
            raise click.UsageError(str(exc)) from None
        _emit(data, out)
        return
    names = [p.name for p in BUILTIN_MODELS] if all_builtins else list(builtins)
    terms: TracedTerms = {}
    for wanted in names:
        found = DEFAULT_MODEL_CATALOG.find(wanted)
        if found is None:
            valid = ", ".join(DEFAULT_MODEL_CATALOG.names())
            raise click.BadParameter(f"unknown model {wanted!r}; built-ins: {valid}", param_hint="--builtin")
        terms[found.name] = profiles.traced_terms(found, layers=layers)
    _emit(encode_traced(terms), write_path)


def _emit(data: bytes, path: str | None) -> None:
    if path is None:
        sys.stdout.write(data.decode())
        return
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise click.BadParameter(f"cannot write {path}: {exc.strerror or exc}") from None
    click.echo(f"wrote {path}", err=True)
