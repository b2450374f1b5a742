"""Debit-loop benchmark: 5,000 live answered sessions on a 60 s debit interval.

Seeds the world deck and 1,000 clients on an embedded PostgreSQL, authorizes
5,000 calls with the node's AMI link up (so each reserves its first block),
answers them all over a scripted AMI peer on 127.0.0.1, then lets the node
controller fund them interval by interval for a measuring window. Prints the
CPU share of one core the controller's process used in that window (its own
user+system time over wall time; PostgreSQL's time is not in it) and the
process RSS.

Usage: python bench/debit_loop.py [--sessions 5000] [--interval 60] [--seconds 90]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agi.control import NodeController, NodeStatus  # noqa: E402
from bench.callpath import NUMBERS, seed, start_database  # noqa: E402
from engine import db  # noqa: E402
from engine.calls import AuthorizeRequest, CallService  # noqa: E402
from engine.settings import load_settings  # noqa: E402
from tests.test_call_control import FakeAsterisk  # noqa: E402

NODE = "bench1"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--interval", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=90)
    args = parser.parse_args()

    server, url, _ = await start_database("cgdebit")
    clients = await seed(url)

    asterisk = FakeAsterisk()
    port = await asterisk.start()
    settings = load_settings(
        {
            "CALLGATE_DATABASE_URL": url,
            "CALLGATE_AMI_URL": f"ami://callgate:secret@127.0.0.1:{port}",
            "CALLGATE_NODE": NODE,
            "CALLGATE_DEBIT_INTERVAL": str(args.interval),
            "CALLGATE_LOG_LEVEL": "WARNING",
        }
    )
    database = await db.Database.connect(url, max_size=20)
    status = NodeStatus(database)
    calls = CallService(database, settings, interval_mode=status.connected)
    controller = NodeController(database, settings, calls, NODE)
    control = asyncio.create_task(controller.run())
    while not controller.connected:
        await asyncio.sleep(0.05)
    await status.refresh()

    print(f"authorizing {args.sessions} calls ...", flush=True)
    uniqueids: list[tuple[str, str]] = []

    async def authorize(worker: int) -> None:
        for index in range(worker, args.sessions, 20):
            uniqueid = f"{NODE}-1796390000.{index}"
            channel = f"PJSIP/{random.choice(clients)}-{index:08x}"
            result = await calls.authorize(
                AuthorizeRequest(uniqueid, channel, random.choice(NUMBERS))
            )
            if result.status == "OK" and result.reserve_mode == "interval":
                uniqueids.append((uniqueid, channel))

    await asyncio.gather(*(authorize(worker) for worker in range(20)))
    print(f"answering {len(uniqueids)} calls ...", flush=True)
    for uniqueid, channel in uniqueids:
        asterisk.channels[uniqueid] = channel
        asterisk.emit(Event="DialBegin", Channel=channel, Uniqueid=uniqueid)
        asterisk.emit(
            Event="DialEnd",
            Channel=channel,
            Uniqueid=uniqueid,
            DialStatus="ANSWER",
            Timestamp=f"{time.time():.6f}",
        )
    while sum(c.answered_at is not None for c in controller.tracked.values()) < len(
        uniqueids
    ):
        await asyncio.sleep(0.2)
    print(f"measuring {args.seconds:.0f} s ...", flush=True)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    wall_before = time.monotonic()
    await asyncio.sleep(args.seconds)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    wall = time.monotonic() - wall_before

    async with database.pool.acquire() as connection:
        funded = await connection.fetchval(
            "SELECT count(*) FROM sessions"
            " WHERE state = 'live' AND funded_seconds > $1",
            args.interval,
        )
    print(f"live answered sessions: {len(uniqueids)}, debit interval {args.interval} s")
    print(f"sessions funded past their first interval: {funded}")
    print(
        f"controller process CPU: {100 * cpu / wall:.1f} % of one core"
        f" over {wall:.0f} s"
    )
    print(f"controller process RSS: {rss_mb():.0f} MB")

    control.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await control
    await database.close()
    await asterisk.close()
    server.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
