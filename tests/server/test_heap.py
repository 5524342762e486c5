"""The server freezes the heap it started with, so that full collections (the post-run cleanup's) skip it."""

from __future__ import annotations

import gc
import weakref

import msgspec
import pytest

from tests.server._helpers import FAST, SMALL, app_for, serving, wait_state
from vramgate.server.app import SERVE_GEN0_THRESHOLD, serve, young_collections_every

pytestmark = pytest.mark.anyio


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


async def test_startup_heap_is_frozen_while_serving_and_released_after() -> None:
    gc.unfreeze()
    before = len(gc.get_objects())
    async with serving(app_for()) as client:
        frozen = gc.get_freeze_count()
        assert frozen >= before // 2  # what was alive at startup (modules, catalogs, the gate) is frozen
        assert len(gc.get_objects()) < before  # and no longer in the generations a full collection walks
        accepted = (await client.post("/v1/generations", json=SMALL)).json()
        await wait_state(client, accepted["request_id"], {"completed"})
        # garbage made after startup is still collected
        node = _Node()
        node.other = _Node()
        node.other.other = node
        alive = weakref.ref(node)
        del node
        gc.collect()
        assert alive() is None
    assert gc.get_freeze_count() == 0  # a process that serves again (or a test) is not left frozen


async def test_freezing_is_a_setting() -> None:
    gc.unfreeze()
    settings = msgspec.structs.replace(FAST, freeze_heap=False)
    async with serving(app_for(settings=settings)):
        assert gc.get_freeze_count() == 0


def test_young_collections_are_set_for_the_block_and_restored() -> None:
    before = gc.get_threshold()
    with young_collections_every(5000):
        assert gc.get_threshold() == (5000, *before[1:])
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError), young_collections_every(9000):
        raise RuntimeError("the server failed")
    assert gc.get_threshold() == before
    with young_collections_every(None):
        assert gc.get_threshold() == before
    with pytest.raises(ValueError, match="at least 1"), young_collections_every(0):
        pass
    assert gc.get_threshold() == before


def test_serve_runs_uvicorn_with_the_larger_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from fastapi import FastAPI

    seen: list[tuple[int, ...]] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: seen.append(gc.get_threshold()))
    before = gc.get_threshold()
    serve(FastAPI(), port=0)
    serve(FastAPI(), port=0, gen0_threshold=None)
    assert [t[0] for t in seen] == [SERVE_GEN0_THRESHOLD, before[0]]
    assert gc.get_threshold() == before
