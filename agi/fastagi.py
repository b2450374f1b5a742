"""FastAGI server: read Asterisk's environment block, route it, run a handler.

Asterisk is the TCP client. It sends ``name: value`` lines ending with an empty
line, then waits for one command at a time. Facts below were observed on
Asterisk 22.10.1: a ``HANGUP`` line can arrive unprompted at any point (and
once more after the server half-closes), and a ``520-`` usage reply runs over
several lines until one that starts with ``520 ``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qs

from engine.errors import CallgateError

logger = logging.getLogger("callgate.agi")

# Stream limit for one line. It only bounds the memory a broken peer can make
# us buffer, because GET VARIABLE values and 520 usage lines are far shorter.
MAX_LINE_BYTES = 65536
# After the half-close Asterisk writes one more HANGUP and closes. This bounds
# how long the server waits for that.
LINGER_SECONDS = 2.0
# How long close() lets running sessions finish before cancelling them.
CLOSE_TIMEOUT_SECONDS = 5.0

_HANGUP = "HANGUP"
_STATUS_LINE = re.compile(r"(?P<code>\d{3})(?P<sep>[ -])(?P<rest>.*)", re.DOTALL)
_RESULT = re.compile(r"result=(?P<result>\S*)")
_ENDPOS = re.compile(r"\bendpos=(?P<endpos>-?\d+)")


class Outcome(StrEnum):
    """Session outcomes set by the server. A handler may set any other string."""

    OK = "OK"
    TIMEOUT = "TIMEOUT"
    DISCONNECTED = "DISCONNECTED"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"
    BAD_ENVIRONMENT = "BAD_ENVIRONMENT"
    NO_SCRIPT = "NO_SCRIPT"
    UNKNOWN_SCRIPT = "UNKNOWN_SCRIPT"
    OVER_MAX_SESSIONS = "OVER_MAX_SESSIONS"


class AGIError(CallgateError):
    """Base of the FastAGI errors."""


class AGIConnectionClosed(AGIError):
    """Asterisk closed the connection before the expected line arrived."""


class AGIEnvironmentInvalid(AGIError):
    """The environment block was cut off by EOF or exceeded the size limit."""


class AGIProtocolError(AGIError):
    """A reply line did not have the expected form."""

    def __init__(self, command: str, reply: str) -> None:
        self.command = command
        self.reply = reply
        super().__init__(f"unexpected reply {reply!r} to {command!r}")


class AGICommandError(AGIError):
    """Rejection of a command by Asterisk, with ``code`` 510, 511 or 520."""

    def __init__(self, command: str, reply: str) -> None:
        self.command = command
        self.reply = reply
        self.code = int(reply[:3])
        super().__init__(f"{command!r} failed: {reply.splitlines()[0]!r}")


class AGIInvalidCommand(AGICommandError):
    """510: the verb is unknown or its module is not loaded."""


class AGIDeadChannel(AGICommandError):
    """511: the channel has hung up and the command is not allowed on it."""


class AGIUsageError(AGICommandError):
    """520: the arguments are invalid. ``usage`` contains the usage text, if any."""

    def __init__(self, command: str, reply: str) -> None:
        super().__init__(command, reply)
        lines = reply.split("\n")
        self.usage = "\n".join(lines[1:-1])


_COMMAND_ERRORS: dict[int, type[AGICommandError]] = {
    510: AGIInvalidCommand,
    511: AGIDeadChannel,
    520: AGIUsageError,
}


@dataclass(frozen=True, slots=True)
class Reply:
    """A parsed ``200`` reply, with the raw line in ``text``."""

    code: int
    result: str | None
    data: str | None
    endpos: int | None
    text: str


def parse_reply(line: str) -> Reply:
    """Parse a ``200 result=...`` line.

    The data is everything between the first ``(`` after the result and the
    last ``)`` on the line, because Asterisk does not escape values and a value
    may itself contain parentheses. ``endpos`` is looked for after the data.
    Raises ``ValueError`` if the line does not start with a 3-digit code.
    """
    match = _STATUS_LINE.fullmatch(line)
    if match is None or match["sep"] != " ":
        raise ValueError(f"invalid AGI reply line {line!r}: expected '<code> ...'")
    rest = match["rest"]

    result: str | None = None
    data: str | None = None
    tail = rest
    result_match = _RESULT.match(rest)
    if result_match is not None:
        result = result_match["result"]
        tail = rest[result_match.end() :]
        if tail.startswith(" (") and ")" in tail:
            close = tail.rindex(")")
            data = tail[2:close]
            tail = tail[close + 1 :]

    endpos_match = _ENDPOS.search(tail)
    endpos = int(endpos_match["endpos"]) if endpos_match is not None else None

    return Reply(int(match["code"]), result, data, endpos, line)


def _decode_line(raw: bytes) -> str:
    # Caller names arrive as raw bytes (UTF-8 on Asterisk 22, but not
    # guaranteed). Decoding whole lines keeps multi-byte characters intact
    # however TCP splits them, and "replace" keeps the text safe to store.
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", errors="replace")


def _parse_environment_line(line: str) -> tuple[str, str] | None:
    name, separator, value = line.partition(": ")
    if separator:
        return name, value
    name, separator, value = line.partition(":")
    if separator:
        return name, value.lstrip(" ")
    return None


async def read_environment(
    reader: asyncio.StreamReader, max_bytes: int
) -> dict[str, str]:
    """Read the environment block up to its empty line.

    Raises ``AGIEnvironmentInvalid`` on EOF before the empty line or when the
    block exceeds ``max_bytes``. Lines without a colon are logged and skipped.
    """
    env: dict[str, str] = {}
    total = 0
    while True:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise AGIEnvironmentInvalid(
                f"connection closed inside the environment block after "
                f"{total + len(exc.partial)} bytes and {len(env)} variables"
            ) from exc
        except asyncio.LimitOverrunError as exc:
            raise AGIEnvironmentInvalid(
                f"environment line longer than {exc.consumed} bytes, "
                f"limit {max_bytes} bytes"
            ) from exc

        total += len(raw)
        if total > max_bytes:
            raise AGIEnvironmentInvalid(
                f"environment block exceeds {max_bytes} bytes "
                f"after {len(env)} variables"
            )
        line = _decode_line(raw)
        if not line:
            return env

        parsed = _parse_environment_line(line)
        if parsed is None:
            logger.warning("Skipped environment line without a colon: %r", line[:200])
            continue
        env[parsed[0]] = parsed[1]


def _quote(value: str) -> str:
    # Asterisk splits AGI arguments on spaces and tabs, removes double quotes
    # and lets a backslash escape the next character.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _format_name(value: str, what: str) -> str:
    """Format a variable name or expression, quoting it only when needed."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"invalid {what} {value!r}: must not contain a line break")
    if not value or any(ch in value for ch in ' \t"\\'):
        return _quote(value)
    return value


