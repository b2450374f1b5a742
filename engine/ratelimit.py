"""Abuse limits counted in the `rate_limits` table, shared by every process.

Each counter is a fixed window: the first hit opens it, and hits after the
window has passed start a new one. The table is used instead of an in-process
counter because callgate runs as any number of stateless processes behind one
database, and a limit counted per process would multiply by their number.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from engine.errors import RateLimited

HIT = """
INSERT INTO rate_limits AS r (key, window_start, hits)
VALUES ($1, now(), 1)
ON CONFLICT (key) DO UPDATE
SET window_start = CASE
        WHEN r.window_start <= now() - make_interval(secs => $2) THEN now()
        ELSE r.window_start
    END,
    hits = CASE
        WHEN r.window_start <= now() - make_interval(secs => $2) THEN 1
        ELSE r.hits + 1
    END
RETURNING hits,
    greatest(1, ceil(extract(epoch FROM
        window_start + make_interval(secs => $2) - now())))::integer AS retry_after
"""

CURRENT = """
SELECT hits,
    greatest(1, ceil(extract(epoch FROM
        window_start + make_interval(secs => $2) - now())))::integer AS retry_after
FROM rate_limits
WHERE key = $1 AND window_start > now() - make_interval(secs => $2)
"""

DELETE_EXPIRED = """
DELETE FROM rate_limits
WHERE window_start < now() - make_interval(secs => $1)
"""


@dataclass(frozen=True)
class Count:
    """Hits in the current window and the seconds until that window ends."""

    hits: int
    retry_after: int


async def hit(connection: asyncpg.Connection, key: str, window: float) -> Count:
    """Count one hit on key in its current window and return the new count."""
    row = await connection.fetchrow(HIT, key, window)
    return Count(int(row["hits"]), int(row["retry_after"]))


async def current(connection: asyncpg.Connection, key: str, window: float) -> Count:
    """Return the hits on key in its current window, without counting one."""
    row = await connection.fetchrow(CURRENT, key, window)
    if row is None:
        return Count(0, 0)
    return Count(int(row["hits"]), int(row["retry_after"]))


def limited(what: str, count: Count) -> RateLimited:
    """Return the RateLimited error for a counter that reached its limit."""
    return RateLimited(
        f"too many {what}; retry after {count.retry_after} s", count.retry_after
    )


async def hit_within(
    connection: asyncpg.Connection, key: str, limit: int, window: float, what: str
) -> None:
    """Count one hit and raise RateLimited once more than limit fall in a window."""
    count = await hit(connection, key, window)
    if count.hits > limit:
        raise RateLimited(
            f"too many {what}: at most {limit} per {window:g} s; "
            f"retry after {count.retry_after} s",
            count.retry_after,
        )


async def delete_expired(connection: asyncpg.Connection, older_than: float) -> int:
    """Delete counters whose window started more than older_than seconds ago."""
    status = await connection.execute(DELETE_EXPIRED, older_than)
    return int(status.split()[-1])
