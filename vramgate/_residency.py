"""The gate's side of resident models: a server declares what it loaded and unloaded, and carries out evictions.

A server that keeps a model's weights loaded between runs says so with :meth:`GateResidency.declare_loaded`
(``Gate.declare_loaded``); admission then counts those weights as resident on the device, and a request of the
model reserves only its working memory there. When admission needs the room it orders the least recently used
idle model out (:class:`~vramgate.messages.EvictModel`): the gate calls the ``on_evict`` callback given to
:func:`~vramgate.open_gate` (sync or async) with the order; once it returns, the model counts as unloaded (the
callback may declare it unloaded itself). Without ``on_evict`` declared models are not evictable: admission never
orders them out. Declarations travel to admission as messages, so the message log records them and a replay
decides the same.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from vramgate.errors import InvalidParameter
from vramgate.messages import EvictModel, ModelLoaded, ModelUnloaded, ParamDtype
from vramgate.messages.codec import codec_for

if TYPE_CHECKING:
    from vramgate.gate import Gate

#: What carries out an eviction order: unload the model (sync or async).
EvictHandler = Callable[[EvictModel], Awaitable[None] | None]

_DTYPES = ("fp32", "bf16", "fp16", "fp8")


class GateResidency:
    """What a gate's server declared loaded, and who carries out admission's eviction orders."""

    def __init__(self, gate: Gate, on_evict: EvictHandler | None) -> None:
        self._gate = gate
        self._on_evict = on_evict
        self._declared: dict[tuple[int, str, str, str], ModelLoaded] = {}
        self.evicted = 0

    @property
    def declared(self) -> tuple[ModelLoaded, ...]:
        """The models declared loaded and not unloaded since."""
        return tuple(self._declared.values())

    def loaded_message(
        self,
        model: str,
        *,
        device: int,
        vram_mb: int,
        ram_mb: int = 0,
        dtype: ParamDtype = "bf16",
        components: Sequence[str] = (),
        owner: str = "",
    ) -> ModelLoaded:
        """The :class:`ModelLoaded` for a declaration, validated: a known model (by its profile's name, as plans
        name it), a device admission manages, and figures that decode."""
        name = self._gate.estimator.models.get(model).name
        self._check_device(device)
        if dtype not in _DTYPES:
            raise InvalidParameter("dtype", dtype, "not a weights dtype", valid="/".join(_DTYPES))
        raw = {
            "type": "ModelLoaded",
            "device": device,
            "model": name,
            "vram_mb": vram_mb,
            "ram_mb": ram_mb,
            "owner": owner,
            "dtype": dtype,
            "components": list(components),
            "evictable": self._on_evict is not None,
        }
        return codec_for(ModelLoaded).convert(raw, source="declare_loaded")

    async def declare_loaded(
        self,
        model: str,
        *,
        device: int,
        vram_mb: int,
        ram_mb: int = 0,
        dtype: ParamDtype = "bf16",
        components: Sequence[str] = (),
        owner: str = "",
    ) -> ModelLoaded:
        """Declare that the server holds ``model``'s weights on ``device`` (``vram_mb`` there, ``ram_mb`` in host
        RAM). Raises :class:`~vramgate.errors.InvalidParameter` or a :class:`~vramgate.errors.DecodeError`
        naming what is wrong; nothing is declared then."""
        message = self.loaded_message(
            model, device=device, vram_mb=vram_mb, ram_mb=ram_mb, dtype=dtype, components=components, owner=owner
        )
        await self._gate._tell_admission(message)
        self._declared[_key(message)] = message
        return message

    async def declare_unloaded(
        self, model: str, *, device: int, dtype: ParamDtype = "bf16", owner: str = "", reason: str = ""
    ) -> bool:
        """Declare that the server unloaded ``model`` from ``device``; ``False`` when it was not declared loaded.
        The memory counts free once a sample taken after now shows it."""
        name = self._gate.estimator.models.get(model).name
        self._check_device(device)
        key = (device, owner, name, dtype)
        if key not in self._declared:
            return False
        del self._declared[key]
        message = ModelUnloaded(device=device, model=name, owner=owner, dtype=dtype, reason=reason[:500])
        await self._gate._tell_admission(message)
        return True

    async def carry_out(self, order: EvictModel) -> None:
        """Carry out admission's eviction order: call ``on_evict``, then count the model unloaded."""
        key = (order.device, order.owner, order.model, order.dtype)
        if self._on_evict is None or key not in self._declared:
            return
        done = self._on_evict(order)
        if inspect.isawaitable(done):
            await done
        self.evicted += 1
        await self.declare_unloaded(
            order.model, device=order.device, dtype=order.dtype, owner=order.owner, reason=order.reason
        )

    def _check_device(self, device: int) -> None:
        indices = [d.index for d in self._gate.device_configs]
        if device not in indices:
            raise InvalidParameter("device", device, "admission manages no such device", valid=str(indices))


def _key(message: ModelLoaded) -> tuple[int, str, str, str]:
    return (message.device, message.owner, message.model, message.dtype)