class AGISession:
    """One FastAGI connection: its environment and a command channel.

    ``outcome`` is reported in the session log line and to the metrics hook;
    the handler sets it (for example ``"OK"`` or ``"REJECTED"``).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        env: dict[str, str],
        script: str,
        query: dict[str, str],
    ) -> None:
        self.env = env
        self.script = script
        self.query = query
        self.hung_up = False
        self.outcome: str | None = None
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        # Count of replies still on the wire for commands whose caller was
        # cancelled (by the deadline or its own timeout). The next command reads
        # and drops them first, so it does not take an earlier command's reply.
        self._unread_replies = 0

    @property
    def uniqueid(self) -> str:
        """The channel's ``agi_uniqueid``, or an empty string."""
        return self.env.get("agi_uniqueid", "")

    @property
    def channel(self) -> str:
        """The channel name from ``agi_channel``, or an empty string."""
        return self.env.get("agi_channel", "")

    async def command(self, line: str) -> Reply:
        """Send one command line and return its ``200`` reply.

        Raises ``AGIInvalidCommand`` (510), ``AGIDeadChannel`` (511),
        ``AGIUsageError`` (520), ``AGIProtocolError`` for any other reply and
        ``AGIConnectionClosed`` on EOF. ``HANGUP`` notices read on the way set
        ``hung_up`` and are skipped.
        """
        if "\n" in line or "\r" in line:
            raise ValueError(f"invalid AGI command {line!r}: contains a line break")
        async with self._lock:
            await self._skip_abandoned_replies(line)
            self._writer.write(line.encode("utf-8") + b"\n")
            self._unread_replies += 1
            try:
                await self._writer.drain()
            except ConnectionError as exc:
                raise AGIConnectionClosed(
                    f"connection lost while sending {line!r}"
                ) from exc
            lines = await self._read_reply_lines(line)
            self._unread_replies -= 1
            return _to_reply(line, lines)

    async def get_variable(self, name: str) -> str | None:
        """Return the value of a channel variable or function, None if unset."""
        reply = await self.command(f"GET VARIABLE {_format_name(name, 'name')}")
        return self._variable_value(reply)

    async def get_full_variable(self, expression: str) -> str | None:
        """Return ``expression`` with ``${...}`` expanded by Asterisk.

        The result is None (``200 result=0``) only when the channel is not
        found, because Asterisk expands an unset variable to an empty string.
        """
        formatted = _format_name(expression, "expression")
        reply = await self.command(f"GET FULL VARIABLE {formatted}")
        return self._variable_value(reply)

    async def set_variable(self, name: str, value: str) -> None:
        """Set a channel variable or function such as ``CDR(x)``."""
        if "\n" in value or "\r" in value:
            raise ValueError(
                f"invalid value {value!r} for {name}: must not contain a line break"
            )
        formatted = _format_name(name, "name")
        await self.command(f"SET VARIABLE {formatted} {_quote(value)}")

    async def verbose(self, message: str, level: int = 1) -> None:
        """Write ``message`` to the Asterisk console at verbosity ``level``."""
        if not 1 <= level <= 4:
            raise ValueError(f"invalid verbose level {level}: expected 1 to 4")
        single_line = message.replace("\r", " ").replace("\n", " ")
        await self.command(f"VERBOSE {_quote(single_line)} {level}")

    def _variable_value(self, reply: Reply) -> str | None:
        if reply.result == "0":
            return None
        if reply.result == "1":
            return reply.data if reply.data is not None else ""
        raise AGIProtocolError("GET VARIABLE", reply.text)

    async def _read_line(self, command: str) -> str:
        try:
            raw = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise AGIConnectionClosed(
                f"connection closed while waiting for the reply to {command!r}"
            ) from exc
        except asyncio.LimitOverrunError as exc:
            raise AGIProtocolError(
                command, f"<reply line over {MAX_LINE_BYTES} bytes>"
            ) from exc
        return _decode_line(raw)

    async def _read_reply_line(self, command: str) -> str:
        """Read the next line that is not a HANGUP notice."""
        while True:
            line = await self._read_line(command)
            if line == _HANGUP:
                self.hung_up = True
                continue
            return line

    async def _skip_abandoned_replies(self, command: str) -> None:
        while self._unread_replies:
            lines = await self._read_reply_lines(command)
            self._unread_replies -= 1
            logger.debug("Dropped the reply of a cancelled AGI command: %r", lines)

    async def _read_reply_lines(self, command: str) -> list[str]:
        """Read one reply: a single line, or a 520- block through its 520 line."""
        lines = [await self._read_reply_line(command)]
        if lines[0].startswith("520-"):
            while not lines[-1].startswith("520 "):
                lines.append(await self._read_reply_line(command))

        return lines


