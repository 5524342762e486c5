"""Where the example server keeps what it accepted, so that a restart loses nothing.

:class:`RequestStore` is the interface (a server can plug PostgreSQL behind it); :class:`SqliteStore` is the
embedded default: one SQLite file in WAL mode (``synchronous=NORMAL``: a committed write survives the process
being killed). Its calls run in order, in batches: the calls made in one turn of the event loop (and those made
while a batch runs) share one transaction, one commit, and each caller hears back once its batch committed. A
batch runs on the event loop, since a commit in WAL mode appends to the log and syncs nothing (a thread hop per
batch cost more than the batch, and under load the thread waited for a CPU); what syncs the file, copying the log
into the database (a checkpoint, every :data:`CHECKPOINT_WRITES` writes), runs in a worker thread while the next
calls wait. ``":memory:"`` is a :class:`MemoryStore`, for tests and for servers that want no file: the same
answers from dictionaries, with nothing to sync, so each call answers at once and its caller goes on without a
task switch. It keeps the latest :data:`MEMORY_KEEP_ENDED` requests to end (``keep_ended``), and every one that
has not ended, so that it does not grow for the life of the process. A store file keeps everything.

A request is stored when it is accepted (before the client hears its id), marked ``running`` just before its run
starts, and given its final status once when it ends; an ended request never changes again. Rows a file gives
back are decoded and validated like any outside input: a damaged row is a :class:`~vramgate.errors.DecodeError`
naming the store and the request.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol, TypeVar, cast

import anyio
import anyio.lowlevel
import msgspec

from vramgate.errors import ConfigError, DecodeError, SystemFault
from vramgate.messages import GenerationRequest
from vramgate.server.schema import TERMINAL, GenerationStatus, Status

T = TypeVar("T")
log = logging.getLogger("vramgate.server")

#: Version of the tables; a store written by another version is refused rather than misread.
STORE_SCHEMA_VERSION = 1
MEMORY = ":memory:"
#: How many ended requests an in-memory store keeps by default (those that ended last); unfinished ones are all kept.
MEMORY_KEEP_ENDED = 10_000
#: A store file's write-ahead log is checkpointed (in a worker thread) after this many calls; SQLite's own
#: checkpoint, which would sync the file inside a commit on the event loop, is off.
CHECKPOINT_WRITES = 2000


class StoreError(SystemFault):
    """The store could not read or write (disk full, file removed, database locked for too long)."""


class StoredRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One accepted request as the store keeps it.

    ``request`` carries the server's id; ``fingerprint`` identifies the body it was accepted with (an idempotent
    retry must match it); ``status`` is the final status, once it ended; ``seq`` is the order of acceptance.
    """

    request_id: str
    request: GenerationRequest
    client: str = ""
    idempotency_key: str | None = None
    fingerprint: str = ""
    state: Status = "queued"
    status: GenerationStatus | None = None
    seq: int = 0

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL

    def view(self) -> GenerationStatus:
        """What a client sees of it when the server holds nothing more: its final status, else its state."""
        if self.status is not None:
            return self.status
        return GenerationStatus(request_id=self.request_id, state=self.state)


class RequestStore(Protocol):
    """What the server needs from a durable store. Every call may wait (I/O); none may lose a committed write."""

    async def put(self, row: StoredRequest) -> StoredRequest:
        """Keep a newly accepted request and return it. When its client already used its idempotency key, keep
        nothing and return the request that holds the key. A caller cancelled while it waits may leave the row
        kept or not: a :meth:`get` made after it tells which."""
        ...

    async def get(self, request_id: str) -> StoredRequest | None: ...

    async def find_key(self, client: str, key: str) -> StoredRequest | None:
        """The request ``client`` sent with idempotency key ``key``."""
        ...

    async def set_state(self, request_id: str, state: Status, final: GenerationStatus | None = None) -> bool:
        """Mark a request ``running``, or end it with its ``final`` status. An ended request does not change:
        the answer is then ``False``."""
        ...

    async def list_client(self, client: str, *, limit: int = 100) -> list[StoredRequest]:
        """A client's latest ``limit`` requests, newest first."""
        ...

    async def unfinished(self) -> list[StoredRequest]:
        """Every request that has not ended, in the order it was accepted."""
        ...

    async def aclose(self) -> None: ...


