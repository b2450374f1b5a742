"""FastAGI protocol tests against Asterisk's side replayed from recorded traffic.

The transcripts were recorded from Asterisk 22.10.1. The replay sends its
lines byte for byte, so these tests check the parser against real framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agi.fastagi import (
    AGICommandError,
    AGIDeadChannel,
    AGIInvalidCommand,
    AGISession,
    AGIUsageError,
    FastAGIServer,
    Handler,
    Outcome,
    parse_reply,
    read_environment,
    split_script,
)
from agi.peer import build_env, run_agi_session, split_agi_arguments

pytestmark = pytest.mark.timeout(20)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "asterisk-22"
TRANSCRIPTS = sorted(FIXTURES.glob("*/agi-*.txt"))
HOST = "127.0.0.1"
WAIT_SECONDS = 5.0
VALUE_REPLY = re.compile(r"200 result=1 \((.*)\)")

SessionEnd = tuple[str, str, float]


# --- recorded transcripts -----------------------------------------------------


@dataclass
class Exchange:
    """One command the recorder sent and the lines Asterisk sent after it."""

    command: bytes
    replies: list[bytes] = field(default_factory=list)


@dataclass
class Transcript:
    """An ``agi-*.txt`` file split into the phases of a session."""

    environment: list[bytes]
    prelude: list[bytes]
    exchanges: list[Exchange]
    after_half_close: list[bytes]

    @property
    def env(self) -> dict[str, str]:
        lines = [line.decode("utf-8") for line in self.environment if line]
        return dict(line.split(": ", 1) for line in lines)

    @property
    def hangup_before_close(self) -> bool:
        lines = self.prelude + [line for ex in self.exchanges for line in ex.replies]
        return b"HANGUP" in lines


def load_transcript(path: Path) -> Transcript:
    environment: list[bytes] = []
    prelude: list[bytes] = []
    exchanges: list[Exchange] = []
    in_environment = True
    server_half_closed_first = False
    for line in path.read_bytes().split(b"\n"):
        if line.startswith(b"#"):
            server_half_closed_first |= b"server half-closed first" in line
        elif line.startswith(b"A: ") and in_environment:
            environment.append(line[3:])
            in_environment = line != b"A: "
        elif line.startswith(b"A: "):
            (exchanges[-1].replies if exchanges else prelude).append(line[3:])
        elif line.startswith(b"S: "):
            exchanges.append(Exchange(line[3:]))

    # The last HANGUP is Asterisk's reply to the half-close, not to a command.
    after_half_close: list[bytes] = []
    last = exchanges[-1].replies if exchanges else prelude
    if server_half_closed_first and last and last[-1] == b"HANGUP":
        after_half_close.append(last.pop())

    return Transcript(environment, prelude, exchanges, after_half_close)


def arguments_of(command: bytes) -> tuple[str, ...]:
    return tuple(split_agi_arguments(command.decode("utf-8")))


def transcript_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def recorded_reply(path: Path, command: bytes) -> bytes:
    """Return the reply lines recorded for ``command``, HANGUP lines removed."""
    for exchange in load_transcript(path).exchanges:
        if exchange.command == command:
            lines = [line for line in exchange.replies if line != b"HANGUP"]
            return b"".join(line + b"\n" for line in lines)
    raise LookupError(f"{command!r} not recorded in {path}")


# --- Asterisk's side ----------------------------------------------------------


class ReplayAsterisk:
    """Asterisk's side of one recorded session, replying from a reply map."""

    def __init__(self, transcript: Transcript) -> None:
        self.transcript = transcript
        self.received: list[bytes] = []
        self.closed_by_server = False
        self._replies = {
            arguments_of(exchange.command): exchange.replies
            for exchange in transcript.exchanges
        }

    def reply_to(self, command: bytes) -> list[bytes]:
        arguments = arguments_of(command)
        recorded = self._replies.get(arguments)
        if recorded is not None:
            return recorded
        if arguments[:2] == ("GET", "VARIABLE") or arguments[:3] == (
            "GET",
            "FULL",
            "VARIABLE",
        ):
            return [b"200 result=0"]
        if arguments[:2] == ("SET", "VARIABLE") or arguments[:1] == ("VERBOSE",):
            return [b"200 result=1"]
        return [b"510 Invalid or unknown command"]

    async def run(self, port: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            opening = self.transcript.environment + self.transcript.prelude
            writer.write(b"".join(line + b"\n" for line in opening))
            await writer.drain()
            while True:
                async with asyncio.timeout(WAIT_SECONDS):
                    raw = await reader.readline()
                if not raw.endswith(b"\n"):
                    break
                self.received.append(raw[:-1])
                replies = self.reply_to(raw[:-1])
                writer.write(b"".join(line + b"\n" for line in replies))
                await writer.drain()

            self.closed_by_server = True
            after = self.transcript.after_half_close
            writer.write(b"".join(line + b"\n" for line in after))
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()


class ScriptedAsterisk:
    """Asterisk's side that replies to the n-th command with the n-th reply blob."""

    def __init__(
        self,
        env: dict[str, str],
        replies: list[bytes],
        holds: dict[int, asyncio.Event] | None = None,
    ) -> None:
        self.env = env
        self.replies = list(replies)
        # Reply n is sent only once holds[n] is set.
        self.holds = holds or {}
        self.received: list[str] = []
        self.closed_by_server = False

    async def run(self, port: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(env_bytes(self.env))
            await writer.drain()
            while True:
                async with asyncio.timeout(WAIT_SECONDS):
                    raw = await reader.readline()
                if not raw.endswith(b"\n"):
                    break
                self.received.append(raw[:-1].decode())
                hold = self.holds.get(len(self.received) - 1)
                if hold is not None:
                    await asyncio.wait_for(hold.wait(), WAIT_SECONDS)
                writer.write(self.replies.pop(0))
                await writer.drain()
            self.closed_by_server = True
            writer.write(b"HANGUP\n")
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()


def env_bytes(env: dict[str, str]) -> bytes:
    lines = "".join(f"{name}: {value}\n" for name, value in env.items())
    return (lines + "\n").encode("utf-8")


def sample_env(script: str = "authorize", **query: str) -> dict[str, str]:
    return build_env(
        script,
        "1796389402.0",
        "PJSIP/alice-00000001",
        "15555550101",
        callerid="alice",
        calleridname="Alice",
        query=query or None,
    )


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes, counting a reset as closed."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(WAIT_SECONDS):
            while chunk := await reader.read(4096):
                data += chunk
    return data


# --- server under test ----------------------------------------------------------


class Probe:
    """A handler that runs ``body`` and keeps what it raised for the test."""

    def __init__(self, body: Callable[[AGISession], Awaitable[None]]) -> None:
        self.body = body
        self.calls = 0
        self.called = asyncio.Event()
        self.error: BaseException | None = None
        self.session: AGISession | None = None

    async def __call__(self, session: AGISession) -> None:
        self.calls += 1
        self.session = session
        self.called.set()
        try:
            await self.body(session)
        except BaseException as exc:
            self.error = exc
            raise

    def raise_error(self) -> None:
        if self.error is not None and not isinstance(
            self.error, asyncio.CancelledError
        ):
            raise self.error


async def do_nothing(session: AGISession) -> None:
    return None


@contextlib.asynccontextmanager
async def running_server(
    handlers: dict[str, Handler],
    *,
    deadline: float = WAIT_SECONDS,
    max_sessions: int = 10,
    max_header_bytes: int = 16384,
    close_timeout: float = 1.0,
) -> AsyncIterator[tuple[FastAGIServer, asyncio.Queue[SessionEnd]]]:
    ended: asyncio.Queue[SessionEnd] = asyncio.Queue()
    server = FastAGIServer(
        handlers,
        deadline=deadline,
        max_sessions=max_sessions,
        max_header_bytes=max_header_bytes,
        on_session_end=lambda *end: ended.put_nowait(end),
        close_timeout=close_timeout,
        linger=1.0,
    )
    await server.start(HOST, 0)
    try:
        yield server, ended
    finally:
        await server.close()


async def next_end(ended: asyncio.Queue[SessionEnd]) -> SessionEnd:
    return await asyncio.wait_for(ended.get(), WAIT_SECONDS)


# --- replay of every recorded transcript -----------------------------------------


def expected_outcome(replies: list[bytes]) -> tuple[str, str | None]:
    """Return what a typed call should produce for the recorded reply lines."""
    lines = [line.decode("utf-8") for line in replies if line != b"HANGUP"]
    first = lines[0]
    if first == "200 result=0":
        return ("value", None)
    if match := VALUE_REPLY.fullmatch(first):
        return ("value", match[1])
    if first == "200 result=1":
        return ("value", None)
    errors = {
        "510": "AGIInvalidCommand",
        "511": "AGIDeadChannel",
        "520": "AGIUsageError",
    }
    return (errors[first[:3]], "\n".join(lines))


async def issue_like_recorder(
    session: AGISession, command: bytes
) -> tuple[str, str | None]:
    """Send ``command`` through the typed method the recorder's line maps to."""
    arguments = arguments_of(command)
    try:
        if arguments[:2] == ("GET", "VARIABLE") and len(arguments) == 3:
            return ("value", await session.get_variable(arguments[2]))
        if arguments[:3] == ("GET", "FULL", "VARIABLE") and len(arguments) == 4:
            return ("value", await session.get_full_variable(arguments[3]))
        if arguments[:2] == ("SET", "VARIABLE") and len(arguments) == 4:
            await session.set_variable(arguments[2], arguments[3])
            return ("value", None)
        if arguments[:1] == ("VERBOSE",) and len(arguments) == 3:
            await session.verbose(arguments[1], int(arguments[2]))
            return ("value", None)
        await session.command(command.decode("utf-8"))
        return ("value", None)
    except AGICommandError as exc:
        return (type(exc).__name__, exc.reply)


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=transcript_id)
async def test_replay_transcript_parsed_values(path: Path) -> None:
    transcript = load_transcript(path)
    observed: list[tuple[str, str | None]] = []

    async def like_recorder(session: AGISession) -> None:
        for exchange in transcript.exchanges:
            observed.append(await issue_like_recorder(session, exchange.command))

    probe = Probe(like_recorder)
    script = transcript.env["agi_network_script"]
    async with running_server({script: probe}) as (server, ended):
        asterisk = ReplayAsterisk(transcript)
        await asterisk.run(server.port)
        end = await next_end(ended)

    probe.raise_error()
    assert probe.session is not None
    assert probe.session.env == transcript.env
    assert probe.session.script == script
    assert probe.session.query == {}
    assert probe.session.uniqueid == transcript.env["agi_uniqueid"]
    assert probe.session.channel == transcript.env["agi_channel"]
    assert probe.session.hung_up == transcript.hangup_before_close
    assert observed == [expected_outcome(ex.replies) for ex in transcript.exchanges]
    assert [arguments_of(line) for line in asterisk.received] == [
        arguments_of(ex.command) for ex in transcript.exchanges
    ]
    assert asterisk.closed_by_server
    assert end[:2] == (script, "OK")


def test_replay_transcripts_found() -> None:
    assert len(TRANSCRIPTS) == 20


# --- replies: errors and framing ------------------------------------------------


async def test_reply_errors_recorded_no_desync() -> None:
    bad_syntax = FIXTURES / "11-bad-syntax" / "agi-authorize.txt"
    dead = FIXTURES / "08-hangup-during-agi" / "agi-authorize.txt"
    alice = b"200 result=1 (alice)\n"
    replies = [
        recorded_reply(bad_syntax, b"SET VARIABLE CG_LIMIT_MS"),
        alice,
        recorded_reply(bad_syntax, b"GET VARIABLE"),
        alice,
        recorded_reply(bad_syntax, b"FOO BAR"),
        alice,
        recorded_reply(dead, b"ANSWER"),
        alice,
        recorded_reply(dead, b'STREAM FILE beep ""'),
        b"200 result=1 ()\n",
    ]

    async def commands(session: AGISession) -> None:
        with pytest.raises(AGIUsageError) as usage:
            await session.command("SET VARIABLE CG_LIMIT_MS")
        assert usage.value.code == 520
        assert usage.value.usage == "Sets a variable to the current channel."
        assert await session.get_variable("CALLERID(num)") == "alice"

        with pytest.raises(AGIUsageError) as usage:
            await session.command("GET VARIABLE")
        assert "Example return code: 200 result=1 (testvariable)" in (usage.value.usage)
        assert usage.value.usage.count("\n") == 1
        assert await session.get_variable("CALLERID(num)") == "alice"

        with pytest.raises(AGIInvalidCommand) as invalid:
            await session.command("FOO BAR")
        assert invalid.value.code == 510
        assert await session.get_variable("CALLERID(num)") == "alice"

        with pytest.raises(AGIDeadChannel) as dead_channel:
            await session.command("ANSWER")
        assert dead_channel.value.code == 511
        assert await session.get_variable("CALLERID(num)") == "alice"

        with pytest.raises(AGIDeadChannel):
            await session.command('STREAM FILE beep ""')
        assert await session.get_variable("ANSWEREDTIME") == ""

    probe = Probe(commands)
    async with running_server({"authorize": probe}) as (server, ended):
        asterisk = ScriptedAsterisk(sample_env(), replies)
        await asterisk.run(server.port)
        await next_end(ended)

    probe.raise_error()
    assert asterisk.replies == []
    assert probe.session is not None
    assert not probe.session.hung_up


async def test_reply_hangup_before_reply_returns_reply() -> None:
    replies = [
        b"HANGUP\n200 result=1 (alice)\n",
        b"200 result=1 (1)\nHANGUP\n",
        b"200 result=1 (2)\n",
    ]
    hung_up_after: list[bool] = []

    async def commands(session: AGISession) -> None:
        assert await session.get_variable("CALLERID(num)") == "alice"
        hung_up_after.append(session.hung_up)
        assert await session.get_variable("FIRST") == "1"
        assert await session.get_variable("SECOND") == "2"

    probe = Probe(commands)
    async with running_server({"authorize": probe}) as (server, ended):
        await ScriptedAsterisk(sample_env(), replies).run(server.port)
        await next_end(ended)

    probe.raise_error()
    assert hung_up_after == [True]
    assert probe.session is not None
    assert probe.session.hung_up


async def test_reply_of_cancelled_command_skipped() -> None:
    late = asyncio.Event()

    async def gives_up(session: AGISession) -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await session.get_variable("SLOW")
        late.set()
        assert await session.get_variable("NEXT") == "next"

    probe = Probe(gives_up)
    replies = [b"HANGUP\n200 result=1 (slow)\n", b"200 result=1 (next)\n"]
    async with running_server({"authorize": probe}) as (server, ended):
        asterisk = ScriptedAsterisk(sample_env(), replies, holds={0: late})
        await asterisk.run(server.port)
        await next_end(ended)

    probe.raise_error()
    assert asterisk.received == ["GET VARIABLE SLOW", "GET VARIABLE NEXT"]
    assert probe.session is not None
    assert probe.session.hung_up


async def test_reply_unexpected_code_raises_protocol_error() -> None:
    from agi.fastagi import AGIProtocolError

    async def commands(session: AGISession) -> None:
        with pytest.raises(AGIProtocolError) as error:
            await session.command("NOOP")
        assert error.value.reply == "garbage"
        assert await session.get_variable("X") == "next"

    probe = Probe(commands)
    replies = [b"garbage\n", b"200 result=1 (next)\n"]
    async with running_server({"authorize": probe}) as (server, ended):
        await ScriptedAsterisk(sample_env(), replies).run(server.port)
        await next_end(ended)

    probe.raise_error()


async def test_reply_eof_ends_session_disconnected() -> None:
    async def commands(session: AGISession) -> None:
        await session.get_variable("X")

    probe = Probe(commands)
    async with running_server({"authorize": probe}) as (server, ended):
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(env_bytes(sample_env()))
        await reader.readline()
        writer.close()
        await writer.wait_closed()
        end = await next_end(ended)

    assert end[:2] == ("authorize", Outcome.DISCONNECTED)


@pytest.mark.parametrize(
    ("line", "result", "data", "endpos"),
    [
        ("200 result=-1", "-1", None, None),
        ("200 result=0 endpos=1234", "0", None, 1234),
        ("200 result=1 (timeout)", "1", "timeout", None),
        ("200 result=1 ()", "1", "", None),
        ("200 result=1 (a (b) c)", "1", "a (b) c", None),
        ("200 result=1 (x) endpos=5)", "1", "x) endpos=5", None),
        ("200 result=0 (hangup) endpos=160", "0", "hangup", 160),
        ("200 result=49", "49", None, None),
    ],
)
def test_parse_reply_fields(
    line: str, result: str, data: str | None, endpos: int | None
) -> None:
    reply = parse_reply(line)
    assert reply.code == 200
    assert reply.result == result
    assert reply.data == data
    assert reply.endpos == endpos
    assert reply.text == line


def test_parse_reply_invalid_line_raises() -> None:
    with pytest.raises(ValueError, match="invalid AGI reply line"):
        parse_reply("HANGUP")


# --- environment block ---------------------------------------------------------


async def feed_in_chunks(reader: asyncio.StreamReader, chunks: list[bytes]) -> None:
    for chunk in chunks:
        reader.feed_data(chunk)
        await asyncio.sleep(0)


async def test_environment_one_byte_chunks() -> None:
    transcript = load_transcript(FIXTURES / "12-utf8-callerid" / "agi-authorize.txt")
    data = b"".join(line + b"\n" for line in transcript.environment)
    reader = asyncio.StreamReader()

    parsing = asyncio.create_task(read_environment(reader, 16384))
    await feed_in_chunks(reader, [data[i : i + 1] for i in range(len(data))])
    env = await asyncio.wait_for(parsing, WAIT_SECONDS)

    assert env == transcript.env
    assert env["agi_calleridname"] == "Zoë Ñandú"
    assert env["agi_accountcode"] == ""


async def test_environment_utf8_split_across_reads() -> None:
    transcript = load_transcript(FIXTURES / "12-utf8-callerid" / "agi-authorize.txt")
    data = b"".join(line + b"\n" for line in transcript.environment)
    split = data.index("ë".encode()) + 1
    reader = asyncio.StreamReader()

    parsing = asyncio.create_task(read_environment(reader, 16384))
    await feed_in_chunks(reader, [data[:split]])
    assert not parsing.done()
    await feed_in_chunks(reader, [data[split:]])
    env = await asyncio.wait_for(parsing, WAIT_SECONDS)

    assert env["agi_calleridname"] == "Zoë Ñandú"


async def test_environment_tolerant_lines() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(
        b"agi_network: yes\r\n"
        b"agi_accountcode:\n"
        b"agi_context:callgate-outbound\n"
        b"no colon here\n"
        b"agi_arg_1: a: b\n"
        b"agi_calleridname: \xff broken\n"
        b"\r\n"
        b"HANGUP\n"
    )

    env = await read_environment(reader, 16384)

    assert env == {
        "agi_network": "yes",
        "agi_accountcode": "",
        "agi_context": "callgate-outbound",
        "agi_arg_1": "a: b",
        "agi_calleridname": "\ufffd broken",
    }
    assert await reader.readline() == b"HANGUP\n"


async def test_environment_one_byte_chunks_over_socket() -> None:
    env = sample_env()
    env["agi_calleridname"] = "Zoë Ñandú"
    probe = Probe(do_nothing)
    async with running_server({"authorize": probe}) as (server, ended):
        reader, writer = await asyncio.open_connection(HOST, server.port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = env_bytes(env)
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        await read_until_closed(reader)
        writer.close()
        await writer.wait_closed()
        await next_end(ended)

    assert probe.session is not None
    assert probe.session.env == env


async def test_environment_eof_before_blank_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="callgate.agi")
    probe = Probe(do_nothing)
    async with running_server({"authorize": probe}) as (server, ended):
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(env_bytes(sample_env())[:200])
        writer.write_eof()
        await read_until_closed(reader)
        writer.close()
        await writer.wait_closed()
        end = await next_end(ended)

    assert probe.calls == 0
    assert end[:2] == ("", Outcome.BAD_ENVIRONMENT)
    assert "connection closed inside the environment block" in caplog.text


async def test_environment_over_max_header_bytes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="callgate.agi")
    env = sample_env()
    env["agi_calleridname"] = "x" * 600
    probe = Probe(do_nothing)
    async with running_server({"authorize": probe}, max_header_bytes=512) as (
        server,
        ended,
    ):
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(env_bytes(env))
        await read_until_closed(reader)
        writer.close()
        await writer.wait_closed()
        end = await next_end(ended)

    assert probe.calls == 0
    assert end[:2] == ("", Outcome.BAD_ENVIRONMENT)
    assert "exceeds 512 bytes" in caplog.text


