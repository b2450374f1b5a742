"""Live call control over AMI: interval funding, cuts, outages and restarts.

Asterisk's side is a scriptable AMI server on 127.0.0.1 written to the
protocol facts (banner, Login, Ping, CoreShowChannels lists, Hangup), plus a
FastAGI peer. Calls run on a clock ten times faster than real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import count

import pytest

from agi.control import NodeController, NodeStatus
from agi.fastagi import FastAGIServer
from agi.peer import build_env, run_agi_session
from agi.scripts import Scripts
from engine.calls import CallService
from engine.db import Database
from engine.settings import Settings
from tests.conftest import World, wait_until

HOST = "127.0.0.1"
NODE = "node1"
SCALE = 10.0
_ids = count(1)


class ScaledClock:
    """Wall-clock seconds that run SCALE times faster than real time."""

    def __init__(self, scale: float = SCALE) -> None:
        self.scale = scale
        self.base = time.time()
        self.start = time.monotonic()

    def __call__(self) -> float:
        return self.base + (time.monotonic() - self.start) * self.scale

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.scale)


def frame(**headers: str) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n"


@dataclass
class FakeAsterisk:
    """Asterisk's AMI side: replies to actions, emits events, records hangups."""

    channels: dict[str, str] = field(default_factory=dict)  # uniqueid -> channel
    hangups: list[tuple[str, float]] = field(default_factory=list)
    on_hangup: Callable[[str], None] | None = None
    clock: Callable[[], float] = time.time
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    logins: int = 0
    server: asyncio.Server | None = None
    actions: list[dict[str, str]] = field(default_factory=list)

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, HOST, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def emit(self, **headers: str) -> None:
        for writer in self.writers:
            if not writer.is_closing():
                writer.write(frame(**headers))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.writers.append(writer)
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                lines = raw.decode().strip().split("\r\n")
                action = dict(line.split(": ", 1) for line in lines if ": " in line)
                self._answer(writer, action)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if writer in self.writers:
                self.writers.remove(writer)
            writer.close()

    def _answer(self, writer: asyncio.StreamWriter, action: dict[str, str]) -> None:
        name = action.get("Action", "").lower()
        action_id = action.get("ActionID", "")
        self.actions.append(action)
        if name == "login":
            self.logins += 1
            writer.write(
                frame(
                    Response="Success",
                    ActionID=action_id,
                    Message="Authentication accepted",
                )
            )
            writer.write(
                frame(
                    Event="FullyBooted", Privilege="system,all", Status="Fully Booted"
                )
            )
        elif name == "ping":
            writer.write(
                frame(
                    Response="Success",
                    ActionID=action_id,
                    Ping="Pong",
                    Timestamp=f"{time.time():.6f}",
                )
            )
        elif name == "coreshowchannels":
            writer.write(
                frame(
                    Response="Success",
                    ActionID=action_id,
                    EventList="start",
                    Message="Channels will follow",
                )
            )
            for uniqueid, channel in self.channels.items():
                writer.write(
                    frame(
                        Event="CoreShowChannel",
                        ActionID=action_id,
                        Channel=channel,
                        Uniqueid=uniqueid,
                        Linkedid=uniqueid,
                        ChannelState="6",
                        ChannelStateDesc="Up",
                    )
                )
            writer.write(
                frame(
                    Event="CoreShowChannelsComplete",
                    ActionID=action_id,
                    EventList="Complete",
                    ListItems=str(len(self.channels)),
                )
            )
        elif name == "hangup":
            channel = action.get("Channel", "")
            known = channel in self.channels.values()
            writer.write(
                frame(
                    Response="Success" if known else "Error",
                    ActionID=action_id,
                    Message="Channel Hungup" if known else "No such channel",
                )
            )
            if known:
                self.hangups.append((channel, self.clock()))
                if self.on_hangup is not None:
                    self.on_hangup(channel)
        elif name == "logoff":
            writer.write(
                frame(
                    Response="Goodbye",
                    ActionID=action_id,
                    Message="Thanks for all the fish.",
                )
            )
        else:
            writer.write(frame(Response="Success", ActionID=action_id))