def fingerprint(request: GenerationRequest) -> str:
    """A digest of what a request asks for (its id aside): two bodies that decode alike have the same one."""
    canonical = msgspec.json.encode(msgspec.structs.replace(request, request_id=""))
    return hashlib.sha256(canonical).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    client TEXT NOT NULL,
    idempotency_key TEXT,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    request BLOB NOT NULL,
    status BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS requests_by_key ON requests (client, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS requests_by_client ON requests (client, seq);
CREATE INDEX IF NOT EXISTS requests_unfinished ON requests (seq) WHERE state IN ('preflight', 'queued', 'running');
"""
_COLUMNS = "seq, request_id, client, idempotency_key, fingerprint, state, request, status"
_Row = tuple[int, str, str, "str | None", str, str, bytes, "bytes | None"]
_STATES: frozenset[str] = frozenset({"preflight", "queued", "running"} | TERMINAL)
#: A request's new state (and final status), unless it had ended.
_UPDATE = "UPDATE requests SET state = ?, status = ? WHERE request_id = ? AND state NOT IN ({})".format(
    ", ".join(f"'{state}'" for state in sorted(TERMINAL))
)


class _Call:
    """One call waiting for its batch, and what it returned or raised; ``event`` is its batch's (set once the
    batch committed; ``None`` for a call run at once)."""

    __slots__ = ("args", "error", "event", "function", "result")

    def __init__(self, function: Callable[..., object], args: tuple[object, ...], event: anyio.Event | None) -> None:
        self.function = function
        self.args = args
        self.result: object = None
        self.error: Exception | None = None
        self.event = event

    def outcome(self) -> object:
        """What the call returned (its error raised)."""
        if self.error is not None:
            raise self.error
        return self.result


class SqliteStore:
    """:class:`RequestStore` on SQLite (stdlib ``sqlite3``). Use :func:`open_store`."""

    def __init__(self, connection: sqlite3.Connection, path: str, *, keep_ended: int | None = None) -> None:
        _check_keep(keep_ended)
        self.path = path
        #: At most this many ended requests are kept (those that ended last while this store was open).
        self.keep_ended = keep_ended
        self._ended: collections.deque[str] = collections.deque()
        self._db = connection
        self._lock = threading.Lock()
        self._pending: list[_Call] = []
        self._flushing = False
        self._since_checkpoint = 0
        self._batch_done: anyio.Event | None = None  # the pending calls' batch: set once it committed
        self._immediate = path == MEMORY  # nothing to sync or share a commit for: each call runs at once
        self._request_encoder = msgspec.json.Encoder()

    @classmethod
    def connect(cls, path: str | Path, *, keep_ended: int | None = None) -> SqliteStore:
        """Open (or create) the store at ``path``; a file that is not a store of this version is a ConfigError.
        ``":memory:"`` opens a SQLite database in memory whose calls run at once (:func:`open_store` gives a
        :class:`MemoryStore` for that path).
        With ``keep_ended``, a request that ends drops the one that ended longest ago beyond that many."""
        _check_keep(keep_ended)
        where = str(path)
        if where != MEMORY and not Path(where).parent.is_dir():
            raise ConfigError(f"{where}: the directory for the request store does not exist")
        try:
            db = sqlite3.connect(where, check_same_thread=False, isolation_level=None, timeout=2.0)
        except sqlite3.Error as error:
            raise ConfigError(f"{where}: cannot open the request store: {error}") from None
        try:
            _prepare(db, where)
        except sqlite3.OperationalError as error:
            db.close()
            if "locked" in str(error):
                raise ConfigError(f"{where}: another server is using this request store") from None
            raise ConfigError(f"{where}: not a usable request store: {error}") from None
        except sqlite3.Error as error:
            db.close()
            raise ConfigError(f"{where}: not a usable request store: {error}") from None
        except BaseException:
            db.close()
            raise
        return cls(db, where, keep_ended=keep_ended)

    # ------------------------------------------------------------------ RequestStore

    async def put(self, row: StoredRequest) -> StoredRequest:
        return await self._call(self._put, row)

    async def get(self, request_id: str) -> StoredRequest | None:
        rows = await self._call(self._select, "request_id = ?", (request_id,), "")
        return rows[0] if rows else None

    async def find_key(self, client: str, key: str) -> StoredRequest | None:
        rows = await self._call(self._select, "client = ? AND idempotency_key = ?", (client, key), "")
        return rows[0] if rows else None

    async def set_state(self, request_id: str, state: Status, final: GenerationStatus | None = None) -> bool:
        _check_state(state, final)
        status = msgspec.json.encode(final) if final is not None else None
        return await self._call(self._update, request_id, state, status)

    async def list_client(self, client: str, *, limit: int = 100) -> list[StoredRequest]:
        return await self._call(self._select, "client = ?", (client,), f"ORDER BY seq DESC LIMIT {int(limit)}")

    async def unfinished(self) -> list[StoredRequest]:
        where = "state IN ('preflight', 'queued', 'running')"
        return await self._call(self._select, where, (), "ORDER BY seq")

    async def aclose(self) -> None:
        await self._call(lambda: None)  # after every call made before this one
        await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        """Close the connection (what :meth:`aclose` does, without waiting for calls in flight)."""
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ batches

    async def _call(self, function: Callable[..., T], *args: object) -> T:
        """Run ``function(*args)`` in call order, in a batch with the calls made in the same turn of the event
        loop (and those made while a batch runs): one transaction, one commit for all of them. In memory, where a
        commit writes nothing, at once: the caller does not wait (no task switch)."""
        if self._immediate:
            call = _Call(function, args, None)
            self._run_batch([call])
            return cast("T", call.outcome())
        if not self._pending or self._batch_done is None:
            self._batch_done = anyio.Event()
        done = self._batch_done
        call = _Call(function, args, done)
        self._pending.append(call)
        if not self._flushing:
            self._flushing = True
            try:
                with anyio.CancelScope(shield=True):  # the batch is everyone's: it runs to the end
                    await anyio.lowlevel.checkpoint()  # the other calls of this turn of the event loop join it
                    while self._pending:
                        batch, self._pending = self._pending, []
                        self._run_batch(batch)
                        cast("anyio.Event", batch[0].event).set()
                        self._since_checkpoint += len(batch)
                        if self._since_checkpoint >= CHECKPOINT_WRITES:
                            self._since_checkpoint = 0
                            await anyio.to_thread.run_sync(self._checkpoint)
            finally:
                self._flushing = False
        await done.wait()
        return cast("T", call.outcome())

    def _run_batch(self, batch: list[_Call]) -> None:
        with self._lock:
            transaction = self._db.in_transaction is False and len(batch) > 1
            try:
                if transaction:
                    self._db.execute("BEGIN")
                for call in batch:
                    try:
                        call.result = call.function(*call.args)
                    except sqlite3.Error as error:
                        call.error = StoreError(f"{self.path}: {error}")
                    except Exception as error:
                        call.error = error
                if transaction:
                    self._db.execute("COMMIT")
            except sqlite3.Error as error:  # the commit failed: none of the batch's writes were kept
                for call in batch:
                    call.error = StoreError(f"{self.path}: {error}")
                if self._db.in_transaction:
                    self._db.rollback()

    def _checkpoint(self) -> None:
        """Copy the write-ahead log into the database file and sync it (in a worker thread)."""
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as error:  # the log keeps the writes; the next checkpoint tries again
                log.warning("%s: checkpoint failed: %s", self.path, error)

    def _put(self, row: StoredRequest) -> StoredRequest:
        status = msgspec.json.encode(row.status) if row.status is not None else None
        values = (row.request_id, row.client, row.idempotency_key, row.fingerprint, row.state)
        try:
            cursor = self._db.execute(
                "INSERT INTO requests (request_id, client, idempotency_key, fingerprint, state, request, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*values, self._request_encoder.encode(row.request), status),
            )
        except sqlite3.IntegrityError:
            if row.idempotency_key is not None:
                held = self._select("client = ? AND idempotency_key = ?", (row.client, row.idempotency_key), "")
                if held:
                    return held[0]
            raise
        seq = cursor.lastrowid
        assert seq is not None
        return msgspec.structs.replace(row, seq=seq)

    def _update(self, request_id: str, state: str, status: bytes | None) -> bool:
        cursor = self._db.execute(_UPDATE, (state, status, request_id))
        changed = cursor.rowcount == 1
        if changed and self.keep_ended is not None and state in TERMINAL:
            self._ended.append(request_id)
            while len(self._ended) > self.keep_ended:
                self._db.execute("DELETE FROM requests WHERE request_id = ?", (self._ended.popleft(),))
        return changed

    def _select(self, where: str, args: tuple[object, ...], tail: str) -> list[StoredRequest]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM requests WHERE {where} {tail}", args).fetchall()
        return [self._decode(row) for row in rows]

    def _decode(self, row: _Row) -> StoredRequest:
        seq, request_id, client, key, digest, state, request, status = row
        source = f"{self.path} (request {request_id})"
        try:
            return StoredRequest(
                request_id=request_id,
                request=msgspec.json.decode(request, type=GenerationRequest),
                client=client,
                idempotency_key=key,
                fingerprint=digest,
                state=msgspec.convert(state, Status),
                status=msgspec.json.decode(status, type=GenerationStatus) if status is not None else None,
                seq=seq,
            )
        except msgspec.ValidationError as error:
            raise DecodeError(str(error), source=source) from None
        except msgspec.DecodeError as error:
            raise DecodeError(f"malformed row: {error}", source=source) from None


class MemoryStore:
    """:class:`RequestStore` in this process's memory (``":memory:"``): nothing survives the process.

    It answers as a :class:`SqliteStore` would, from dictionaries: each call at once, without a task switch. It
    keeps the latest ``keep_ended`` requests to end (every one, with ``None``) and every request that has not
    ended."""

    def __init__(self, *, keep_ended: int | None = MEMORY_KEEP_ENDED) -> None:
        _check_keep(keep_ended)
        self.path = MEMORY
        #: At most this many ended requests are kept (those that ended last).
        self.keep_ended = keep_ended
        self._rows: dict[str, StoredRequest] = {}  # in the order they were accepted
        self._keys: dict[tuple[str, str], str] = {}  # (client, idempotency key) -> request id
        self._by_client: dict[str, dict[str, None]] = {}  # each client's request ids, in the order accepted
        self._ended: collections.deque[str] = collections.deque()
        self._seq = 0

    async def put(self, row: StoredRequest) -> StoredRequest:
        key = row.idempotency_key
        if key is not None:
            held = self._keys.get((row.client, key))
            if held is not None:
                return self._rows[held]
        if row.request_id in self._rows:
            raise StoreError(f"{MEMORY}: a request with id {row.request_id} is already kept")
        self._seq += 1
        row = msgspec.structs.replace(row, seq=self._seq)
        self._rows[row.request_id] = row
        if key is not None:
            self._keys[(row.client, key)] = row.request_id
        self._by_client.setdefault(row.client, {})[row.request_id] = None
        return row

    async def get(self, request_id: str) -> StoredRequest | None:
        return self._rows.get(request_id)

    async def find_key(self, client: str, key: str) -> StoredRequest | None:
        held = self._keys.get((client, key))
        return self._rows[held] if held is not None else None

    async def set_state(self, request_id: str, state: Status, final: GenerationStatus | None = None) -> bool:
        _check_state(state, final)
        row = self._rows.get(request_id)
        if row is None or row.ended:
            return False
        self._rows[request_id] = msgspec.structs.replace(row, state=state, status=final)
        if final is not None and self.keep_ended is not None:
            self._ended.append(request_id)
            while len(self._ended) > self.keep_ended:
                self._drop(self._ended.popleft())
        return True

    async def list_client(self, client: str, *, limit: int = 100) -> list[StoredRequest]:
        ids = self._by_client.get(client, {})
        return [self._rows[rid] for rid in itertools.islice(reversed(ids), max(0, int(limit)))]

    async def unfinished(self) -> list[StoredRequest]:
        return [row for row in self._rows.values() if not row.ended]

    async def aclose(self) -> None:
        return None

    def _drop(self, request_id: str) -> None:
        row = self._rows.pop(request_id)
        if row.idempotency_key is not None:
            del self._keys[(row.client, row.idempotency_key)]
        ids = self._by_client[row.client]
        del ids[request_id]
        if not ids:
            del self._by_client[row.client]


def _check_state(state: str, final: GenerationStatus | None) -> None:
    if state not in _STATES:
        raise ValueError(f"unknown state {state!r}")
    if (state in TERMINAL) != (final is not None):
        raise ValueError("a terminal state needs its final status, and only a terminal state has one")


def _check_keep(keep_ended: int | None) -> None:
    if keep_ended is not None and keep_ended < 1:
        raise ValueError(f"keep_ended must be at least 1 (or None: keep every ended request), not {keep_ended}")


def _prepare(db: sqlite3.Connection, where: str) -> None:
    """WAL mode, and the tables: created in a new file, checked in an old one."""
    if where != MEMORY:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")  # one server per store: a second one is refused, not mixed in
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run in a worker thread (SqliteStore._call)
    db.execute("PRAGMA synchronous=NORMAL")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    if version == 0 and tables == 0:
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version = {STORE_SCHEMA_VERSION}")
    elif version != STORE_SCHEMA_VERSION:
        raise ConfigError(f"{where}: not a vramgate request store of version {STORE_SCHEMA_VERSION} (found {version})")


@asynccontextmanager
async def open_store(
    path: str | Path = MEMORY, *, keep_ended: int | None = None
) -> AsyncIterator[SqliteStore | MemoryStore]:
    """Open the SQLite store file at ``path`` (``":memory:"``: a :class:`MemoryStore`) for the block; close it
    after.

    ``keep_ended`` bounds the ended requests kept (default: :data:`MEMORY_KEEP_ENDED` in memory, every one in a
    file)."""
    if str(path) == MEMORY:
        yield MemoryStore(keep_ended=MEMORY_KEEP_ENDED if keep_ended is None else keep_ended)
        return
    store = await anyio.to_thread.run_sync(functools.partial(SqliteStore.connect, path, keep_ended=keep_ended))
    try:
        yield store
    finally:
        with anyio.CancelScope(shield=True):
            await store.aclose()