# --- routing ------------------------------------------------------------------------


async def test_routing_unknown_script(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="callgate.agi")
    probe = Probe(do_nothing)
    async with running_server({"authorize": probe}) as (server, ended):
        result = await run_agi_session(
            HOST, server.port, env=sample_env("nosuch"), variables={}
        )
        end = await next_end(ended)

    assert probe.calls == 0
    assert result.closed_by_server
    assert result.commands == []
    assert end[:2] == ("", Outcome.UNKNOWN_SCRIPT)
    assert "unknown script 'nosuch'" in caplog.text


async def test_routing_missing_script(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="callgate.agi")
    env = sample_env()
    del env["agi_network_script"]
    probe = Probe(do_nothing)
    async with running_server({"authorize": probe}) as (server, ended):
        result = await run_agi_session(HOST, server.port, env=env, variables={})
        end = await next_end(ended)

    assert probe.calls == 0
    assert result.closed_by_server
    assert end[:2] == ("", Outcome.NO_SCRIPT)
    assert "agi_network_script missing" in caplog.text


async def test_routing_script_with_query() -> None:
    probe = Probe(do_nothing)
    async with running_server({"authorize": probe}) as (server, ended):
        env = sample_env(tenant="acme")
        await run_agi_session(HOST, server.port, env=env, variables={})
        await next_end(ended)

    assert env["agi_network_script"] == "authorize?tenant=acme"
    assert probe.session is not None
    assert probe.session.script == "authorize"
    assert probe.session.query == {"tenant": "acme"}


