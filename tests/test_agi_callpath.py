"""The call path through FastAGI: recorded Asterisk sessions, races and restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from itertools import count
from pathlib import Path

import pytest

from agi.fastagi import FastAGIServer
from agi.peer import build_env, run_agi_session
from agi.scripts import Scripts
from engine import callerids
from engine.calls import CallService
from engine.db import Database
from engine.settings import Settings
from tests.conftest import FIXTURES, REPO, World, wait_until
from tests.test_fastagi_protocol import ReplayAsterisk, load_transcript

HOST = "127.0.0.1"
NUMBER = "15555550101"
_sequence = count(1)

CALL_SCENARIOS = sorted(
    path.name for path in FIXTURES.iterdir() if (path / "agi-settle.txt").exists()
)


async def start_agi(calls: CallService, deadline: float = 2.0) -> FastAGIServer:
    server = FastAGIServer(Scripts(calls).handlers, deadline=deadline, max_sessions=500)
    await server.start(HOST, 0)
    return server


@pytest.fixture
async def agi(calls: CallService) -> AsyncIterator[FastAGIServer]:
    server = await start_agi(calls)
    yield server
    await server.close()


async def seed_alice(world: World, balance: str = "10", **plan: object) -> None:
    """The fixtures' caller: PJSIP endpoint alice dialing 15555550101."""
    await world.plan("retail", [("1", "0.60", 1, 1, "0")], **plan)
    await world.trunk("carrier", "retail")
    await world.client("alice", "retail", balance)


async def authorize(port: int, sip: str, number: str = NUMBER, **kw: object):
    sequence = next(_sequence)
    uniqueid = f"1796390000.{sequence}"
    env = build_env("authorize", uniqueid, f"PJSIP/{sip}-{sequence:08x}", number)
    result = await run_agi_session(HOST, port, env=env, variables={}, **kw)  # type: ignore[arg-type]
    return uniqueid, result.variables_set


async def settle(
    port: int,
    uniqueid: str,
    sip: str,
    dialstatus: str | None,
    answered: str | None,
    cause: str,
    route_index: str | None = "1",
) -> None:
    env = build_env("settle", uniqueid, f"PJSIP/{sip}-00000001", "h")
    variables = {
        "DIALSTATUS": dialstatus,
        "ANSWEREDTIME": answered,
        "HANGUPCAUSE": cause,
        "UNIQUEID": uniqueid,
        "CALLGATE_ROUTE_INDEX": route_index,
    }
    await run_agi_session(HOST, port, env=env, variables=variables)


@pytest.mark.parametrize("scenario", CALL_SCENARIOS)
async def test_recorded_call_settled(scenario: str, world: World, agi: FastAGIServer):
    await seed_alice(world)
    authorize_log = load_transcript(FIXTURES / scenario / "agi-authorize.txt")
    settle_log = load_transcript(FIXTURES / scenario / "agi-settle.txt")
    values = {
        exchange.command.decode(): exchange.replies[0].decode()
        for exchange in settle_log.exchanges
    }
    dialstatus = values["GET VARIABLE DIALSTATUS"]
    answered = values["GET VARIABLE ANSWEREDTIME"]

    asterisk = ReplayAsterisk(authorize_log)
    await asterisk.run(agi.port)
    set_lines = [line.decode() for line in asterisk.received if line.startswith(b"SET")]
    await ReplayAsterisk(settle_log).run(agi.port)

    uniqueid = authorize_log.env["agi_uniqueid"]
    async with world.db.pool.acquire() as connection:
        cdr = await connection.fetchrow(
            "SELECT * FROM cdrs WHERE uniqueid = $1", uniqueid
        )
        failed = await connection.fetchrow(
            "SELECT * FROM failed_cdrs WHERE uniqueid = $1", uniqueid
        )
    assert await world.reserved("alice") == 0
    if authorize_log.hangup_before_close and scenario.startswith("08"):
        # The caller hung up during authorize: no Dial, nothing charged.
        assert cdr is None
        assert failed is not None
        assert await world.balance("alice") == Decimal(10)
        return
    assert 'SET VARIABLE CALLGATE_STATUS "OK"' in set_lines
    if dialstatus == "200 result=1 (ANSWER)":
        seconds = int(answered.removeprefix("200 result=1 (").removesuffix(")"))
        assert cdr is not None
        assert cdr["answered_seconds"] == seconds
        assert cdr["cost"] == Decimal("0.010000") * seconds
        assert failed is None
        assert await world.balance("alice") == Decimal(10) - cdr["cost"]
    else:
        assert cdr is None
        assert failed is not None
        assert failed["hangup_cause"] == int(
            values["GET VARIABLE HANGUPCAUSE"]
            .removeprefix("200 result=1 (")
            .rstrip(")")
        )
        assert await world.balance("alice") == Decimal(10)


