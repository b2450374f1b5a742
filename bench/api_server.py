"""Serve the Client API on a throwaway embedded PostgreSQL, for benchmarks and fuzzing.

Run as `python bench/api_server.py [--port N]`. It starts PostgreSQL (pgserver)
in a temporary directory, migrates it, creates one client with 100 CDRs and an
API key, listens on 127.0.0.1 and prints one JSON line: {"url": ..., "key": ...}.
It stops, deleting the database, when its standard input closes or on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api import client
from api.app import create_app
from engine import accounts, db, plans
from engine.secrets import hash_api_key, new_api_key
from engine.settings import load_settings

LOGIN = "1234567801"
CDRS = 100

INSERT_CDR = """
INSERT INTO cdrs (uniqueid, account_id, sip_name, number, destination, callerid,
    started_at, answered_seconds, billed_seconds, cost, source)
VALUES ($1, $2, $3, '15555550101', 'USA', $3, $4, 60, 60, 0.010000, 'agi')
"""

INSERT_KEY = """
INSERT INTO api_keys (account_id, key_hash, label) VALUES ($1, $2, 'bench')
"""


async def seed(database: db.Database) -> str:
    """Create a plan, one client with CDRs and an API key; return the key."""
    key = new_api_key()
    async with database.transaction() as connection:
        plan_id = await plans.create_plan(
            connection, "standard", plans.PlanOptions(signup=True)
        )
        created = await accounts.create_account(
            connection,
            kind="client",
            currency="EUR",
            login=LOGIN,
            plan_id=plan_id,
            balance=Decimal("10"),
        )
        started = datetime(2031, 5, 9, tzinfo=UTC)
        for index in range(CDRS):
            await connection.execute(
                INSERT_CDR,
                f"bench-{index}",
                created.id,
                LOGIN,
                started + timedelta(minutes=index),
            )
        await connection.execute(
            INSERT_KEY,
            created.id,
            hash_api_key(key),
        )
    return key


async def serve(port: int, log_file: Path) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="callgate-bench-"))
    logging.basicConfig(
        filename=log_file,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    import pgserver

    server = pgserver.get_server(data_dir, cleanup_mode="delete")
    try:
        url = server.get_uri()
        await db.migrate_url(url)
        database = await db.Database.connect(url, max_size=20)
        key = await seed(database)
        settings = load_settings(
            {
                "CALLGATE_DATABASE_URL": url,
                "CALLGATE_DATA_DIR": str(data_dir),
                # The fuzzer sends many invalid requests from one address.
                "CALLGATE_AUTH_FAILURE_LIMIT": "1000000",
                "CALLGATE_VOUCHER_LIMIT": "1000000",
            }
        )
        # callgate writes its own access-log line; aiohttp's would be a second one.
        app = create_app(database, settings, [client.API])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        bound = runner.addresses[0][1]
        print(json.dumps({"url": f"http://127.0.0.1:{bound}", "key": key}), flush=True)
        await wait_for_stop()
        await runner.cleanup()
        await database.close()
    finally:
        server.cleanup()


async def wait_for_stop() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    eof = asyncio.create_task(reader.read())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({eof, stopped}, return_when=asyncio.FIRST_COMPLETED)
    eof.cancel()
    stopped.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port; 0 picks a free one"
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=Path(tempfile.gettempdir()) / "callgate-bench-api.log",
        help="where the API's access log goes",
    )
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.log_file))


if __name__ == "__main__":
    main()