def test_split_script_query_decoding() -> None:
    script, query = split_script("/authorize?tenant=acme&name=Zo%C3%AB+N&tenant=b&e=")

    assert script == "authorize"
    assert query == {"tenant": "acme", "name": "Zoë N", "e": ""}


# --- session lifecycle ------------------------------------------------------------


async def test_deadline_expiry_closes_socket_and_runs_finally() -> None:
    cleanup: list[str] = []

    async def stalls(session: AGISession) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)
            cleanup.append("released")

    probe = Probe(stalls)
    async with running_server({"authorize": probe}, deadline=0.2) as (server, ended):
        started = time.monotonic()
        result = await run_agi_session(
            HOST, server.port, env=sample_env(), variables={}
        )
        elapsed = time.monotonic() - started
        end = await next_end(ended)

    assert result.closed_by_server
    assert cleanup == ["released"]
    assert isinstance(probe.error, asyncio.CancelledError)
    assert end[:2] == ("authorize", Outcome.TIMEOUT)
    assert elapsed < 2


async def test_deadline_swallowed_cancel_still_timeout() -> None:
    async def swallows(session: AGISession) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    async with running_server({"authorize": swallows}, deadline=0.2) as (
        server,
        ended,
    ):
        result = await run_agi_session(
            HOST, server.port, env=sample_env(), variables={}
        )
        end = await next_end(ended)

    assert result.closed_by_server
    assert end[:2] == ("authorize", Outcome.TIMEOUT)