@pytest.mark.parametrize(
    ("dialstatus", "cause"), [("CHANUNAVAIL", "3"), ("CONGESTION", "34")]
)
async def test_unavailable_trunk_settles_failed(
    dialstatus: str, cause: str, world: World, agi: FastAGIServer
):
    await seed_alice(world)
    uniqueid, variables = await authorize(agi.port, "alice")

    await settle(agi.port, uniqueid, "alice", dialstatus, "", cause)

    assert variables["CALLGATE_STATUS"] == "OK"
    async with world.db.pool.acquire() as connection:
        failed = await connection.fetchrow(
            "SELECT reason, hangup_cause FROM failed_cdrs"
        )
    assert failed["hangup_cause"] == int(cause)
    assert await world.balance("alice") == Decimal(10)
    assert await world.reserved("alice") == 0


async def test_authorize_sets_documented_variables(world: World, agi: FastAGIServer):
    await seed_alice(world, balance="1.00")

    _, variables = await authorize(agi.port, "alice")

    assert variables == {
        "CALLGATE_STATUS": "OK",
        "CALLGATE_REASON": "ok",
        "CALLGATE_MAX_MS": "100000",
        "CALLGATE_DIAL_TIMEOUT": "60",
        "CALLGATE_ROUTE_COUNT": "1",
        "CALLGATE_ROUTE_1": "PJSIP/15555550101@carrier",
    }


async def test_authorize_sets_active_callerid(world: World, agi: FastAGIServer):
    await seed_alice(world)
    async with world.db.pool.acquire() as connection:
        await connection.execute(
            "INSERT INTO callerids (account_id, cid, active)"
            " VALUES ($1, '+442079460000', true)",
            world.accounts["alice"],
        )

    _, variables = await authorize(agi.port, "alice")

    assert variables["CALLERID(num)"] == "+442079460000"


async def test_rejected_call_sets_reason_and_cause(world: World, agi: FastAGIServer):
    await seed_alice(world, balance="0")

    uniqueid, variables = await authorize(agi.port, "alice")
    await settle(agi.port, uniqueid, "alice", None, None, "21")

    assert variables == {
        "CALLGATE_STATUS": "REJECTED",
        "CALLGATE_REASON": "no_credit",
        "CALLGATE_CAUSE": "21",
    }
    async with world.db.pool.acquire() as connection:
        reasons = await connection.fetch("SELECT reason FROM failed_cdrs")
    assert [row["reason"] for row in reasons] == ["no_credit"]


async def test_agi_argument_does_not_change_payer(world: World, agi: FastAGIServer):
    await seed_alice(world)
    await world.client("bob", "retail", "10")
    env = build_env(
        "authorize",
        "1796390000.900",
        "PJSIP/alice-00000900",
        NUMBER,
        callerid="bob",
        accountcode="bob",
        arguments=("bob",),
        query={"account": "bob"},
    )

    await run_agi_session(HOST, agi.port, env=env, variables={})
    await settle(agi.port, "1796390000.900", "bob", "ANSWER", "60", "16")

    assert await world.balance("alice") == Decimal("9.400000")
    assert await world.balance("bob") == Decimal(10)


async def test_caller_hangup_during_authorize_releases(
    world: World, agi: FastAGIServer
):
    await seed_alice(world)

    uniqueid, _ = await authorize(agi.port, "alice", hangup_after_env=True)

    await wait_until(lambda: _reserved_zero(world), timeout=1.0)
    async with world.db.pool.acquire() as connection:
        state = await connection.fetchval(
            "SELECT state FROM sessions WHERE uniqueid = $1", uniqueid
        )
    assert state == "settled"


async def _reserved_zero(world: World) -> bool:
    return await world.reserved("alice") == 0


async def test_deadline_expiry_fails_closed_without_reservation(
    database: Database, settings: Settings, world: World
):
    await seed_alice(world)
    calls = CallService(database, settings)
    server = await start_agi(calls, deadline=0.2)
    try:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        env = build_env("authorize", "1796390000.777", "PJSIP/alice-00000777", NUMBER)
        writer.write(("".join(f"{k}: {v}\n" for k, v in env.items()) + "\n").encode())
        await writer.drain()
        # Never answer a command: the session must end at its deadline.
        async with asyncio.timeout(3):
            while await reader.readline():
                pass
        writer.close()
    finally:
        await server.close()

    await wait_until(lambda: _reserved_zero(world), timeout=1.0)


async def test_concurrency_limit_through_fastagi(world: World, agi: FastAGIServer):
    await world.plan("retail", [("1", "0.01", 1, 1, "0")])
    await world.trunk("carrier", "retail")
    await world.client("alice", "retail", "10", max_concurrent=2)
    first, _ = await authorize(agi.port, "alice")
    await authorize(agi.port, "alice")

    _, third = await authorize(agi.port, "alice")
    await settle(agi.port, first, "alice", "ANSWER", "5", "16")
    _, fourth = await authorize(agi.port, "alice")

    assert third["CALLGATE_REASON"] == "concurrent_limit"
    assert fourth["CALLGATE_STATUS"] == "OK"


