"""The catalog entries a run used beyond the built-ins, as its message log records them.

A gate whose estimator knows a model profile or a GPU that vramgate does not ship (registered with
:meth:`~vramgate.policy.models.ModelCatalog.register`, ``load_file``, or a catalog of its own) writes those
entries into the log header (``config["registered"]``), and a replay rebuilds its cores with the built-in catalogs
plus them: a log of a run that used them replays identically in any process. A built-in replaced by an entry of
the same name is recorded too; entries equal to the built-ins are not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from vramgate.policy.gpus import BUILTIN_GPUS, GpuCatalog, GpuSpec
from vramgate.policy.models import BUILTIN_MODELS, ModelCatalog, ModelProfile

#: The key of the log header's config that holds them.
KEY = "registered"


class Registered(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Model profiles and GPUs beyond (or replacing) the built-in ones."""

    models: tuple[ModelProfile, ...] = ()
    gpus: tuple[GpuSpec, ...] = ()

    def catalogs(self) -> tuple[ModelCatalog, GpuCatalog]:
        """New catalogs: the built-ins, then these entries (replacing a built-in of the same name)."""
        return ModelCatalog((*BUILTIN_MODELS, *self.models)), GpuCatalog((*BUILTIN_GPUS, *self.gpus))


def registered(models: ModelCatalog, gpus: GpuCatalog) -> Registered:
    """What ``models`` and ``gpus`` hold beyond the built-ins."""
    shipped_models = {profile.name: profile for profile in BUILTIN_MODELS}
    shipped_gpus = {gpu.name: gpu for gpu in BUILTIN_GPUS}
    return Registered(
        models=tuple(p for p in models.all() if shipped_models.get(p.name) != p),
        gpus=tuple(g for g in gpus.all() if shipped_gpus.get(g.name) != g),
    )


def header_config(models: ModelCatalog, gpus: GpuCatalog) -> dict[str, Any]:
    """The log header's config entry for these catalogs (empty when they hold only the built-ins)."""
    extra = registered(models, gpus)
    return {KEY: msgspec.to_builtins(extra)} if extra.models or extra.gpus else {}


def from_header(config: Mapping[str, Any]) -> Registered:
    """The entries a log header's config recorded (none in a log without them). Raises
    :class:`msgspec.ValidationError` naming the field of an entry that does not decode."""
    raw = config.get(KEY)
    return Registered() if raw is None else msgspec.convert(raw, Registered)
