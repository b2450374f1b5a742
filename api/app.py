"""The aiohttp application: every API, /metrics and /openapi.json."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import http, openapi
from engine import ratelimit
from engine.db import Database
from engine.metrics import REGISTRY
from engine.settings import Settings

log = logging.getLogger("callgate.api")

# Each API module defines API = Api(...); a module not present yet is skipped.
API_MODULES = ("api.client", "api.reseller", "api.sms", "api.esim")
# Rate-limit counters older than this are deleted, in seconds.
COUNTER_RETENTION = 24 * 3600.0
CLEANUP_INTERVAL = 600.0
OPENAPI_KEY = web.AppKey("callgate.openapi", bytes)


def installed_apis() -> list[http.Api]:
    """Import every API module present and return its Api."""
    apis = []
    for name in API_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        apis.append(module.API)
    return apis


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(REGISTRY))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[OPENAPI_KEY], content_type="application/json", charset="utf-8"
    )


async def _clean_counters(app: web.Application) -> AsyncIterator[None]:
    database = app[http.DATABASE_KEY]

    async def loop() -> None:
        while True:
            try:
                async with database.pool.acquire() as connection:
                    await ratelimit.delete_expired(connection, COUNTER_RETENTION)
            except (TimeoutError, OSError) as exc:
                log.warning("rate-limit cleanup failed: %s", exc)
            await asyncio.sleep(CLEANUP_INTERVAL)

    task = asyncio.create_task(loop(), name="rate-limit-cleanup")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(
    database: Database, settings: Settings, apis: Sequence[http.Api] | None = None
) -> web.Application:
    """Build the application serving apis (default: every installed API module)."""
    import json

    apis = list(installed_apis() if apis is None else apis)
    app = web.Application(
        middlewares=[http.middleware], client_max_size=settings.api_max_body_bytes
    )
    app[http.DATABASE_KEY] = database
    app[http.SETTINGS_KEY] = settings
    app[http.TOUCHED_KEY] = {}
    app[OPENAPI_KEY] = json.dumps(openapi.build_document(apis), indent=1).encode()
    for api in apis:
        http.mount(app, api)
        # Routes outside the ?endpoint= framework (the SMS delivery reports,
        # signed by the provider instead of an API key) come with their API.
        add_routes = getattr(sys.modules.get(f"api.{api.name}"), "add_routes", None)
        if add_routes is not None:
            add_routes(app)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_document)
    app.cleanup_ctx.append(_clean_counters)
    return app


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Return the TLS context for the API listener, or None to serve plain HTTP.

    TLS 1.2 is the lowest version accepted. A missing or unreadable file
    raises OSError or ssl.SSLError naming it, so the start fails loudly.
    """
    if not settings.tls_cert or not settings.tls_key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context
