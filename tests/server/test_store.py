"""The request store on real SQLite: what it keeps, in what order, and what survives a killed process."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vramgate.errors import ConfigError, DecodeError
from vramgate.messages import GenerationRequest
from vramgate.server.schema import GenerationStatus
from vramgate.server.store import (
    MEMORY,
    MEMORY_KEEP_ENDED,
    MemoryStore,
    RequestStore,
    SqliteStore,
    StoredRequest,
    StoreError,
    fingerprint,
    open_store,
)

pytestmark = pytest.mark.anyio
ROOT = str(Path(__file__).resolve().parents[2])

REQUEST = GenerationRequest(model="ti2v-5B", width=832, height=480, frames=33, steps=10)


def row(rid: str, *, client: str = "", key: str | None = None, priority: int = 0) -> StoredRequest:
    request = msgspec.structs.replace(REQUEST, request_id=rid, priority=priority)
    return StoredRequest(
        request_id=rid, request=request, client=client, idempotency_key=key, fingerprint=fingerprint(request)
    )


def ended(rid: str, state: str = "completed", reason: str = "") -> GenerationStatus:
    return msgspec.convert({"request_id": rid, "state": state, "reason": reason}, GenerationStatus)


async def test_a_request_is_kept_across_reopening_and_ends_once(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    async with open_store(path) as store:
        first = await store.put(row("g1", priority=3))
        second = await store.put(row("g2"))
        assert first.seq < second.seq
        assert await store.set_state("g1", "running")
    async with open_store(path) as store:
        again = await store.get("g1")
        assert again is not None
        assert again.request == first.request
        assert again.request.priority == 3
        assert again.state == "running"
        assert [r.request_id for r in await store.unfinished()] == ["g1", "g2"]
        assert await store.set_state("g1", "failed", ended("g1", "failed", "interrupted"))
        assert not await store.set_state("g1", "completed", ended("g1"))  # an ended request never changes
        assert not await store.set_state("g1", "running")
        final = await store.get("g1")
        assert final is not None
        assert final.ended
        assert final.view().state == "failed"
        assert final.view().reason == "interrupted"
        assert [r.request_id for r in await store.unfinished()] == ["g2"]
        assert await store.get("g3") is None
        assert (await store.get("g2")) is not None
        assert not await store.set_state("g3", "running")


@pytest.mark.parametrize("in_memory", [False, True], ids=["file", "memory"])
async def test_idempotency_keys_are_per_client_and_lists_are_newest_first(tmp_path: Path, in_memory: bool) -> None:
    async with open_store(MEMORY if in_memory else tmp_path / "store.sqlite") as store:
        await store.put(row("a1", client="alice", key="k"))
        await store.put(row("b1", client="bob", key="k"))  # the same key from another client is another request
        await store.put(row("a2", client="alice"))
        await store.put(row("n1", key="k"))  # no client: the key alone
        held = await store.put(row("a3", client="alice", key="k"))
        assert held.request_id == "a1"  # nothing new was kept
        assert await store.get("a3") is None
        found = await store.find_key("alice", "k")
        assert found is not None
        assert found.request_id == "a1"
        assert (await store.find_key("", "k")) is not None
        assert await store.find_key("carol", "k") is None
        assert [r.request_id for r in await store.list_client("alice")] == ["a2", "a1"]
        assert [r.request_id for r in await store.list_client("alice", limit=1)] == ["a2"]
        assert await store.list_client("carol") == []


@pytest.mark.parametrize("in_memory", [False, True], ids=["file", "memory"])
async def test_concurrent_calls_share_batches_and_lose_nothing(tmp_path: Path, in_memory: bool) -> None:
    path = MEMORY if in_memory else str(tmp_path / "store.sqlite")
    async with open_store(path) as store:
        held: dict[int, str] = {}

        async def put(number: int) -> None:
            key = "shared" if number % 50 == 0 else None
            held[number] = (await store.put(row(f"g{number:03d}", client="c", key=key))).request_id

        async with anyio.create_task_group() as tg:
            for number in range(200):
                tg.start_soon(put, number)
        owners = {held[n] for n in range(0, 200, 50)}
        assert len(owners) == 1  # one request holds the key; the others were given it
        rows = await store.unfinished()
        assert len(rows) == 197
        assert owners <= {r.request_id for r in rows}
        assert {r.request_id for r in rows} >= {f"g{n:03d}" for n in range(200) if n % 50}
        assert [r.seq for r in rows] == sorted(r.seq for r in rows)
        assert len(await store.list_client("c", limit=1000)) == 197
    if not in_memory:
        async with open_store(path) as store:
            assert len(await store.list_client("c", limit=1000)) == 197


def test_fingerprints_ignore_the_id_and_field_order() -> None:
    one = msgspec.json.decode(b'{"model": "ti2v-5B", "width": 832, "height": 480}', type=GenerationRequest)
    two = msgspec.json.decode(b'{"height": 480, "width": 832, "model": "ti2v-5B"}', type=GenerationRequest)
    assert fingerprint(one) == fingerprint(msgspec.structs.replace(two, request_id="g9"))
    assert fingerprint(one) != fingerprint(msgspec.structs.replace(one, width=1280))


async def test_a_file_that_is_not_a_store_is_a_config_error_naming_it(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match=r"junk\.sqlite"):
        async with open_store(junk):
            pass
    other = tmp_path / "other.sqlite"
    with closing(sqlite3.connect(other)) as db, db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(ConfigError, match="not a vramgate request store"):
        async with open_store(other):
            pass
    with pytest.raises(ConfigError, match="does not exist"):
        async with open_store(tmp_path / "missing" / "store.sqlite"):
            pass


async def test_a_second_server_on_the_same_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    async with open_store(path) as store:
        await store.put(row("g1"))
        with pytest.raises(ConfigError, match="another server is using this request store"):
            async with open_store(path):
                pass
        assert await store.get("g1") is not None
    async with open_store(path) as store:  # free again once the first one closed
        assert await store.get("g1") is not None


async def test_a_damaged_row_is_a_decode_error_naming_the_request(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    async with open_store(path) as store:
        await store.put(row("g1"))
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE requests SET request = ? WHERE request_id = 'g1'", (b'{"model": 5}',))
    async with open_store(path) as store:
        with pytest.raises(DecodeError, match=r"request g1"):
            await store.get("g1")


KILLED = """
import os, sys, anyio, msgspec
from vramgate.messages import GenerationRequest
from vramgate.server.store import StoredRequest, open_store