class CuttingProxy:
    """A loopback TCP proxy in front of the AMI server that can cut its links."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, HOST, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        self.links.append((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer),
            self._pipe(up_reader, writer),
            return_exceptions=True,
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def cut(self) -> None:
        """Deliver half a frame to callgate, then drop every link."""
        for client, upstream in self.links:
            client.write(b"Event: Newstate\r\nPrivilege: ca")
            client.transport.abort()
            upstream.transport.abort()
        self.links.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class Rig:
    calls: CallService
    controller: NodeController
    status: NodeStatus
    asterisk: FakeAsterisk
    agi: FastAGIServer
    clock: ScaledClock
    task: asyncio.Task[None]
    proxy: CuttingProxy


@pytest.fixture
async def rig(database: Database, settings: Settings) -> AsyncIterator[Rig]:
    clock = ScaledClock()
    asterisk = FakeAsterisk(clock=clock)
    proxy = CuttingProxy(await asterisk.start())
    port = await proxy.start()
    settings = settings.replace(
        ami_url=f"ami://callgate:secret@{HOST}:{port}",
        node=NODE,
        debit_interval=5,
        hangup_margin=1.0,
        settle_grace=2.0,
        hangup_removed_endpoints=True,
    )
    status = NodeStatus(database)
    calls = CallService(database, settings, interval_mode=status.connected)
    controller = NodeController(
        database, settings, calls, NODE, clock=clock, time_scale=SCALE
    )
    agi = FastAGIServer(Scripts(calls).handlers, deadline=2.0, max_sessions=200)
    await agi.start(HOST, 0)
    task = asyncio.create_task(controller.run())

    async def node_up() -> bool:
        await status.refresh()
        return status.connected(NODE)

    await wait_until(node_up, timeout=5)
    try:
        yield Rig(calls, controller, status, asterisk, agi, clock, task, proxy)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await agi.close()
        await proxy.close()
        await asterisk.close()


async def authorize(rig: Rig, sip: str = "alice") -> tuple[str, str, dict[str, str]]:
    sequence = next(_ids)
    uniqueid = f"{NODE}-1796390000.{sequence}"
    channel = f"PJSIP/{sip}-{sequence:08x}"
    env = build_env("authorize", uniqueid, channel, "15555550101")
    result = await run_agi_session(HOST, rig.agi.port, env=env, variables={})
    return uniqueid, channel, result.variables_set


async def talk(rig: Rig, uniqueid: str, channel: str, longest: float) -> int:
    """Answer the call, talk until cut or longest clock seconds, hang up, settle.

    ANSWEREDTIME is the peer's own answer-to-hangup time, rounded down.
    """
    cut = asyncio.Event()
    rig.asterisk.channels[uniqueid] = channel
    previous = rig.asterisk.on_hangup

    def hung_up(name: str) -> None:
        if name == channel:
            cut.set()
        elif previous is not None:
            previous(name)

    rig.asterisk.on_hangup = hung_up
    rig.asterisk.emit(Event="DialBegin", Channel=channel, Uniqueid=uniqueid)
    answered_at = rig.clock()
    rig.asterisk.emit(
        Event="DialEnd",
        Channel=channel,
        Uniqueid=uniqueid,
        DialStatus="ANSWER",
        Timestamp=f"{answered_at:.6f}",
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cut.wait(), timeout=longest / SCALE)
    answered = int(rig.clock() - answered_at)
    rig.asterisk.channels.pop(uniqueid, None)
    rig.asterisk.emit(Event="Hangup", Channel=channel, Uniqueid=uniqueid, Cause="16")
    env = build_env("settle", uniqueid, channel, "h")
    await run_agi_session(
        HOST,
        rig.agi.port,
        env=env,
        variables={
            "DIALSTATUS": "ANSWER",
            "ANSWEREDTIME": str(answered),
            "HANGUPCAUSE": "16",
            "UNIQUEID": uniqueid,
            "CALLGATE_ROUTE_INDEX": "1",
        },
    )
    return answered


async def test_interval_authorize_reserves_first_block(world: World, rig: Rig):
    await world.plan("retail", [("1", "0.04", 60, 60, "0")])
    await world.trunk("carrier", "retail")
    await world.client("alice", "retail", "0.12")

    results = await asyncio.gather(*(authorize(rig) for _ in range(100)))

    ok = [v for _, _, v in results if v["CALLGATE_STATUS"] == "OK"]
    assert len(ok) == 3
    assert await world.reserved("alice") == Decimal("0.12")


async def test_two_calls_cut_without_overdraft(world: World, rig: Rig):
    await world.plan("retail", [("1", "0.60", 1, 1, "0")])  # 0.01 a second
    await world.trunk("carrier", "retail")
    await world.client("alice", "retail", "1.20")  # 120 s in all
    first = await authorize(rig)
    second = await authorize(rig)

    talked = await asyncio.gather(
        talk(rig, first[0], first[1], 200), talk(rig, second[0], second[1], 200)
    )

    assert len(rig.asterisk.hangups) == 2
    assert sum(talked) <= 120
    balance = await world.balance("alice")
    assert balance >= 0
    assert balance == Decimal("1.20") - Decimal("0.01") * sum(talked)
    assert await world.reserved("alice") == 0


async def test_connect_fee_charged_once_over_intervals(world: World, rig: Rig):
    await world.plan("retail", [("1", "0.60", 1, 1, "0.10")])
    await world.trunk("carrier", "retail")
    await world.client("alice", "retail", "10")
    uniqueid, channel, variables = await authorize(rig)

    answered = await talk(rig, uniqueid, channel, 23)

    assert variables["CALLGATE_STATUS"] == "OK"
    assert answered >= 20
    assert await world.balance("alice") == Decimal(10) - Decimal("0.10") - (
        Decimal("0.01") * answered
    )
    assert await world.reserved("alice") == 0


async def test_outage_raises_to_limit_then_resync(world: World, rig: Rig):
    await world.plan("retail", [("1", "0.60", 1, 1, "0")])
    await world.trunk("carrier", "retail")
    await world.client("alice", "retail", "10")
    uniqueid, channel, variables = await authorize(rig)
    max_seconds = int(variables["CALLGATE_MAX_MS"]) // 1000
    rig.asterisk.channels[uniqueid] = channel
    rig.asterisk.emit(Event="DialBegin", Channel=channel, Uniqueid=uniqueid)
    rig.asterisk.emit(
        Event="DialEnd",
        Channel=channel,
        Uniqueid=uniqueid,
        DialStatus="ANSWER",
        Timestamp=f"{rig.clock():.6f}",
    )
    await wait_until(lambda: _reserved(world, "alice", lambda r: r > 0), timeout=3)
    interval_hold = await world.reserved("alice")

    rig.proxy.cut()
    await wait_until(lambda: not rig.controller.connected, timeout=3)
    await wait_until(
        lambda: _reserved(world, "alice", lambda r: r >= Decimal("0.01") * max_seconds),
        timeout=3,
    )
    # The channel ends while AMI is down; resync must close the session.
    rig.asterisk.channels.pop(uniqueid)
    await wait_until(
        lambda: rig.controller.connected and rig.asterisk.logins >= 2, timeout=10
    )
    await wait_until(lambda: _reserved(world, "alice", lambda r: r == 0), timeout=10)

    assert interval_hold < Decimal("0.01") * max_seconds
    async with world.db.pool.acquire() as connection:
        state = await connection.fetchval(
            "SELECT state FROM sessions WHERE uniqueid = $1", uniqueid
        )
    assert state == "settled"


async def _reserved(world: World, login: str, test: Callable[[Decimal], bool]) -> bool:
    return test(await world.reserved(login))


async def test_controller_restart_settles_each_call_once(
    database: Database, world: World, rig: Rig
):
    await world.plan("retail", [("1", "0.60", 1, 1, "0")])
    await world.trunk("carrier", "retail")
    await world.client("alice", "retail", "10")
    calls = [await authorize(rig) for _ in range(3)]
    talks = [asyncio.create_task(talk(rig, u, c, 30)) for u, c, _ in calls]
    await rig.clock.sleep(8)

    # A new controller for the node takes over mid-call, as after a restart.
    old = rig.controller
    rig.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await rig.task
    assert not old.connected
    replacement = NodeController(
        database, old.settings, rig.calls, NODE, clock=rig.clock, time_scale=SCALE
    )
    task = asyncio.create_task(replacement.run())
    try:
        talked = await asyncio.gather(*talks)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async with world.db.pool.acquire() as connection:
        cdrs = await connection.fetch("SELECT uniqueid, answered_seconds FROM cdrs")
    assert sorted(row["uniqueid"] for row in cdrs) == sorted(u for u, _, _ in calls)
    assert await world.balance("alice") == Decimal(10) - Decimal("0.01") * sum(talked)
    assert await world.reserved("alice") == 0


def _sent(rig: Rig, action: str, **headers: str) -> bool:
    return any(
        sent.get("Action") == action
        and all(sent.get(key) == value for key, value in headers.items())
        for sent in rig.asterisk.actions
    )


async def test_sip_changes_expire_asterisk_caches(world: World, rig: Rig):
    await world.plan("retail", [("1", "0.60", 1, 1, "0")])
    await world.client("alice", "retail", "10")

    await wait_until(
        lambda: _sent(
            rig, "SorceryMemoryCacheExpireObject", Cache="ep", Object="alice"
        ),
        timeout=3,
    )
    async with world.db.transaction() as connection:
        main_id = await connection.fetchval(
            "SELECT id FROM sip_accounts WHERE name = 'alice'"
        )
        await connection.execute(
            """
            INSERT INTO sip_accounts (account_id, name, kind, parent_sip_id, ip, port)
            VALUES ($1, 'alice_ipa1', 'ipauth', $2, '203.0.113.10', 5060)
            """,
            world.accounts["alice"],
            main_id,
        )
    await wait_until(
        lambda: _sent(rig, "SorceryMemoryCachePopulate", Cache="ident"), timeout=3
    )
    async with world.db.transaction() as connection:
        await connection.execute(
            "UPDATE sip_accounts SET status = 'disabled' WHERE name = 'alice_ipa1'"
        )

    await wait_until(
        lambda: _sent(rig, "Hangup", Channel="/^PJSIP/alice_ipa1-/"), timeout=3
    )
    assert _sent(
        rig, "SorceryMemoryCacheExpireObject", Cache="aor", Object="alice_ipa1"
    )
    assert _sent(
        rig, "SorceryMemoryCacheExpireObject", Cache="auth", Object="alice_ipa1"
    )