def _to_reply(command: str, lines: list[str]) -> Reply:
    """Parse a ``200`` reply or raise the error for the reply's code."""
    first = lines[0]
    match = _STATUS_LINE.fullmatch(first)
    if match is None:
        raise AGIProtocolError(command, first)
    code = int(match["code"])
    if code == 200 and match["sep"] == " ":
        return parse_reply(first)
    error = _COMMAND_ERRORS.get(code)
    if error is None:
        raise AGIProtocolError(command, first)
    raise error(command, "\n".join(lines))


Handler = Callable[[AGISession], Awaitable[None]]
SessionEndHook = Callable[[str, str, float], None]


def split_script(network_script: str) -> tuple[str, dict[str, str]]:
    """Split ``agi_network_script`` into the script name and its query.

    The query keeps the first value of each key, URL-decoded.
    """
    path, _, query_string = network_script.partition("?")
    parsed = parse_qs(query_string, keep_blank_values=True)
    query = {key: values[0] for key, values in parsed.items()}

    return path.lstrip("/"), query


class FastAGIServer:
    """An asyncio FastAGI server that routes each session by script name.

    Each handler runs under ``asyncio.timeout(deadline)``. On expiry the
    handler is cancelled so that its ``finally`` blocks run. The handler must
    shield cleanup that has to finish, such as releasing a reservation. The
    environment block must also arrive within ``deadline``.
    """

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        deadline: float,
        max_sessions: int,
        max_header_bytes: int = 16384,
        on_session_end: SessionEndHook | None = None,
        close_timeout: float = CLOSE_TIMEOUT_SECONDS,
        linger: float = LINGER_SECONDS,
    ) -> None:
        if deadline <= 0:
            raise ValueError(f"invalid deadline {deadline}: expected seconds > 0")
        if max_sessions < 1:
            raise ValueError(f"invalid max_sessions {max_sessions}: expected >= 1")
        if max_header_bytes < 256:
            raise ValueError(
                f"invalid max_header_bytes {max_header_bytes}: expected >= 256"
            )
        self._handlers = dict(handlers)
        self._deadline = deadline
        self._max_sessions = max_sessions
        self._max_header_bytes = max_header_bytes
        self._on_session_end = on_session_end
        self._close_timeout = close_timeout
        self._linger = linger
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self, host: str, port: int) -> None:
        """Start listening; ``port`` 0 picks a free port (see ``port``)."""
        if self._server is not None:
            raise RuntimeError("FastAGI server already started")
        self._server = await asyncio.start_server(
            self._on_connection,
            host,
            port,
            limit=max(MAX_LINE_BYTES, self._max_header_bytes),
        )
        logger.info(
            "FastAGI server listening on %s, scripts: %s",
            ", ".join(str(sock.getsockname()) for sock in self.sockets),
            ", ".join(sorted(self._handlers)),
        )

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets; empty before ``start``."""
        if self._server is None:
            return ()
        return tuple(self._server.sockets)

    @property
    def port(self) -> int:
        """The port of the first listening socket."""
        if not self.sockets:
            raise RuntimeError("FastAGI server is not started")
        port: int = self.sockets[0].getsockname()[1]
        return port

    @property
    def active_sessions(self) -> int:
        """The number of connections being served."""
        return len(self._sessions)

    async def close(self) -> None:
        """Stop accepting, give sessions ``close_timeout`` seconds, cancel the rest."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        running = set(self._sessions)
        if running:
            logger.info("Waiting for %d FastAGI sessions to end", len(running))
            _, pending = await asyncio.wait(running, timeout=self._close_timeout)
            for task in pending:
                task.cancel()
            if pending:
                logger.warning(
                    "Cancelled %d FastAGI sessions still running after %.1f s",
                    len(pending),
                    self._close_timeout,
                )
                await asyncio.wait(pending)
        await self._server.wait_closed()
        self._server = None
        self._closing = False
        logger.info("FastAGI server stopped")

    async def __aenter__(self) -> FastAGIServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        if self._closing:
            logger.warning("Rejected FastAGI connection from %s: shutting down", peer)
            writer.close()
            await _wait_closed(writer)
            return
        if len(self._sessions) >= self._max_sessions:
            logger.warning(
                "Rejected FastAGI connection from %s: %d sessions running, "
                "max_sessions is %d",
                peer,
                len(self._sessions),
                self._max_sessions,
            )
            writer.close()
            await _wait_closed(writer)
            self._report("", Outcome.OVER_MAX_SESSIONS, 0.0)
            return

        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._serve(reader, writer, peer)
        finally:
            self._sessions.discard(task)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: object,
    ) -> None:
        started = time.monotonic()
        env: dict[str, str] = {}
        script = ""
        outcome: str = Outcome.ERROR
        try:
            try:
                async with asyncio.timeout(self._deadline):
                    env = await read_environment(reader, self._max_header_bytes)
            except (AGIEnvironmentInvalid, TimeoutError) as exc:
                reason = str(exc) or f"no complete block within {self._deadline} s"
                logger.warning(
                    "Dropped FastAGI connection from %s: invalid environment: %s",
                    peer,
                    reason,
                )
                outcome = Outcome.BAD_ENVIRONMENT
                return

            session, outcome = self._route(reader, writer, env, peer)
            if session is None:
                return
            script = session.script
            outcome = await self._run_handler(session)
        except asyncio.CancelledError:
            outcome = Outcome.CANCELLED
            raise
        finally:
            try:
                await self._finish(reader, writer)
            finally:
                self._log_end(env, script, outcome, time.monotonic() - started)

    def _route(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        env: dict[str, str],
        peer: object,
    ) -> tuple[AGISession | None, str]:
        network_script = env.get("agi_network_script")
        uniqueid = env.get("agi_uniqueid", "")
        if network_script is None:
            logger.warning(
                "Closed FastAGI session %s from %s: agi_network_script missing, "
                "the AGI URL needs a script path",
                uniqueid,
                peer,
            )
            return None, Outcome.NO_SCRIPT

        script, query = split_script(network_script)
        if script not in self._handlers:
            logger.warning(
                "Closed FastAGI session %s from %s: unknown script %r, "
                "expected one of %s",
                uniqueid,
                peer,
                script,
                ", ".join(sorted(self._handlers)),
            )
            return None, Outcome.UNKNOWN_SCRIPT

        return AGISession(reader, writer, env, script, query), Outcome.OK

    async def _run_handler(self, session: AGISession) -> str:
        handler = self._handlers[session.script]
        timeout = asyncio.timeout(self._deadline)
        try:
            async with timeout:
                await handler(session)
        except TimeoutError:
            # Only the deadline's own expiry is a session timeout. A
            # TimeoutError from inside the handler is a handler failure.
            if not timeout.expired():
                logger.exception(
                    "FastAGI handler %s timed out on channel %s (uniqueid %s)",
                    session.script,
                    session.channel,
                    session.uniqueid,
                )
                return Outcome.ERROR
        except AGIConnectionClosed as exc:
            logger.warning(
                "FastAGI session %s %s: %s", session.script, session.uniqueid, exc
            )
            return Outcome.DISCONNECTED
        except asyncio.CancelledError:
            logger.warning(
                "FastAGI session %s %s cancelled", session.script, session.uniqueid
            )
            raise
        except Exception:
            logger.exception(
                "FastAGI handler %s failed on channel %s (uniqueid %s)",
                session.script,
                session.channel,
                session.uniqueid,
            )
            return Outcome.ERROR

        # A handler that swallowed the cancellation still ran out of time.
        if timeout.expired():
            logger.warning(
                "FastAGI session %s %s exceeded its deadline of %.1f s",
                session.script,
                session.uniqueid,
                self._deadline,
            )
            return Outcome.TIMEOUT
        return session.outcome or Outcome.OK

    async def _finish(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Half-close, drain what Asterisk still sends (its final HANGUP), close."""
        try:
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
            async with asyncio.timeout(self._linger):
                while await reader.read(4096):
                    pass
        except TimeoutError:
            logger.debug("Asterisk kept the FastAGI connection open after half-close")
        except OSError as exc:
            logger.debug("FastAGI connection failed while closing: %s", exc)
        finally:
            writer.close()
            await _wait_closed(writer)

    def _log_end(
        self, env: Mapping[str, str], script: str, outcome: str, seconds: float
    ) -> None:
        logger.info(
            "FastAGI session ended: script=%s uniqueid=%s channel=%s "
            "outcome=%s duration_ms=%d",
            script,
            env.get("agi_uniqueid", ""),
            env.get("agi_channel", ""),
            outcome,
            round(seconds * 1000),
        )
        self._report(script, outcome, seconds)

    def _report(self, script: str, outcome: str, seconds: float) -> None:
        if self._on_session_end is None:
            return
        try:
            self._on_session_end(script, str(outcome), seconds)
        except Exception:
            logger.exception(
                "on_session_end hook failed for script %r outcome %s", script, outcome
            )


async def _wait_closed(writer: asyncio.StreamWriter) -> None:
    # wait_closed() re-raises the error that broke the connection, which no
    # longer matters once the connection is closed.
    with contextlib.suppress(OSError):
        await writer.wait_closed()