async def test_max_sessions_exceeded_closes_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="callgate.agi")
    release = asyncio.Event()

    async def waits(session: AGISession) -> None:
        await release.wait()

    probe = Probe(waits)
    async with running_server({"authorize": probe}, max_sessions=1) as (
        server,
        ended,
    ):
        first = asyncio.create_task(
            run_agi_session(HOST, server.port, env=sample_env(), variables={})
        )
        await asyncio.wait_for(probe.called.wait(), WAIT_SECONDS)
        second = await run_agi_session(
            HOST, server.port, env=sample_env(), variables={}
        )
        rejected = await next_end(ended)
        release.set()
        first_result = await asyncio.wait_for(first, WAIT_SECONDS)
        accepted = await next_end(ended)

    assert second.closed_by_server
    assert second.commands == []
    assert rejected[:2] == ("", Outcome.OVER_MAX_SESSIONS)
    assert first_result.closed_by_server
    assert accepted[:2] == ("authorize", Outcome.OK)
    assert probe.calls == 1
    assert "max_sessions is 1" in caplog.text


async def test_server_close_cancels_running_session() -> None:
    cleanup: list[str] = []

    async def stalls(session: AGISession) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleanup.append("released")

    probe = Probe(stalls)
    async with running_server({"authorize": probe}, close_timeout=0.1) as (
        server,
        ended,
    ):
        peer = asyncio.create_task(
            run_agi_session(HOST, server.port, env=sample_env(), variables={})
        )
        await asyncio.wait_for(probe.called.wait(), WAIT_SECONDS)
        await asyncio.wait_for(server.close(), WAIT_SECONDS)
        result = await asyncio.wait_for(peer, WAIT_SECONDS)
        end = await next_end(ended)

    assert cleanup == ["released"]
    assert result.closed_by_server
    assert end[:2] == ("authorize", Outcome.CANCELLED)
    assert server.active_sessions == 0


