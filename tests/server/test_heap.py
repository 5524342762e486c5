"""The server freezes the heap it started with, so that full collections (the post-run cleanup's) skip it."""

from __future__ import annotations

import gc
import weakref

import msgspec
import pytest

from tests.server._helpers import FAST, SMALL, app_for, serving, wait_state

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
