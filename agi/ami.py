"""Asyncio client for the Asterisk Manager Interface (AMI).

One `AMIClient` keeps one AMI session. It logs in, matches responses to actions by
ActionID, collects event lists, dispatches events in arrival order, watches the link
with Ping and reconnects with capped exponential backoff. The framing is the one
Asterisk 22.10.1 sends (banner ``Asterisk Call Manager/11.0.0``): a banner line,
then blocks of ``Key: Value`` lines, each block closed by an empty line.

Asterisk runs the actions of one session one after another, so a slow action delays
the Ping response and every later action. Keep a second client with ``events="off"``
for urgent control actions (Hangup) when the event session carries heavy traffic.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = [
    "AMIActionError",
    "AMIAuthenticationError",
    "AMIClient",
    "AMIConnectionLost",
    "AMIEndpoint",
    "AMIError",
    "AMINotConnectedError",
    "AMIProtocolError",
    "AMIState",
    "AMITimeoutError",
    "FrameParser",
    "Message",
    "backoff_ceiling",
    "backoff_delay",
]

logger = logging.getLogger("callgate.ami")

DEFAULT_PORT = 5038
# A CoreShowChannels row is about 700 bytes, so 1 MiB leaves room for long Command
# output while still stopping a peer that never ends its frame.
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024
_READ_SIZE = 64 * 1024

HeaderValue = str | int | Sequence[str]
EventCallback = Callable[["Message"], Awaitable[None] | None]
ConnectCallback = Callable[[], Awaitable[None] | None]
DisconnectCallback = Callable[[str], Awaitable[None] | None]


class AMIError(Exception):
    """Base class of the errors raised by the AMI client."""


class AMIAuthenticationError(AMIError):
    """Asterisk rejected the Login, so the client stops reconnecting."""

    def __init__(self, username: str, message: str) -> None:
        super().__init__(f"AMI login rejected for user {username!r}: {message}")
        self.username = username
        self.message = message


class AMIConnectionLost(AMIError):
    """The AMI link closed before the action received its response."""


class AMINotConnectedError(AMIConnectionLost):
    """The action was not sent because no AMI session is logged in."""


class AMITimeoutError(AMIError, TimeoutError):
    """No response arrived for an action within its timeout."""


class AMIProtocolError(AMIError):
    """The peer sent bytes that break AMI framing, such as an oversized frame."""


class AMIActionError(AMIError):
    """A list action received ``Response: Error`` instead of an event list."""

    def __init__(self, action: str, response: Message) -> None:
        reason = response.get("Message", "")
        super().__init__(f"AMI action {action} failed: {reason}")
        self.action = action
        self.response = response


@dataclass(frozen=True)
class AMIEndpoint:
    """Address and credentials of an AMI server, parsed from an ``ami://`` URL."""

    host: str
    port: int
    username: str
    secret: str = field(repr=False)

    @classmethod
    def from_url(cls, url: str) -> AMIEndpoint:
        """Parse ``ami://USER:SECRET@HOST[:PORT]``, with user and secret %-encoded."""
        parts = urlsplit(url)
        if parts.scheme != "ami":
            raise ValueError(
                f"invalid AMI URL scheme {parts.scheme!r}: "
                "expected ami://USER:SECRET@HOST:PORT"
            )
        if not parts.hostname:
            raise ValueError("invalid AMI URL: the host is missing")
        if not parts.username or parts.password is None:
            raise ValueError(
                f"invalid AMI URL for host {parts.hostname}: "
                "the user or the secret is missing (ami://USER:SECRET@HOST:PORT)"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(
                f"invalid AMI URL for host {parts.hostname}: "
                "a path, query or fragment is not allowed"
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(
                f"invalid AMI URL port for host {parts.hostname}: {exc}"
            ) from exc

        return cls(
            host=parts.hostname,
            port=DEFAULT_PORT if port is None else port,
            username=unquote(parts.username),
            secret=unquote(parts.password),
        )


class Message(Mapping[str, str]):
    """One AMI message: a read-only mapping of its headers.

    Keys are case-insensitive. Looking a key up returns its first value, and
    `getall` returns every value of a repeated key (``Variable``, ``ChanVariable``,
    ``Output``) in wire order.
    """

    __slots__ = ("_headers", "_spellings", "_values")

    def __init__(self, headers: Iterable[tuple[str, str]]) -> None:
        self._headers = tuple(headers)
        self._values: dict[str, list[str]] = {}
        self._spellings: dict[str, str] = {}
        for key, value in self._headers:
            folded = key.lower()
            self._values.setdefault(folded, []).append(value)
            self._spellings.setdefault(folded, key)

    def __getitem__(self, key: str) -> str:
        values = self._values.get(key.lower())
        if not values:
            raise KeyError(key)
        return values[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._spellings.values())

    def __len__(self) -> int:
        return len(self._spellings)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._values

    def __repr__(self) -> str:
        return f"Message({list(self._headers)!r})"

    def getall(self, key: str) -> list[str]:
        """Return every value of ``key`` in wire order, or an empty list."""
        return list(self._values.get(key.lower(), ()))

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """All header lines as (key, value) pairs, in wire order."""
        return self._headers

    @property
    def name(self) -> str:
        """Event name, or ``""`` when the message is not an event."""
        return self.get("Event", "")

    @property
    def is_event(self) -> bool:
        return "event" in self._values

    @property
    def is_response(self) -> bool:
        return "response" in self._values

    @property
    def is_success(self) -> bool:
        return self.get("Response", "").lower() == "success"

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")


class FrameParser:
    """Incremental AMI parser: bytes in, complete messages out, no I/O.

    The first line is the banner. Lines may end with CRLF or a bare LF. A frame is
    decoded only once it is complete, so a UTF-8 character split across two reads is
    kept intact. Invalid UTF-8 becomes U+FFFD.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes <= 0:
            raise ValueError(f"max_frame_bytes must be positive, got {max_frame_bytes}")
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._frame_bytes = 0
        self.banner: str | None = None

    def feed(self, data: bytes) -> list[Message]:
        """Add received bytes and return the messages they complete.

        Raises `AMIProtocolError` when a frame grows past ``max_frame_bytes``.
        """
        self._buffer += data
        messages: list[Message] = []
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = bytes(self._buffer[start:end])
            start = end + 1
            message = self._take_line(line.removesuffix(b"\r"))
            if message is not None:
                messages.append(message)
        del self._buffer[:start]

        if self._frame_bytes + len(self._buffer) > self._max_frame_bytes:
            raise AMIProtocolError(
                f"AMI frame exceeds {self._max_frame_bytes} bytes without an end"
            )
        return messages

    def _take_line(self, line: bytes) -> Message | None:
        if self.banner is None:
            self.banner = line.decode("utf-8", "replace")
            return None
        if line:
            self._lines.append(line)
            self._frame_bytes += len(line) + 2
            if self._frame_bytes > self._max_frame_bytes:
                raise AMIProtocolError(
                    f"AMI frame exceeds {self._max_frame_bytes} bytes without an end"
                )
            return None
        if not self._lines:
            return None

        lines, self._lines, self._frame_bytes = self._lines, [], 0
        return Message(_split_header(raw) for raw in lines)


def _split_header(raw: bytes) -> tuple[str, str]:
    # A line without a colon (none in the Asterisk 22.10.1 recordings) is kept
    # under the key "".
    text = raw.decode("utf-8", "replace")
    key, colon, value = text.partition(":")
    if not colon:
        return "", text
    return key.strip(), value.removeprefix(" ")


def backoff_ceiling(attempt: int, *, initial: float, maximum: float) -> float:
    """Return the upper bound of the delay before retry ``attempt`` (0-based)."""
    # Past 2**64 the cap has long been reached, and a bigger exponent overflows.
    return min(maximum, initial * 2.0 ** min(max(attempt, 0), 64))


def backoff_delay(
    attempt: int, *, initial: float, maximum: float, rng: random.Random
) -> float:
    """Return the delay before retry ``attempt``, with full jitter.

    The delay is uniform in [0, min(maximum, initial * 2**attempt)].
    """
    return rng.uniform(0.0, backoff_ceiling(attempt, initial=initial, maximum=maximum))


def format_action(
    action: str, action_id: str, headers: Mapping[str, HeaderValue]
) -> bytes:
    """Encode one action frame; raise ValueError for a header that would break it."""
    lines = [f"Action: {action}", f"ActionID: {action_id}"]
    for key, value in headers.items():
        if key.lower() in ("action", "actionid"):
            raise ValueError(f"header {key!r} is set by the AMI client itself")
        for item in _header_values(value):
            lines.append(f"{key}: {item}")

    for line in lines:
        key = line.partition(":")[0]
        if not key or not key.replace("-", "").isalnum():
            raise ValueError(f"invalid AMI header name {key!r}")
        if "\r" in line or "\n" in line:
            raise ValueError(f"AMI header {key} contains a line break: {line!r}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _header_values(value: HeaderValue) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, str | int):
        return [str(value)]
    return [str(item) for item in value]


class AMIState(enum.Enum):
    """Lifecycle state of an `AMIClient`."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    AUTH_FAILED = "auth_failed"
    CLOSED = "closed"


@dataclass(eq=False)
class _PendingAction:
    action: str
    future: asyncio.Future[None]
    collect_list: bool
    response: Message | None = None
    items: list[Message] = field(default_factory=list)


@dataclass(eq=False)
class _Connection:
    generation: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parser: FrameParser
    banner: asyncio.Future[str]
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sequence: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    pending: dict[str, _PendingAction] = field(default_factory=dict)
    login_action_id: str | None = None
    logged_in: bool = False
    lost: bool = False
    abort_reason: str | None = None


@dataclass(frozen=True)
class _Connected:
    generation: int


@dataclass(frozen=True)
class _Disconnected:
    generation: int
    reason: str


@dataclass(frozen=True)
class _Stop:
    pass


_QueueItem = Message | _Connected | _Disconnected | _Stop


class AMIClient:
    """Asterisk Manager Interface client for one AMI session.

    `start` logs in and keeps the session alive. Events go to ``on_event`` in
    arrival order from one consumer task, and each coroutine result is awaited
    before the next event. ``on_connect`` runs in that same task after every login,
    before any event of the new session, so it can await a resync
    (`core_show_channels`) while new events wait in the queue. ``on_disconnect``
    receives the reason the link ended. A callback may call `close`, and the
    consumer then stops once that callback returns.
    """

    def __init__(
        self,
        url: str,
        *,
        events: str = "call,cdr,system",
        ping_interval: float = 10.0,
        ping_timeout: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        action_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        login_timeout: float = 10.0,
        event_queue_size: int = 10_000,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        on_event: EventCallback | None = None,
        on_connect: ConnectCallback | None = None,
        on_disconnect: DisconnectCallback | None = None,
    ) -> None:
        self._endpoint = AMIEndpoint.from_url(url)
        _require_positive(
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            action_timeout=action_timeout,
            connect_timeout=connect_timeout,
            login_timeout=login_timeout,
            event_queue_size=event_queue_size,
        )
        self._events = events
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._action_timeout = action_timeout
        self._connect_timeout = connect_timeout
        self._login_timeout = login_timeout
        self._event_queue_size = event_queue_size
        self._max_frame_bytes = max_frame_bytes
        self._on_event = on_event
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect

        self._random = random.Random()
        self._state = AMIState.STOPPED
        self._generation = 0
        self._connection: _Connection | None = None
        self._connected_event = asyncio.Event()
        self._queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        self._queued_events = 0
        self._callback_generation: int | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._session_tasks: set[asyncio.Task[None]] = set()
        self._closing = False

        # Counters for metrics.
        self.reconnects = 0
        self.events_received: Counter[str] = Counter()
        self.events_dropped = 0
        self.callback_errors = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        endpoint = self._endpoint
        return (
            f"<AMIClient {endpoint.username}@{endpoint.host}:{endpoint.port} "
            f"{self._state.value}>"
        )

    @property
    def state(self) -> AMIState:
        return self._state

    @property
    def connected(self) -> bool:
        """True while a session is logged in and its link is up."""
        connection = self._connection
        return connection is not None and connection.logged_in and not connection.lost

    @property
    def endpoint(self) -> AMIEndpoint:
        return self._endpoint

    async def start(self) -> None:
        """Start the supervisor and wait for the outcome of the first attempt.

        Returns after the first login and its ``on_connect`` callback, or after a
        first attempt that failed on the network (the supervisor keeps retrying in
        the background). Raises `AMIAuthenticationError` when Asterisk rejects the
        login, and then does not retry.
        """
        if self._supervisor is not None:
            raise RuntimeError("AMIClient.start() was already called")
        loop = asyncio.get_running_loop()
        self._first_attempt = loop.create_future()
        self._consumer = asyncio.create_task(self._consume(), name="ami-consumer")
        self._supervisor = asyncio.create_task(self._supervise(), name="ami-supervisor")
        self._supervisor.add_done_callback(self._on_supervisor_done)

        try:
            await asyncio.shield(self._first_attempt)
        except AMIAuthenticationError:
            await self.close()
            raise

    def _on_supervisor_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        logger.error("AMI supervisor crashed; no more reconnects", exc_info=exc)
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_exception(
                AMIError(f"AMI supervisor crashed: {exc}")
            )

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a session is logged in; raise TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            await self._connected_event.wait()

    async def close(self, timeout: float = 2.0) -> None:
        """Log off, stop reconnecting and let the consumer finish queued events.

        Waits at most ``timeout`` seconds for the Logoff response and again for the
        consumer, which is cancelled after that.
        """
        if self._closing:
            return
        self._closing = True
        connection = self._connection
        if connection is not None and connection.logged_in and not connection.lost:
            try:
                await self._request(connection, "Logoff", {}, timeout=timeout)
            except AMIError as exc:
                logger.info("AMI Logoff before close failed: %s", exc)

        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        await self._stop_consumer(timeout)

        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)
        if self._state is not AMIState.AUTH_FAILED:
            self._state = AMIState.CLOSED

    async def send_action(
        self, action: str, *, timeout: float | None = None, **headers: HeaderValue
    ) -> Message:
        """Send one action and return its response, Success or Error alike.

        Headers are given in their AMI spelling (``Channel=``, ``Timeout=``). A list
        or tuple value repeats the header (``Variable=["A=1", "B=2"]``). The lower
        case ``timeout`` is the wait in seconds for the response, not a header.
        Raises `AMITimeoutError`, `AMIConnectionLost` or `AMINotConnectedError`.
        """
        connection = self._live_connection(action, headers)
        pending = await self._request(
            connection, action, headers, timeout=self._timeout(timeout)
        )

        assert pending.response is not None
        return pending.response

    async def send_list_action(
        self, action: str, *, timeout: float | None = None, **headers: HeaderValue
    ) -> list[Message]:
        """Send a list action and return the events of its EventList.

        The list is the events between ``EventList: start`` and the event with
        ``EventList: Complete``, which is not included. A Success response without
        an event list gives an empty list. Raises `AMIActionError` on
        ``Response: Error``, and the errors of `send_action`.
        """
        connection = self._live_connection(action, headers)
        pending = await self._request(
            connection,
            action,
            headers,
            timeout=self._timeout(timeout),
            collect_list=True,
        )

        assert pending.response is not None
        if not pending.response.is_success:
            raise AMIActionError(action, pending.response)
        return pending.items

    async def hangup(self, channel: str, cause: int = 16) -> Message:
        """Hang up ``channel`` (a name or uniqueid) with the Q.850 ``cause``.

        An exact channel gives ``Success`` or ``Error``/``No such channel``. For a
        ``/regex/`` channel use `send_list_action`, because the reply is a list.
        """
        _require_text(channel=channel)
        if not 0 <= cause <= 127:
            raise ValueError(f"invalid Q.850 cause {cause}: expected 0 to 127")
        return await self.send_action("Hangup", Channel=channel, Cause=cause)

    async def core_show_channels(self) -> list[Message]:
        """Return one CoreShowChannel event per active channel."""
        return await self.send_list_action("CoreShowChannels")

    async def absolute_timeout(self, channel: str, seconds: int) -> Message:
        """Set the hard limit of ``channel`` to ``seconds`` from now (0 removes it)."""
        _require_text(channel=channel)
        if seconds < 0:
            raise ValueError(f"invalid AbsoluteTimeout {seconds} s: expected >= 0")
        return await self.send_action(
            "AbsoluteTimeout", Channel=channel, Timeout=seconds
        )

    async def sorcery_memory_cache_expire_object(
        self, cache: str, object_name: str
    ) -> Message:
        """Expire one object of a sorcery memory cache so the next read reloads it."""
        _require_text(cache=cache, object_name=object_name)
        return await self.send_action(
            "SorceryMemoryCacheExpireObject", Cache=cache, Object=object_name
        )

    async def sorcery_memory_cache_populate(self, cache: str) -> Message:
        """Reload a whole sorcery memory cache from its backend."""
        _require_text(cache=cache)
        return await self.send_action("SorceryMemoryCachePopulate", Cache=cache)

    def _timeout(self, timeout: float | None) -> float:
        return self._action_timeout if timeout is None else timeout

    def _live_connection(
        self, action: str, headers: Mapping[str, HeaderValue]
    ) -> _Connection:
        # Validate first, so a bad header is reported the same way on or off line.
        format_action(action, "0-0", headers)
        connection = self._connection
        if connection is None or not connection.logged_in or connection.lost:
            endpoint = self._endpoint
            raise AMINotConnectedError(
                f"AMI action {action} not sent: no session to "
                f"{endpoint.host}:{endpoint.port} (state {self._state.value})"
            )
        return connection

    async def _request(
        self,
        connection: _Connection,
        action: str,
        headers: Mapping[str, HeaderValue],
        *,
        timeout: float,
        collect_list: bool = False,
        action_id: str | None = None,
    ) -> _PendingAction:
        if action_id is None:
            action_id = _next_action_id(connection)
        frame = format_action(action, action_id, headers)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = _PendingAction(action, future, collect_list)
        connection.pending[action_id] = pending
        log_level = logging.DEBUG if action == "Ping" else logging.INFO
        started = time.monotonic()

        try:
            async with asyncio.timeout(timeout):
                async with connection.write_lock:
                    connection.writer.write(frame)
                    await connection.writer.drain()
                await future
        except TimeoutError as exc:
            logger.warning(
                "AMI action %s ActionID=%s timed out after %.1f s",
                action,
                action_id,
                timeout,
            )
            raise AMITimeoutError(
                f"AMI action {action} (ActionID {action_id}) got no response "
                f"within {timeout} s"
            ) from exc
        except (AMIConnectionLost, OSError) as exc:
            logger.warning(
                "AMI action %s ActionID=%s failed: %s", action, action_id, exc
            )
            if isinstance(exc, AMIConnectionLost):
                raise
            raise AMIConnectionLost(f"AMI action {action} failed: {exc}") from exc
        finally:
            connection.pending.pop(action_id, None)

        assert pending.response is not None
        logger.log(
            log_level,
            "AMI action %s ActionID=%s response=%s message=%r items=%d in %.1f ms",
            action,
            action_id,
            pending.response.get("Response", ""),
            pending.response.get("Message", ""),
            len(pending.items),
            (time.monotonic() - started) * 1000,
        )
        return pending

    # Supervisor and session -------------------------------------------------------

    async def _supervise(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                logged_in, reason = await self._run_session()
            except AMIAuthenticationError as exc:
                self._stop_after_auth_failure(exc)
                return

            self.last_error = reason
            if self._closing:
                return
            if logged_in:
                attempt = 0
            elif self._first_attempt is not None and not self._first_attempt.done():
                self._first_attempt.set_result(None)

            delay = backoff_delay(
                attempt,
                initial=self._backoff_initial,
                maximum=self._backoff_max,
                rng=self._random,
            )
            attempt += 1
            self._state = AMIState.BACKOFF
            logger.warning(
                "AMI link to %s:%d down (%s); retry %d in %.2f s",
                self._endpoint.host,
                self._endpoint.port,
                reason,
                attempt,
                delay,
            )
            await asyncio.sleep(delay)
            self.reconnects += 1

    def _stop_after_auth_failure(self, exc: AMIAuthenticationError) -> None:
        self._state = AMIState.AUTH_FAILED
        self.last_error = str(exc)
        logger.error(
            "AMI login to %s:%d rejected for user %s (%s); not reconnecting, "
            "fix the AMI user or secret and restart",
            self._endpoint.host,
            self._endpoint.port,
            exc.username,
            exc.message,
        )
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_exception(exc)

    async def _run_session(self) -> tuple[bool, str]:
        """Serve one connection; return whether it logged in, and why it ended."""
        self._state = AMIState.CONNECTING
        try:
            connection = await self._open_connection()
        except (OSError, TimeoutError) as exc:
            return False, f"connect failed: {_describe(exc)}"

        reader_task = self._spawn(self._read_loop(connection), "ami-reader")
        tasks = {reader_task}
        reason = "AMI client closed"
        try:
            await self._log_in(connection)
            self._state = AMIState.CONNECTED
            self._connected_event.set()
            tasks.add(self._spawn(self._ping_loop(connection), "ami-ping"))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            reason = _task_reason(done)
        except (AMIConnectionLost, AMIProtocolError, OSError, TimeoutError) as exc:
            reason = _describe(exc)
        finally:
            await self._end_session(connection, tasks, reason)

        logger.log(
            logging.INFO if self._closing else logging.WARNING,
            "AMI link to %s:%d lost (generation %d): %s",
            self._endpoint.host,
            self._endpoint.port,
            connection.generation,
            reason,
        )
        return connection.logged_in, reason

    async def _open_connection(self) -> _Connection:
        endpoint = self._endpoint
        # This uses asyncio.timeout because the Python 3.11 wait_for, when cancelled
        # as the connection completes, swallows the cancellation or drops the socket.
        async with asyncio.timeout(self._connect_timeout):
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        _enable_keepalive(writer)

        self._generation += 1
        banner: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        connection = _Connection(
            generation=self._generation,
            reader=reader,
            writer=writer,
            parser=FrameParser(self._max_frame_bytes),
            banner=banner,
        )
        self._connection = connection
        return connection

    async def _log_in(self, connection: _Connection) -> None:
        endpoint = self._endpoint
        banner = await asyncio.wait_for(connection.banner, self._login_timeout)
        logger.info(
            "AMI connected to %s:%d (banner %r, generation %d); logging in as %s",
            endpoint.host,
            endpoint.port,
            banner,
            connection.generation,
            endpoint.username,
        )
        # The reader needs the Login ActionID to queue the on_connect marker
        # ahead of the first event of the session.
        connection.login_action_id = _next_action_id(connection)
        pending = await self._request(
            connection,
            "Login",
            {
                "Username": endpoint.username,
                "Secret": endpoint.secret,
                "Events": self._events,
            },
            timeout=self._login_timeout,
            action_id=connection.login_action_id,
        )

        assert pending.response is not None
        if not pending.response.is_success:
            raise AMIAuthenticationError(
                endpoint.username, pending.response.get("Message", "")
            )

    async def _end_session(
        self, connection: _Connection, tasks: set[asyncio.Task[None]], reason: str
    ) -> None:
        # close() may cancel this task while it waits below, so the socket is
        # closed and the loss queued before the first await.
        if connection.abort_reason is None:
            connection.abort_reason = reason
        connection.lost = True
        self._connected_event.clear()
        connection.writer.transport.abort()
        for task in tasks:
            task.cancel()
        if connection.logged_in:
            self._queue.put_nowait(
                _Disconnected(connection.generation, connection.abort_reason)
            )

        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await connection.writer.wait_closed()
        except OSError as exc:
            logger.debug("AMI socket close reported: %s", exc)

    def _spawn(
        self, coroutine: Coroutine[Any, Any, None], name: str
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine, name=name)
        self._session_tasks.add(task)
        task.add_done_callback(self._session_tasks.discard)
        return task

    async def _ping_loop(self, connection: _Connection) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            try:
                await self._request(connection, "Ping", {}, timeout=self._ping_timeout)
            except AMITimeoutError as exc:
                raise AMIConnectionLost(
                    f"no response to Ping within {self._ping_timeout} s"
                ) from exc

    # Reader -----------------------------------------------------------------------

    async def _read_loop(self, connection: _Connection) -> None:
        reason = "AMI client closed the link"
        try:
            while True:
                data = await connection.reader.read(_READ_SIZE)
                if not data:
                    reason = connection.abort_reason or "connection closed by peer"
                    raise AMIConnectionLost(reason)
                messages = connection.parser.feed(data)
                banner = connection.parser.banner
                if banner is not None and not connection.banner.done():
                    connection.banner.set_result(banner)
                for message in messages:
                    self._route(connection, message)
        except (OSError, AMIProtocolError) as exc:
            reason = connection.abort_reason or _describe(exc)
            raise AMIConnectionLost(reason) from exc
        finally:
            self._fail_pending(connection, connection.abort_reason or reason)

    def _route(self, connection: _Connection, message: Message) -> None:
        if message.is_event:
            self.events_received[message.name] += 1
        action_id = message.action_id
        pending = connection.pending.get(action_id) if action_id else None

        if pending is None:
            if message.is_response:
                logger.info(
                    "AMI response for unknown ActionID %s dropped (late or foreign)",
                    action_id,
                )
                return
            self._enqueue_event(message)
        elif message.is_response:
            self._take_response(connection, pending, message)
        elif pending.collect_list and pending.response is not None:
            self._take_list_item(pending, message)
        else:
            self._enqueue_event(message)

    def _take_response(
        self, connection: _Connection, pending: _PendingAction, message: Message
    ) -> None:
        if message.action_id == connection.login_action_id and message.is_success:
            connection.logged_in = True
            self._queue.put_nowait(_Connected(connection.generation))
        pending.response = message
        starts_list = message.get("EventList", "").lower() == "start"
        if pending.collect_list and message.is_success and starts_list:
            return
        _finish(pending)

    def _take_list_item(self, pending: _PendingAction, message: Message) -> None:
        if message.get("EventList", "").lower() != "complete":
            pending.items.append(message)
            return
        announced = message.get("ListItems", "")
        if announced.isdigit() and int(announced) != len(pending.items):
            logger.warning(
                "AMI list action %s ActionID=%s announced %s items but sent %d",
                pending.action,
                message.action_id,
                announced,
                len(pending.items),
            )
        _finish(pending)

    def _enqueue_event(self, message: Message) -> None:
        # The reader drops events instead of waiting for the consumer, because
        # Asterisk disconnects a client that reads too slowly.
        if self._queued_events >= self._event_queue_size:
            self.events_dropped += 1
            if self.events_dropped == 1 or self.events_dropped % 1000 == 0:
                logger.warning(
                    "AMI event queue full (%d events); dropped %s event "
                    "(Uniqueid %s), %d dropped so far",
                    self._event_queue_size,
                    message.name,
                    message.get("Uniqueid", "-"),
                    self.events_dropped,
                )
            return
        self._queued_events += 1
        self._queue.put_nowait(message)

    def _fail_pending(self, connection: _Connection, reason: str) -> None:
        connection.lost = True
        if not connection.banner.done():
            connection.banner.set_exception(AMIConnectionLost(reason))
        for pending in connection.pending.values():
            if not pending.future.done():
                pending.future.set_exception(AMIConnectionLost(reason))

    # Consumer ---------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            item = await self._queue.get()
            if isinstance(item, _Stop):
                return
            if isinstance(item, _Connected):
                await self._run_on_connect(item)
            elif isinstance(item, _Disconnected):
                await self._run_on_disconnect(item)
            else:
                self._queued_events -= 1
                await self._run_callback("on_event", self._on_event, item)

    async def _run_on_connect(self, marker: _Connected) -> None:
        connection = self._connection
        live = (
            connection is not None
            and connection.generation == marker.generation
            and not connection.lost
        )
        if live and connection is not None:
            self._callback_generation = marker.generation
            ok = await self._run_callback("on_connect", self._on_connect)
            if not ok:
                connection.abort_reason = "on_connect callback failed"
                connection.writer.transport.abort()
        else:
            logger.info(
                "AMI session generation %d ended before on_connect ran; skipped",
                marker.generation,
            )
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)

    async def _run_on_disconnect(self, marker: _Disconnected) -> None:
        if marker.generation != self._callback_generation:
            return
        self._callback_generation = None
        await self._run_callback("on_disconnect", self._on_disconnect, marker.reason)

    async def _run_callback(
        self,
        name: str,
        callback: Callable[..., Awaitable[None] | None] | None,
        *args: object,
    ) -> bool:
        """Run a user callback and log what it raises; return False if it raised."""
        if callback is None:
            return True
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.callback_errors += 1
            logger.exception(
                "AMI %s callback failed (%s)", name, _describe_arguments(args)
            )
            return False
        return True

    async def _stop_consumer(self, timeout: float) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        self._queue.put_nowait(_Stop())
        if consumer is asyncio.current_task():
            return
        try:
            await asyncio.wait_for(asyncio.shield(consumer), timeout)
        except TimeoutError:
            logger.warning(
                "AMI consumer still busy %.1f s after close; cancelling it with "
                "%d events queued",
                timeout,
                self._queued_events,
            )
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)


def _next_action_id(connection: _Connection) -> str:
    return f"{connection.generation}-{next(connection.sequence)}"


def _finish(pending: _PendingAction) -> None:
    if not pending.future.done():
        pending.future.set_result(None)


def _task_reason(done: set[asyncio.Task[None]]) -> str:
    for task in done:
        exc = task.exception()
        if exc is not None:
            return _describe(exc)
    return "session task ended"


def _describe_arguments(args: tuple[object, ...]) -> str:
    parts = []
    for argument in args:
        if isinstance(argument, Message):
            uniqueid = argument.get("Uniqueid", "-")
            parts.append(f"event {argument.name or '-'} Uniqueid {uniqueid}")
        else:
            parts.append(repr(argument))
    return ", ".join(parts) or "no arguments"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _enable_keepalive(writer: asyncio.StreamWriter) -> None:
    # TCP keepalive backs up the Ping watchdog. The values are seconds, except
    # TCP_KEEPCNT, which counts probes.
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", 30),
        ("TCP_KEEPINTVL", 10),
        ("TCP_KEEPCNT", 3),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _require_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _require_text(**values: str) -> None:
    for name, value in values.items():
        if not value:
            raise ValueError(f"{name} must not be empty")