async def main():
    async with open_store(sys.argv[1]) as store:
        for i in range(20):
            r = GenerationRequest(model="ti2v-5B", width=832, height=480, request_id=f"g{i}")
            await store.put(StoredRequest(request_id=r.request_id, request=r))
        await store.set_state("g0", "running")
        os.kill(os.getpid(), 9)  # no close, no checkpoint

anyio.run(main)
"""


async def test_committed_writes_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    env = {**os.environ, "PYTHONPATH": ROOT}
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-c", KILLED, str(path)], env=env, check=False)
    assert done.returncode == -9, done.stderr
    async with open_store(path) as store:
        rows = await store.unfinished()
        assert [r.request_id for r in rows] == [f"g{i}" for i in range(20)]
        assert rows[0].state == "running"


def test_serve_with_a_file_that_is_not_a_store_exits_2_with_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 100)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMGATE_")}
    command = [sys.executable, "-m", "vramgate", "serve", "--port", "0", "--simulate", "RTX4090-24GB"]
    done = subprocess.run([*command, "--store", str(junk)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(junk) in lines[0]


@pytest.mark.parametrize("in_memory", [False, True], ids=["file", "memory"])
async def test_a_bounded_store_keeps_the_latest_ended_requests_and_every_unfinished_one(
    tmp_path: Path, in_memory: bool
) -> None:
    async with open_store(MEMORY if in_memory else tmp_path / "store.sqlite", keep_ended=3) as store:
        for number in range(7):
            await store.put(row(f"g{number}"))
        assert await store.set_state("g1", "running")
        for rid in ("g4", "g2", "g3", "g5", "g6"):  # the order they end in, not the order they came in
            assert await store.set_state(rid, "completed", ended(rid))
        kept = {rid for rid in (f"g{n}" for n in range(7)) if await store.get(rid) is not None}
        assert kept == {"g0", "g1", "g3", "g5", "g6"}  # the two that ended first were dropped
        assert [r.request_id for r in await store.unfinished()] == ["g0", "g1"]
        assert [r.request_id for r in await store.list_client("")] == ["g6", "g5", "g3", "g1", "g0"]
        assert await store.set_state("g0", "cancelled", ended("g0", "cancelled"))
        assert await store.get("g3") is None
        assert (await store.get("g0")) is not None


@pytest.mark.parametrize("in_memory", [False, True], ids=["file", "memory"])
async def test_a_request_dropped_from_a_bounded_store_frees_its_idempotency_key(
    tmp_path: Path, in_memory: bool
) -> None:
    async with open_store(MEMORY if in_memory else tmp_path / "store.sqlite", keep_ended=1) as store:
        await store.put(row("g1", client="alice", key="k"))
        await store.put(row("g2", client="alice"))
        assert await store.set_state("g1", "completed", ended("g1"))
        assert (await store.put(row("g3", client="alice", key="k"))).request_id == "g1"  # still held
        assert await store.set_state("g2", "completed", ended("g2"))  # g1 is dropped
        assert await store.find_key("alice", "k") is None
        assert (await store.put(row("g4", client="alice", key="k"))).request_id == "g4"
        assert [r.request_id for r in await store.list_client("alice")] == ["g4", "g2"]


async def test_the_in_memory_store_is_bounded_by_default_and_a_file_keeps_everything(tmp_path: Path) -> None:
    async with open_store() as store:
        assert isinstance(store, MemoryStore)
        assert store.keep_ended == MEMORY_KEEP_ENDED
    async with open_store(tmp_path / "store.sqlite") as store:
        assert store.keep_ended is None  # every id a server accepted answers after a restart
        for number in range(5):
            await store.put(row(f"g{number}"))
            assert await store.set_state(f"g{number}", "completed", ended(f"g{number}"))
        assert all([await store.get(f"g{number}") is not None for number in range(5)])
    with pytest.raises(ValueError, match="keep_ended"):
        SqliteStore.connect(MEMORY, keep_ended=0)
    with pytest.raises(ValueError, match="keep_ended"):
        MemoryStore(keep_ended=0)


async def test_a_store_file_copies_its_log_into_the_database_as_it_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vramgate.server.store.CHECKPOINT_WRITES", 50)
    path, wal = tmp_path / "store.sqlite", tmp_path / "store.sqlite-wal"
    async with open_store(path) as store:
        empty = path.stat().st_size
        for number in range(400):
            await store.put(row(f"g{number:03d}"))
        # Checkpointed in a worker thread while the store stays open (SQLite's own checkpoint is off): the rows
        # are in the database file, and the log is reused rather than grown by every write.
        assert path.stat().st_size > empty
        log_size = wal.stat().st_size
        async with anyio.create_task_group() as tg:
            for number in range(400, 800):
                tg.start_soon(store.put, row(f"g{number:03d}"))
        assert wal.stat().st_size <= 2 * log_size
    async with open_store(path) as store:
        assert len(await store.unfinished()) == 800


# ---------------------------------------------------------------- the store in memory answers as SQLite does

_IDS = st.sampled_from([f"g{n}" for n in range(8)])
_CLIENTS = st.sampled_from(["", "alice", "bob"])
_KEYS = st.sampled_from([None, "k1", "k2"])
_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _IDS, _CLIENTS, _KEYS, st.integers(0, 3)),
        st.tuples(st.just("set"), _IDS, st.sampled_from(["running", "completed", "failed", "cancelled"])),
        st.tuples(st.just("get"), _IDS),
        st.tuples(st.just("find"), _CLIENTS, st.sampled_from(["k1", "k2"])),
        st.tuples(st.just("list"), _CLIENTS, st.integers(1, 5)),
        st.tuples(st.just("unfinished")),
    ),
    max_size=40,
)


async def _answers(store: RequestStore, operations: list[tuple[object, ...]]) -> list[object]:
    """What ``store`` answers to each operation (an error by its type and whether it names the duplicate)."""
    answers: list[object] = []
    for operation in operations:
        try:
            match operation:
                case ("put", str(rid), str(client), (None | str()) as key, int(priority)):
                    answers.append(await store.put(row(rid, client=client, key=key, priority=priority)))
                case ("set", str(rid), "running"):
                    answers.append(await store.set_state(rid, "running"))
                case ("set", str(rid), ("completed" | "failed" | "cancelled") as state):
                    answers.append(await store.set_state(rid, state, ended(rid, state)))
                case ("get", str(rid)):
                    answers.append(await store.get(rid))
                case ("find", str(client), str(key)):
                    answers.append(await store.find_key(client, key))
                case ("list", str(client), int(limit)):
                    answers.append(await store.list_client(client, limit=limit))
                case ("unfinished",):
                    answers.append(await store.unfinished())
                case _:
                    raise AssertionError(f"unknown operation {operation!r}")
        except StoreError as error:
            answers.append(("StoreError", "already" in str(error) or "UNIQUE" in str(error)))
    return answers


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=150, deadline=None)
@given(operations=_OPERATIONS, keep=st.sampled_from([None, 1, 3]))
def test_the_store_in_memory_answers_every_call_as_the_sqlite_store_does(
    backend: str, operations: list[tuple[object, ...]], keep: int | None
) -> None:
    async def both() -> tuple[list[object], list[object]]:
        sqlite = SqliteStore.connect(MEMORY, keep_ended=keep)
        try:
            expected = await _answers(sqlite, operations)
        finally:
            sqlite.close()
        return expected, await _answers(MemoryStore(keep_ended=keep), operations)

    expected, got = anyio.run(both, backend=backend)
    assert got == expected