async def test_session_end_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="callgate.agi")

    async def rejects(session: AGISession) -> None:
        session.outcome = "REJECTED"

    async with running_server({"authorize": rejects}) as (server, ended):
        await run_agi_session(HOST, server.port, env=sample_env(), variables={})
        end = await next_end(ended)

    ended_lines = [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith("FastAGI session ended")
    ]
    assert len(ended_lines) == 1
    assert "script=authorize" in ended_lines[0]
    assert "uniqueid=1796389402.0" in ended_lines[0]
    assert "channel=PJSIP/alice-00000001" in ended_lines[0]
    assert "outcome=REJECTED" in ended_lines[0]
    assert "duration_ms=" in ended_lines[0]
    assert end[:2] == ("authorize", "REJECTED")


async def test_handler_error_logged_outcome_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="callgate.agi")

    async def fails(session: AGISession) -> None:
        raise RuntimeError("boom")

    async with running_server({"authorize": fails}) as (server, ended):
        result = await run_agi_session(
            HOST, server.port, env=sample_env(), variables={}
        )
        end = await next_end(ended)

    assert result.closed_by_server
    assert end[:2] == ("authorize", Outcome.ERROR)
    assert "FastAGI handler authorize failed" in caplog.text


async def test_handler_own_timeout_outcome_error() -> None:
    async def times_out(session: AGISession) -> None:
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()

    async with running_server({"authorize": times_out}) as (server, ended):
        await run_agi_session(HOST, server.port, env=sample_env(), variables={})
        end = await next_end(ended)

    assert end[:2] == ("authorize", Outcome.ERROR)