async def test_settle_delivered_twice_charges_once(world: World, agi: FastAGIServer):
    await seed_alice(world)
    uniqueid, _ = await authorize(agi.port, "alice")

    await asyncio.gather(
        settle(agi.port, uniqueid, "alice", "ANSWER", "60", "16"),
        settle(agi.port, uniqueid, "alice", "ANSWER", "60", "16"),
    )

    assert await world.balance("alice") == Decimal("9.400000")
    assert await world.ledger_sum("alice") == Decimal("9.400000")


async def test_hundred_fastagi_authorizations_one_call(
    world: World, agi: FastAGIServer
):
    await world.plan("retail", [("1", "0.04", 60, 60, "0")])
    await world.trunk("carrier", "retail")
    await world.client("alice", "retail", "0.12")

    results = await asyncio.gather(*(authorize(agi.port, "alice") for _ in range(100)))

    ok = [variables for _, variables in results if variables["CALLGATE_STATUS"] == "OK"]
    assert len(ok) == 1
    assert ok[0]["CALLGATE_MAX_MS"] == "180000"
    assert await world.reserved("alice") == Decimal("0.12")


# --- real daemons -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Daemon:
    """A `callgate serve --no-api` subprocess on a given database."""

    def __init__(self, database_url: str, tmp: Path, **settings: str) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "CALLGATE_DATABASE_URL": database_url,
            "CALLGATE_DATA_DIR": str(tmp),
            "CALLGATE_AGI_LISTEN": f"{HOST}:{self.port}",
            **settings,
        }
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", "--no-api"],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        stdout = self.process.stdout
        assert stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(stdout.readline), 30)
        assert b"callgate ready" in line, line

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._close_pipe()


async def test_two_processes_hundred_authorizations(
    database_url: str, world: World, tmp_path: Path
):
    await world.plan("retail", [("1", "0.04", 60, 60, "0")])
    await world.trunk("carrier", "retail")
    await world.client("alice", "retail", "0.12")
    daemons = [
        Daemon(database_url, tmp_path, CALLGATE_MAX_CALL_DURATION="60")
        for _ in range(2)
    ]
    try:
        await asyncio.gather(*(daemon.start() for daemon in daemons))
        results = await asyncio.gather(
            *(authorize(daemons[i % 2].port, "alice") for i in range(100))
        )
    finally:
        for daemon in daemons:
            daemon.stop()

    statuses = [variables["CALLGATE_STATUS"] for _, variables in results]
    assert statuses.count("OK") == 3
    assert await world.reserved("alice") == Decimal("0.12")


async def test_restart_between_authorize_and_settle(
    database_url: str, world: World, tmp_path: Path
):
    await seed_alice(world)
    daemon = Daemon(database_url, tmp_path)
    try:
        await daemon.start()
        uniqueid, variables = await authorize(daemon.port, "alice")
        daemon.kill()
        await daemon.start()
        await settle(daemon.port, uniqueid, "alice", "ANSWER", "90", "16")
    finally:
        daemon.stop()

    assert variables["CALLGATE_STATUS"] == "OK"
    assert await world.balance("alice") == Decimal("9.100000")
    assert await world.reserved("alice") == 0


async def test_callerid_applies_to_every_sip_account_until_cleared(
    world: World, agi: FastAGIServer
):
    await seed_alice(world, balance="1000")  # three calls, each reserving 3 h
    account_id = world.accounts["alice"]
    async with world.db.transaction() as connection:
        await connection.execute(
            "INSERT INTO sip_accounts (account_id, name, kind, password, callerid)"
            " VALUES ($1, 'alice-2', 'normal', 'Secret12345678', 'alice-2')",
            account_id,
        )
        await callerids.add_callerid(
            connection, account_id, "+442079460000", "Main", set_active=True
        )

    _, main = await authorize(agi.port, "alice")
    _, second = await authorize(agi.port, "alice-2")
    async with world.db.transaction() as connection:
        await callerids.clear_active_callerid(connection, account_id)
    _, cleared = await authorize(agi.port, "alice-2")

    assert main["CALLERID(num)"] == "+442079460000"
    assert second["CALLERID(num)"] == "+442079460000"
    assert "CALLERID(num)" not in cleared
    assert cleared["CALLGATE_STATUS"] == "OK"


async def test_settle_huge_answered_time_bills_max(world: World, agi: FastAGIServer):
    await seed_alice(world, balance="1.00")
    uniqueid, variables = await authorize(agi.port, "alice")

    await settle(agi.port, uniqueid, "alice", "ANSWER", "999999999999", "16")

    assert variables["CALLGATE_MAX_MS"] == "100000"
    assert await world.balance("alice") == Decimal("0.000000")
    assert await world.reserved("alice") == 0
