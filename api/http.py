"""The HTTP framework every callgate API shares.

An `Api` describes one JSON API of the reference document: its path prefix,
its envelope and its endpoints. `mount` routes `/<api>/index.php?endpoint=NAME`
and the alias `/<api>/NAME` to the same handler, authenticates the
`X-API-Key` header and turns domain errors into the API's error envelope.
`middleware` writes one access-log line and the metrics of every request and
turns any unexpected exception into a generic 503 in the same envelope, so no
request gets a stack trace or a 500.
"""

from __future__ import annotations

import codecs
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import asyncpg
import simplejson
from aiohttp import web

from engine import apikeys, ratelimit
from engine.apikeys import Caller
from engine.db import Database
from engine.errors import Conflict, Forbidden, InvalidInput, NotFound, RateLimited
from engine.metrics import api_request_seconds, api_requests
from engine.rating import format_money
from engine.settings import Settings

log = logging.getLogger("callgate.api")

Envelope = Literal["data", "named", "flat"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_API_KEY_LENGTH = 256
# How often one process records an API key's last use, in seconds.
TOUCH_INTERVAL = 60.0
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

DATABASE_KEY = web.AppKey("callgate.database", Database)
SETTINGS_KEY = web.AppKey("callgate.settings", Settings)
TOUCHED_KEY = web.AppKey("callgate.touched", dict)


@dataclass
class RequestInfo:
    """Per-request fields for the access log and the metrics."""

    request_id: str
    started: float
    api: str = "none"
    endpoint: str = "unknown"
    key_id: int | None = None


INFO_KEY = web.RequestKey("callgate.request", RequestInfo)


class ApiError(Exception):
    """An HTTP error, returned in the API's error envelope."""

    def __init__(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        super().__init__(message)


@dataclass(frozen=True)
class Reply:
    """A handler's success result: the payload, an optional message and extras.

    For a `data` envelope the payload goes under "data". For `named` and
    `flat` envelopes it must be a mapping whose keys go to the top level.
    `extra` keys always go to the top level (a warning, for example).
    """

    data: Any = None
    message: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    status: int = 200


@dataclass(frozen=True)
class QueryParameter:
    name: str
    schema: Mapping[str, Any]
    description: str


Handler = Callable[["Context"], Awaitable[Reply]]


@dataclass(frozen=True)
class Endpoint:
    """One endpoint: its name, methods, handler and the schemas of its wire format."""

    name: str
    methods: frozenset[str]
    handler: Handler
    summary: str
    response: Mapping[str, Any]
    body: Mapping[str, Any] | None = None
    query: tuple[QueryParameter, ...] = ()
    # Top-level response fields besides the payload: name -> schema.
    top_level: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class Api:
    """One JSON API: name, path prefix, envelope style and endpoints.

    Envelopes: `data` is `{"success": true, "data": ...}` (client API),
    `named` is `{"ok": true, <named keys>}` (reseller API) and `flat` is
    `{"success": true, <fields>}` (SMS and eSIM APIs). Errors set the flag to
    false and carry an `error` message.
    """

    def __init__(
        self,
        name: str,
        prefix: str,
        *,
        envelope: Envelope,
        title: str,
        description: str = "",
    ) -> None:
        self.name = name
        self.prefix = prefix.rstrip("/")
        self.envelope = envelope
        self.flag = "ok" if envelope == "named" else "success"
        self.title = title
        self.description = description
        self.endpoints: dict[str, Endpoint] = {}

    def endpoint(
        self,
        name: str,
        methods: str | Iterable[str],
        *,
        summary: str,
        response: Mapping[str, Any],
        body: Mapping[str, Any] | None = None,
        query: Sequence[QueryParameter] = (),
        top_level: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated handler as endpoint name for the given methods."""
        allowed = frozenset([methods] if isinstance(methods, str) else methods)

        def register(handler: Handler) -> Handler:
            if name in self.endpoints:
                raise ValueError(
                    f"endpoint {name!r} is registered twice on {self.name}"
                )
            self.endpoints[name] = Endpoint(
                name,
                allowed,
                handler,
                summary,
                response,
                body,
                tuple(query),
                dict(top_level or {}),
            )
            return handler

        return register

    def success_body(self, reply: Reply) -> dict[str, Any]:
        body: dict[str, Any] = {self.flag: True}
        if reply.message is not None:
            body["message"] = reply.message
        body.update(reply.extra)
        if self.envelope == "data":
            body["data"] = reply.data
        elif reply.data is not None:
            body.update(reply.data)
        return body

    def error_body(self, message: str) -> dict[str, Any]:
        return {self.flag: False, "error": message}


@dataclass(frozen=True)
class Context:
    """Everything a handler gets: the caller, its input and the shared services."""

    request: web.Request
    api: Api
    endpoint: Endpoint
    caller: Caller
    body: Fields
    query: Fields
    database: Database
    settings: Settings
    request_id: str


def money(amount: Decimal) -> str:
    """Format money as the client, SMS and eSIM APIs print it: "1.0000"."""
    return format_money(amount, 4)


def flag(value: bool) -> int:
    """Return 1 or 0, the way the Client API prints booleans."""
    return 1 if value else 0


def timestamp(value: Any) -> str | None:
    """Format a timestamp as "YYYY-MM-DD HH:MM:SS" in UTC."""
    if value is None:
        return None
    text: str = value.strftime("%Y-%m-%d %H:%M:%S")
    return text


def _described(value: Any) -> str:
    """Show a received value in an error: strings quoted, the rest as JSON."""
    if isinstance(value, str):
        return repr(value[:77] + "..." if len(value) > 80 else value)
    if isinstance(value, Decimal):
        return str(value)[:80]
    return json.dumps(value, default=str)[:80]


class FieldError(InvalidInput):
    """A missing or invalid request field, with the value shown as received."""

    def __init__(self, field: str, value: Any, expected: str, *, missing: bool = False):
        super().__init__(field, value, expected)
        if missing:
            self.args = (f"missing {field}: expected {expected}",)
        else:
            self.args = (f"invalid {field} {_described(value)}: expected {expected}",)


class Fields:
    """Typed access to the fields of a JSON body or query string.

    Each getter raises InvalidInput naming the field, the value and what is
    expected. A field sent as null counts as missing.
    """

    def __init__(self, values: Mapping[str, Any], *, strings_only: bool = False):
        self.values = values
        # Query strings carry only text, so numbers arrive as digit strings.
        self.strings_only = strings_only

    def _get(self, name: str, required: bool, expected: str) -> Any:
        value = self.values.get(name)
        if value is None and required:
            raise FieldError(name, None, expected, missing=True)
        return value

    def text(
        self,
        name: str,
        *,
        required: bool = True,
        max_length: int = 200,
        expected: str | None = None,
    ) -> str | None:
        """Return a non-empty string field; a JSON integer is taken as its digits."""
        expected = expected or f"a text of 1 to {max_length} characters"
        value = self._get(name, required, expected)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise FieldError(name, value, expected)
        if not value.strip() or len(value) > max_length:
            raise FieldError(name, value, expected)
        _check_text(value, name)
        return value

    def secret(self, name: str, *, required: bool = True) -> str | None:
        """Return a password field; errors show its length, never its text."""
        expected = "a password string"
        value = self._get(name, required, expected)
        if value is None:
            return None
        if not isinstance(value, str):
            raise FieldError(name, f"<a JSON {json_type(value)}>", expected)
        if len(value) > 1024:
            raise FieldError(name, f"<{len(value)} characters>", expected)
        _check_text(value, name)
        return value

    def integer(
        self,
        name: str,
        *,
        required: bool = True,
        default: int | None = None,
        minimum: int = 1,
        maximum: int = 2**63 - 1,
    ) -> int:
        """Return a whole number from minimum to maximum; digit strings are accepted."""
        expected = f"a whole number from {minimum} to {maximum}"
        value = self._get(name, required and default is None, expected)
        if value is None:
            assert default is not None
            return default
        number: int | None = None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, int):
            number = value
        elif isinstance(value, Decimal) and value.is_finite() and value == int(value):
            # JSON Schema counts 6.0 as an integer, so clients may send it.
            number = int(value)
        elif isinstance(value, str) and value.strip().isascii():
            text = value.strip()
            if text.isdigit() and len(text) <= 20:
                number = int(text)
        if number is None or not minimum <= number <= maximum:
            raise FieldError(name, value, expected)
        return number

    def boolean(self, name: str, *, default: bool = False) -> bool:
        """Return a boolean field: true/false, 1/0 or "true"/"false"."""
        value = self.values.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in (
            "true",
            "1",
            "false",
            "0",
        ):
            return value.strip().lower() in ("true", "1")
        raise FieldError(name, value, "true or false")


def json_type(value: Any) -> str:
    """Return the JSON name of a parsed value's type: object, array, string, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_text(value: str, name: str) -> None:
    # PostgreSQL text cannot hold NUL, and an unpaired surrogate cannot be
    # encoded to UTF-8 for the database. Only fields an endpoint reads are
    # checked, because unknown fields are ignored.
    if "\x00" in value:
        raise FieldError(name, value, "text without NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FieldError(
            name, ascii(value), "text without unpaired surrogates"
        ) from exc


def parse_json(raw: bytes, charset: str | None) -> dict[str, Any]:
    """Parse a request body that must be a JSON object; raise ApiError otherwise.

    The body is UTF-8 unless the Content-Type names another charset. Without
    one, json.loads also detects UTF-16 and UTF-32 and skips a UTF-8 byte
    order mark.
    """
    if not raw.strip():
        return {}
    source: bytes | str = raw
    if charset and codecs.lookup(charset).name != "utf-8":
        source = raw.decode(charset)
    try:
        value = json.loads(source, parse_float=Decimal, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ApiError(
            400,
            f"invalid request body: not valid {charset or 'UTF-8'} text ({exc.reason})",
        ) from exc
    except RecursionError as exc:
        raise ApiError(400, "invalid JSON body: nested too deeply") from exc
    except ValueError as exc:
        raise ApiError(
            400, f"invalid JSON body: {exc}; expected a JSON object"
        ) from exc
    if not isinstance(value, dict):
        raise ApiError(
            400,
            f"invalid JSON body: got a JSON {json_type(value)}, "
            "expected a JSON object such as {}",
        )
    return value


async def read_body(request: web.Request, limit: int) -> dict[str, Any]:
    """Read at most limit bytes of a POST body and parse it as a JSON object."""
    too_large = ApiError(413, f"request body too large: at most {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    if request.content_type in FORM_TYPES:
        raise ApiError(
            415,
            f"unsupported Content-Type {request.content_type}: "
            "expected application/json",
        )
    raw = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        raw += chunk
        if len(raw) > limit:
            raise too_large
    charset = request.charset
    if charset:
        try:
            codecs.lookup(charset)
        except LookupError as exc:
            raise ApiError(
                415, f"unsupported charset {charset!r}: expected utf-8"
            ) from exc
    try:
        return parse_json(bytes(raw), charset)
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"invalid request body: not valid {charset} text") from exc


def client_address(request: web.Request, trusted: Sequence[Network]) -> str:
    """Return the client's address, from X-Forwarded-For only via a trusted proxy.

    X-Forwarded-For is read from the right, because each proxy appends the
    address of its own peer. The first address that is not a trusted proxy
    is the client. The header from an untrusted peer is ignored, because
    anyone can send it.
    """
    peer = request.remote or ""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
            peer
        )
    except ValueError:
        return peer
    if not any(address in network for network in trusted):
        return peer
    hops = [
        hop.strip()
        for header in request.headers.getall("X-Forwarded-For", [])
        for hop in header.split(",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        try:
            address = ipaddress.ip_address(hop.strip("[]"))
        except ValueError:
            log.warning(
                "ignored invalid X-Forwarded-For hop %r from %s", hop[:60], peer
            )
            break
        if not any(address in network for network in trusted):
            break
    return str(address)


def _error_status(exc: Exception) -> tuple[int, dict[str, str]]:
    if isinstance(exc, InvalidInput):
        return 400, {}
    if isinstance(exc, NotFound):
        return 404, {}
    if isinstance(exc, Forbidden):
        return 403, {}
    if isinstance(exc, Conflict):
        return 409, {}
    if isinstance(exc, RateLimited):
        return 429, {"Retry-After": str(exc.retry_after)}
    raise TypeError(f"no HTTP status for {type(exc).__name__}")


def json_response(
    body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    # simplejson writes a Decimal as the exact number it holds, which the
    # standard library cannot do without a float step (the reseller API
    # prints money as JSON numbers).
    return web.Response(
        body=simplejson.dumps(body, separators=(",", ":"), use_decimal=True).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


class Dispatcher:
    """Routes, authenticates and runs the endpoints of one Api."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.known = ", ".join(sorted(api.endpoints))

    async def handle(self, request: web.Request) -> web.Response:
        info = request[INFO_KEY]
        info.api = self.api.name
        try:
            return await self._handle(request, info)
        except ApiError as exc:
            return json_response(
                self.api.error_body(exc.message), exc.status, exc.headers
            )
        except (InvalidInput, NotFound, Forbidden, Conflict, RateLimited) as exc:
            status, headers = _error_status(exc)
            return json_response(self.api.error_body(str(exc)), status, headers)

    def _endpoint(self, request: web.Request) -> Endpoint:
        name = request.match_info.get("endpoint")
        if name is None or name == "index.php":
            name = request.query.get("endpoint")
        if not name:
            raise ApiError(
                404, f"missing endpoint: use ?endpoint=NAME with one of: {self.known}"
            )
        endpoint = self.api.endpoints.get(name)
        if endpoint is None:
            raise ApiError(
                404,
                f"unknown endpoint {_described(name)}: expected one of: {self.known}",
            )
        return endpoint

    async def _handle(self, request: web.Request, info: RequestInfo) -> web.Response:
        endpoint = self._endpoint(request)
        info.endpoint = endpoint.name
        method = "GET" if request.method == "HEAD" else request.method
        if method not in endpoint.methods:
            allowed = ", ".join(sorted(endpoint.methods))
            raise ApiError(
                405,
                f"method {request.method} not allowed on endpoint "
                f"{endpoint.name}: use {allowed}",
                {"Allow": allowed},
            )
        database = request.app[DATABASE_KEY]
        settings = request.app[SETTINGS_KEY]
        caller = await authenticate(request, database, settings)
        info.key_id = caller.key_id

        query_values = {key: request.query.get(key) for key in request.query}
        body: dict[str, Any] = {}
        if method == "POST":
            body = await read_body(request, settings.api_max_body_bytes)
        context = Context(
            request,
            self.api,
            endpoint,
            caller,
            Fields(body),
            Fields(query_values, strings_only=True),
            database,
            settings,
            info.request_id,
        )
        reply = await endpoint.handler(context)
        return json_response(self.api.success_body(reply), reply.status)


async def authenticate(
    request: web.Request, database: Database, settings: Settings
) -> Caller:
    """Return the caller of the request's X-API-Key; raise ApiError 401 or 429.

    A presented key that is unknown, disabled or on an inactive account
    counts as one failed authentication of the client address.
    """
    key = request.headers.get("X-API-Key", "").strip()
    if not key:
        raise ApiError(401, "missing X-API-Key header: send your API key in it")
    address = client_address(request, settings.trusted_proxies)
    failure_key = f"auth:{address}"
    async with database.pool.acquire() as connection:
        caller = None
        if len(key) <= MAX_API_KEY_LENGTH:
            caller = await apikeys.authenticate(
                connection,
                key,
                failure_key,
                settings.auth_failure_limit,
                settings.auth_failure_window,
            )
        if caller is None:
            await ratelimit.hit(connection, failure_key, settings.auth_failure_window)
            log.info("authentication failed address=%s", address)
            raise ApiError(
                401, "invalid API key: X-API-Key does not match an active key"
            )
        await _touch(request.app, connection, caller.key_id)
    return caller


async def _touch(
    app: web.Application, connection: asyncpg.Connection, key_id: int
) -> None:
    # Writing last_used_at on every request would double the database work
    # of a read; once a minute per process is precise enough.
    touched: dict[int, float] = app[TOUCHED_KEY]
    now = time.monotonic()
    if now - touched.get(key_id, -TOUCH_INTERVAL) >= TOUCH_INTERVAL:
        touched[key_id] = now
        await apikeys.touch_key(connection, key_id)


def mount(app: web.Application, api: Api) -> None:
    """Route index.php?endpoint=NAME and the alias /<prefix>/NAME to api's endpoints."""
    dispatcher = Dispatcher(api)
    app.router.add_route("*", f"{api.prefix}", dispatcher.handle)
    app.router.add_route("*", f"{api.prefix}/", dispatcher.handle)
    app.router.add_route("*", f"{api.prefix}/{{endpoint}}", dispatcher.handle)


def _generic_error(request: web.Request, message: str) -> dict[str, Any]:
    info = request.get(INFO_KEY)
    flag_name = "ok" if info is not None and info.api == "reseller" else "success"
    return {flag_name: False, "error": message}


@web.middleware
async def middleware(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Time, log and count every request, and turn unexpected errors into a 503."""
    info = RequestInfo(secrets.token_hex(8), time.perf_counter())
    request[INFO_KEY] = info
    status = 503
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:
        # aiohttp's own errors (no such path, wrong method) rewritten as JSON.
        status = exc.status
        response = json_response(
            _generic_error(request, f"{exc.reason}: {request.path}"), status, None
        )
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception(
            "request failed id=%s api=%s endpoint=%s",
            info.request_id,
            info.api,
            info.endpoint,
        )
        status = 503
        response = json_response(
            _generic_error(
                request,
                f"internal error, logged as request {info.request_id}; try again later",
            ),
            status,
            {"Retry-After": "1"},
        )
    response.headers["X-Request-Id"] = info.request_id
    elapsed = time.perf_counter() - info.started
    api_requests.labels(info.api, info.endpoint, str(status)).inc()
    api_request_seconds.labels(info.api).observe(elapsed)
    log.info(
        "request id=%s key=%s api=%s endpoint=%s method=%s status=%s ms=%.1f",
        info.request_id,
        info.key_id if info.key_id is not None else "-",
        info.api,
        info.endpoint,
        request.method,
        status,
        elapsed * 1000,
    )
    return response