# --- peer -------------------------------------------------------------------------


async def test_peer_set_variable_unquoted() -> None:
    tricky = 'say "hi" \\ bye'

    async def sets(session: AGISession) -> None:
        await session.set_variable("CALLERID(num)", "+4930 123456")
        await session.set_variable("NOTE", tricky)
        await session.set_variable("EMPTY", "")
        assert await session.get_variable("NOTE") == tricky
        with pytest.raises(ValueError, match="line break"):
            await session.set_variable("BAD", "a\nb")
        with pytest.raises(ValueError, match="line break"):
            await session.command("NOOP\nANSWER")
        await session.verbose("line one\nline two", 3)

    probe = Probe(sets)
    async with running_server({"authorize": probe}) as (server, ended):
        result = await run_agi_session(
            HOST, server.port, env=sample_env(), variables={}
        )
        await next_end(ended)

    probe.raise_error()
    assert result.variables_set == {
        "CALLERID(num)": "+4930 123456",
        "NOTE": tricky,
        "EMPTY": "",
    }
    assert list(result.variables_set) == ["CALLERID(num)", "NOTE", "EMPTY"]
    assert result.commands[0] == 'SET VARIABLE CALLERID(num) "+4930 123456"'
    assert result.commands[-1] == 'VERBOSE "line one line two" 3'
    assert result.closed_by_server


