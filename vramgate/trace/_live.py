"""Live tensor bytes of a forward pass, counted op by op, and the attention kernel a GPU runs.

:class:`LiveBytes` is a ``TorchDispatchMode``: every tensor an aten op returns is looked up by its storage; a
storage not seen before adds its ``nbytes`` to the live total, and a weak reference to it subtracts them again
when the storage dies (the last view of it goes away). So the count is what a caching allocator would have
handed out at each moment, without its rounding. It works the same on real tensors, meta tensors and
``FakeTensor``s (whose storages are meta storages of the right size), so a full-size model can be traced in
no memory and the count checked byte for byte against a real run of a small one.

The peak is labelled with the module that was running when it was reached (module hooks keep a stack of
names; block indices are folded, ``blocks.7.self_attn`` reads ``blocks.*.self_attn``).

:class:`EfficientAttention` is a ``TorchFunctionMode`` that routes ``scaled_dot_product_attention`` to the
fused CPU flash kernel (``aten._scaled_dot_product_flash_attention_for_cpu``): like FlashAttention and the
memory-efficient kernels on a GPU it returns the output and a per-row log-sum-exp and never materialises the
score matrix, whatever the tracing device would otherwise choose.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_INDEX = re.compile(r"\.\d+(?=\.|$)")


class LiveBytes(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts the bytes of the storages that ops create while the mode is active, and their peak.

    With ``record=True`` the live total after every op is kept in ``timeline`` (to compare two runs op by op).
    """

    def __init__(self, *, record: bool = False) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.timeline: list[int] | None = [] if record else None
        self.live = 0
        self.peak = 0
        self.peak_label = ""
        self._labels: list[str] = []
        self._storages: dict[int, tuple[int, weakref.ref[torch.UntypedStorage]]] = {}

    # ---------------------------------------------------------------- labels

    @property
    def label(self) -> str:
        return self._labels[-1] if self._labels else ""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Label what runs inside as ``name`` (nested inside the current label)."""
        self._labels.append(f"{self.label}.{name}" if self.label else name)
        try:
            yield
        finally:
            self._labels.pop()

    @contextmanager
    def watching(self, module: torch.nn.Module) -> Iterator[None]:
        """Label the peak with the submodule of ``module`` that reached it."""
        handles = []
        for name, sub in module.named_modules():
            if not name:
                continue
            label = _INDEX.sub(".*", name)
            handles.append(sub.register_forward_pre_hook(self._enter(label)))
            handles.append(sub.register_forward_hook(self._leave, always_call=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _enter(self, label: str) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _args: Any) -> None:
            self._labels.append(label)

        return hook

    def _leave(self, _module: torch.nn.Module, _args: Any, _out: Any) -> None:
        if self._labels:
            self._labels.pop()

    # ---------------------------------------------------------------- counting

    def reset_peak(self) -> None:
        self.peak = self.live
        self.peak_label = self.label

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        # An output that shares an input's storage (a view, an in-place op) allocated nothing: it is counted
        # already, or it belongs to memory made outside the trace (weights, inputs), which is not counted.
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and id(leaf.untyped_storage()) not in inputs:
                self.track(leaf)
        if self.timeline is not None:
            self.timeline.append(self.live)
        return out

    def track(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage if it is new (tensors made outside the mode can be added this way)."""
        storage = tensor.untyped_storage()
        key = id(storage)
        known = self._storages.get(key)
        if known is not None and known[1]() is storage:
            return
        nbytes = int(storage.nbytes())
        self._storages[key] = (nbytes, weakref.ref(storage, self._freer(key, nbytes)))
        self.live += nbytes
        if self.live > self.peak:
            self.peak = self.live
            self.peak_label = self.label

    def _freer(self, key: int, nbytes: int) -> Callable[[weakref.ref[torch.UntypedStorage]], None]:
        def free(ref: weakref.ref[torch.UntypedStorage]) -> None:
            known = self._storages.get(key)
            if known is not None and known[1] is ref:
                del self._storages[key]
                self.live -= nbytes

        return free


class EfficientAttention(TorchFunctionMode):
    """Runs ``F.scaled_dot_product_attention`` as a fused flash kernel (no score matrix), on any tracing device."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            return _flash(*args, **kwargs)
        return func(*args, **kwargs)


def _flash(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        # the fused kernel takes an additive mask in the query's dtype (as the GPU's efficient kernel does)
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~attn_mask, float("-inf")
        )
    with torch._C.DisableTorchFunction():
        out: torch.Tensor
        out, _lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
        )
    return out
