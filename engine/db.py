"""Database access: the connection pool, the embedded PostgreSQL and migrations."""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg

from engine.errors import DatabaseError
from engine.settings import Settings

log = logging.getLogger("callgate.db")

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# Any fixed 64-bit number works; it only has to be the same in every process.
MIGRATION_LOCK_KEY = 0x63616C6C67617465  # "callgate"

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under data_dir; return its URL."""
    with warnings.catch_warnings():
        # platformdirs warns about an unset XDG_RUNTIME_DIR on import; the
        # embedded server does not use that directory.
        warnings.simplefilter("ignore")
        import pgserver

    pgdata = (data_dir / "pgdata").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # "stop": the server stops when the last process using it (daemon
            # or CLI) exits, instead of outliving them.
            server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    except Exception as exc:  # pgserver raises plain exceptions on start failure
        raise DatabaseError(
            f"cannot start the embedded PostgreSQL in {pgdata}: {exc}"
        ) from exc
    url: str = server.get_uri()
    log.info("embedded PostgreSQL running, data in %s", pgdata)
    return url


def database_url(settings: Settings) -> str:
    """Return the configured URL, starting the embedded server when none is set."""
    if settings.database_url:
        return settings.database_url
    return start_embedded(settings.data_dir)


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.execute("SET TIME ZONE 'UTC'")


async def _keep_session_state(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's reset round trip on release: callgate sets no session
    state (no LISTEN, no session advisory lock) on pooled connections."""


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 20) -> Pool:
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min(min_size, max_size),
            max_size=max_size,
            init=_init_connection,
            reset=_keep_session_state,
            command_timeout=30,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to the database: {exc}") from exc
    if pool is None:  # only when the pool is created inside a generator
        raise DatabaseError("cannot connect to the database")
    return pool


def migration_files() -> list[Path]:
    return sorted(SQL_DIR.glob("[0-9][0-9][0-9]_*.sql"))


async def migrate(connection: asyncpg.Connection) -> list[str]:
    """Apply every migration not yet applied; return the names applied now.

    A session-level advisory lock makes two processes that migrate at once
    take turns, and each file runs in its own transaction.
    """
    applied_now: list[str] = []
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            row["version"]
            for row in await connection.fetch("SELECT version FROM schema_migrations")
        }
        for path in migration_files():
            if path.name in done:
                continue
            async with connection.transaction():
                await connection.execute(path.read_text(encoding="utf-8"))
                await connection.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)", path.name
                )
            applied_now.append(path.name)
            log.info("migration applied: %s", path.name)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def migrate_url(url: str) -> list[str]:
    try:
        connection = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to the database: {exc}") from exc
    try:
        return await migrate(connection)
    finally:
        await connection.close()


class Database:
    """A pool plus query timing, shared by every part of the process."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.observers: list[Any] = []

    @classmethod
    async def connect(cls, url: str, *, max_size: int = 20) -> Database:
        return cls(await create_pool(url, max_size=max_size))

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as connection, connection.transaction():
            yield connection

    @asynccontextmanager
    async def timed(self, name: str) -> AsyncIterator[None]:
        """Time a named unit of database work for the query-latency metric."""
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            for observe in self.observers:
                observe(name, elapsed)


async def wait_for_database(url: str, timeout: float = 30.0) -> None:
    """Retry connecting until the server answers or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = await asyncpg.connect(url)
        except (OSError, asyncpg.PostgresError) as exc:
            if time.monotonic() > deadline:
                raise DatabaseError(f"database not reachable: {exc}") from exc
            await asyncio.sleep(0.5)
        else:
            await connection.close()
            return