async def test_peer_variables_unset_and_empty() -> None:
    values: dict[str, str | None] = {}

    async def reads(session: AGISession) -> None:
        values["set"] = await session.get_variable("DIALSTATUS")
        values["empty"] = await session.get_variable("ANSWEREDTIME")
        values["none"] = await session.get_variable("DIALEDTIME")
        values["missing"] = await session.get_variable("NOSUCH")
        values["full"] = await session.get_full_variable("${DIALSTATUS}")
        values["full_unset"] = await session.get_full_variable("${NOSUCH}")
        values["full_text"] = await session.get_full_variable("${DIALSTATUS} x")

    probe = Probe(reads)
    variables = {"DIALSTATUS": "ANSWER", "ANSWEREDTIME": "", "DIALEDTIME": None}
    async with running_server({"settle": probe}) as (server, ended):
        result = await run_agi_session(
            HOST, server.port, env=sample_env("settle"), variables=variables
        )
        await next_end(ended)

    probe.raise_error()
    assert values == {
        "set": "ANSWER",
        "empty": "",
        "none": None,
        "missing": None,
        "full": "ANSWER",
        "full_unset": "",
        "full_text": "ANSWER x",
    }
    assert result.commands[-1] == 'GET FULL VARIABLE "${DIALSTATUS} x"'


