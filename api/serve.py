"""`callgate serve`: FastAGI, the API and the background loops in one process.

Flags run any part alone, so Asterisk-facing and API nodes can scale out as
separate processes over one database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from aiohttp import web

from agi.control import NodeController, NodeStatus
from agi.fastagi import FastAGIServer
from agi.scripts import Scripts
from engine import accounts, db, demo, metrics
from engine.calls import CallService
from engine.errors import CallgateError
from engine.jobs import run_sms_queue
from engine.settings import Settings

log = logging.getLogger("callgate.serve")


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the daemon: FastAGI, the API and /metrics",
        description="Run the daemon: FastAGI, the API and /metrics.",
    )
    parser.add_argument("--no-agi", action="store_true", help="do not serve FastAGI")
    parser.add_argument(
        "--no-api", action="store_true", help="do not serve the HTTP API"
    )
    parser.add_argument(
        "--no-ami",
        action="store_true",
        help="skip call control for CALLGATE_NODE even if CALLGATE_AMI_URL is set",
    )
    parser.add_argument(
        "--seed-demo",
        action="store_true",
        help="on first start, create demo plans, accounts and API keys (printed once)",
    )
    parser.set_defaults(handler=serve)


async def _refresh_gauges(database: db.Database) -> None:
    async with database.pool.acquire() as connection:
        row = await connection.fetchrow(
            "SELECT count(*) AS live, coalesce(sum(r.amount), 0) AS reserved "
            "FROM sessions s LEFT JOIN reservations r ON r.uniqueid = s.uniqueid "
            "WHERE s.state = 'live'"
        )
    metrics.live_sessions.set(row["live"])
    metrics.reserved_amount.set(float(row["reserved"]))


async def expiry_loop(
    calls: CallService, database: db.Database, interval: float
) -> None:
    """Expire sessions past their max duration, on every daemon, forever."""
    while True:
        try:
            before = calls.unresolved_total
            expired = await calls.expire_sessions()
            metrics.unresolved_cdrs.inc(calls.unresolved_total - before)
            if expired:
                log.info("expired sessions settled: %d", expired)
            await _refresh_gauges(database)
        except (TimeoutError, OSError, CallgateError) as exc:
            log.error("session expiry failed: %s", exc)
        except Exception:
            log.exception("session expiry failed")
        await asyncio.sleep(interval)


def _print_demo(keys: demo.DemoKeys) -> None:
    print(
        "demo seeded (these keys are shown once):\n"
        f"  reseller {demo.RESELLER} API key: {keys.reseller_key}\n"
        f"  client {demo.CLIENT} API key: {keys.client_key}\n"
        f"  client {demo.CLIENT} SIP password: {keys.client_sip_password}\n"
        f"  operator client {demo.OPERATOR_CLIENT} API key: "
        f"{keys.operator_client_key}\n"
        f"try: callgate call --sip {demo.CLIENT} --number 442079460000 --talk 61",
        flush=True,
    )


async def _start_api(
    database: db.Database, settings: Settings, calls: CallService
) -> web.AppRunner:
    from api.app import create_app, ssl_context

    app = create_app(database, settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = settings.api_listen
    site = web.TCPSite(
        runner, host, port, ssl_context=ssl_context(settings), reuse_address=True
    )
    await site.start()
    return runner


async def _start_metrics_only(settings: Settings) -> web.AppRunner | None:
    if settings.metrics_listen is None:
        return None
    from prometheus_client import generate_latest

    async def serve_metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.REGISTRY), content_type="text/plain"
        )

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = settings.metrics_listen
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner


async def _wait_stop(stop: asyncio.Event, background: list[asyncio.Task[None]]) -> None:
    """Wait for a stop signal; a background loop that dies stops the daemon too."""
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait(
        [stopping, *background], return_when=asyncio.FIRST_COMPLETED
    )
    stopping.cancel()
    for task in done:
        if task is not stopping and not task.cancelled() and task.exception():
            log.error("%s stopped: %s", task.get_name(), task.exception())
            raise CallgateError(f"{task.get_name()} stopped: {task.exception()}")


async def serve(args: argparse.Namespace, settings: Settings) -> int:
    url = await asyncio.to_thread(db.database_url, settings)
    await db.migrate_url(url)
    database = await db.Database.connect(url, max_size=settings.db_pool_size)
    database.observers.append(metrics.observe_query)
    async with database.transaction() as connection:
        await accounts.ensure_admin(connection, settings.currency)
        if args.seed_demo:
            keys = await demo.seed_demo(
                connection, settings.currency, settings.default_markup
            )
            if keys is not None:
                _print_demo(keys)

    status = NodeStatus(database)
    calls = CallService(database, settings, interval_mode=status.connected)
    scripts = Scripts(calls)
    background: list[asyncio.Task[None]] = [
        asyncio.create_task(status.run(), name="node-status")
    ]
    if settings.ami_url and not args.no_ami:
        controller = NodeController(database, settings, calls, settings.node)
        background.append(asyncio.create_task(controller.run(), name="call-control"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    agi_server: FastAGIServer | None = None
    runners: list[web.AppRunner] = []
    try:
        if not args.no_agi:
            agi_server = FastAGIServer(
                scripts.handlers,  # type: ignore[arg-type]
                deadline=settings.agi_deadline,
                max_sessions=settings.agi_max_sessions,
                max_header_bytes=settings.agi_max_header_bytes,
                on_session_end=lambda script, outcome, _seconds: (
                    metrics.agi_sessions.labels(script, outcome).inc()
                ),
            )
            await agi_server.start(*settings.agi_listen)
        if not args.no_api:
            runners.append(await _start_api(database, settings, calls))
        else:
            metrics_runner = await _start_metrics_only(settings)
            if metrics_runner is not None:
                runners.append(metrics_runner)
        parts = []
        if agi_server is not None:
            parts.append(f"agi={settings.agi_listen[0]}:{agi_server.port}")
        if not args.no_api:
            parts.append(f"api={settings.api_listen[0]}:{settings.api_listen[1]}")
        log.info("callgate ready %s", " ".join(parts))
        print(f"callgate ready {' '.join(parts)}", flush=True)

        background.append(
            asyncio.create_task(
                expiry_loop(calls, database, settings.expiry_interval), name="expiry"
            )
        )
        # Scheduled and bulk SMS: every daemon runs a worker; SKIP LOCKED
        # claims make each message go out once.
        sms_queue = asyncio.create_task(
            run_sms_queue(database, settings, stop), name="sms-queue"
        )
        background.append(sms_queue)
        await _wait_stop(stop, background)
        log.info("callgate stopping")
        # The queue returns by itself once stop is set, closing its providers.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(sms_queue), timeout=10)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if agi_server is not None:
            await agi_server.close()
        await scripts.wait_cleanups()
        for runner in runners:
            await runner.cleanup()
        await database.close()
    return 0