async def test_peer_dead_channel_answers_511() -> None:
    async def on_dead_channel(session: AGISession) -> None:
        with pytest.raises(AGIDeadChannel):
            await session.command("ANSWER")
        assert session.hung_up
        with pytest.raises(AGIDeadChannel):
            await session.command('STREAM FILE beep ""')
        with pytest.raises(AGIInvalidCommand):
            await session.command("FOO BAR")
        assert await session.get_variable("CALLERID(num)") == "alice"

    probe = Probe(on_dead_channel)
    async with running_server({"authorize": probe}) as (server, ended):
        result = await run_agi_session(
            HOST,
            server.port,
            env=sample_env(),
            variables={"CALLERID(num)": "alice"},
            hangup_after_env=True,
        )
        await next_end(ended)

    probe.raise_error()
    assert result.commands == [
        "ANSWER",
        'STREAM FILE beep ""',
        "FOO BAR",
        "GET VARIABLE CALLERID(num)",
    ]


def test_peer_build_env_order_matches_recording() -> None:
    transcript = load_transcript(FIXTURES / "01-answered" / "agi-authorize.txt")
    recorded = transcript.env

    env = build_env(
        "authorize",
        recorded["agi_uniqueid"],
        recorded["agi_channel"],
        recorded["agi_extension"],
        callerid="alice",
        calleridname="Alice",
    )

    assert list(env) == list(recorded)
    assert env == {**recorded, "agi_threadid": env["agi_threadid"]}


@pytest.mark.parametrize(
    ("line", "arguments"),
    [
        ('VERBOSE "a b" 1', ["VERBOSE", "a b", "1"]),
        ('STREAM FILE beep ""', ["STREAM", "FILE", "beep", ""]),
        ('SET VARIABLE X "a \\"q\\" \\\\ b"', ["SET", "VARIABLE", "X", 'a "q" \\ b']),
        ("GET\tVARIABLE  X", ["GET", "VARIABLE", "X"]),
        ("SET VARIABLE X a\\ b", ["SET", "VARIABLE", "X", "a b"]),
    ],
)
def test_split_agi_arguments_cases(line: str, arguments: list[str]) -> None:
    assert split_agi_arguments(line) == arguments
