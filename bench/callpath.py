"""Call-path benchmark: authorize + settle over FastAGI against `callgate serve`.

Runs on an embedded PostgreSQL with its default durability (fsync on,
synchronous commit), seeded with the world deck, 10 resellers and 1,000
clients. Prints, in one run:

- full calls/s (authorize + settle) with N connections in a closed loop;
- p50/p99 authorize latency at a paced offered load (open loop: a call's
  latency counts from its own start, so the load generator's queue does not);
- daemon RSS;
- the FastAGI protocol-only baseline (the no-op `ping` script);
- the database baseline: the same authorize and settle transactions driven
  straight from asyncpg in this process (CallService, no FastAGI);
- rating time (rate lookup on the world deck plus cost) per call.

Usage: python bench/callpath.py [--seconds 15] [--connections 100] [--rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import accounts, db, plans, rating  # noqa: E402
from engine.calls import FIND_RATES, AuthorizeRequest, CallService, SettleRequest  # noqa: E402
from engine.settings import load_settings  # noqa: E402

HOST = "127.0.0.1"
RESELLERS = 10
CLIENTS_PER_RESELLER = 100
# Numbers spread over the deck: UK, US, Germany, France, India mobile.
NUMBERS = [
    "442079460000",
    "12125550100",
    "4930123456",
    "33142685300",
    "919812345678",
    "447700900123",
    "4915112345678",
    "61212345678",
    "5511912345678",
    "81312345678",
]


def env_block(script: str, uniqueid: str, sip: str, extension: str) -> bytes:
    lines = [
        "agi_network: yes",
        f"agi_network_script: {script}",
        f"agi_request: agi://{HOST}/{script}",
        f"agi_channel: PJSIP/{sip}-00000001",
        "agi_language: en",
        "agi_type: PJSIP",
        f"agi_uniqueid: {uniqueid}",
        "agi_version: 22.10.1",
        "agi_callerid: unknown",
        "agi_calleridname: unknown",
        "agi_context: callgate-outbound",
        f"agi_extension: {extension}",
        "agi_priority: 1",
        "agi_accountcode: ",
    ]
    return ("\n".join(lines) + "\n\n").encode()


class SessionFailed(Exception):
    """The daemon refused or dropped a session."""


async def agi_session(port: int, block: bytes, variables: dict[bytes, bytes]) -> float:
    """Play Asterisk for one session; return its duration in seconds."""
    started = time.perf_counter()
    try:
        return await _agi_session(port, block, variables, started)
    except (ConnectionError, OSError) as exc:
        raise SessionFailed(str(exc)) from exc


async def _agi_session(
    port: int, block: bytes, variables: dict[bytes, bytes], started: float
) -> float:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(block)
    while True:
        line = await reader.readline()
        if not line:
            break
        if line.startswith(b"GET VARIABLE "):
            name = line[13:].strip()
            value = variables.get(name)
            writer.write(
                b"200 result=0\n"
                if value is None
                else b"200 result=1 (" + value + b")\n"
            )
        else:
            writer.write(b"200 result=1\n")
    writer.write(b"HANGUP\n")
    writer.close()
    return time.perf_counter() - started


class Load:
    def __init__(self, port: int, clients: list[str]) -> None:
        self.port = port
        self.clients = clients
        self.sequence = 0
        self.prefix = f"{random.randrange(10**6)}"
        self.failed = 0

    def next_call(self) -> tuple[str, str, str]:
        self.sequence += 1
        return (
            f"{self.prefix}.{self.sequence}",
            random.choice(self.clients),
            random.choice(NUMBERS),
        )

    async def call(self) -> float:
        """One whole call; returns the authorize latency, or -1 if it failed."""
        try:
            return await self._call()
        except SessionFailed:
            self.failed += 1
            return -1.0

    async def _call(self) -> float:
        uniqueid, sip, number = self.next_call()
        latency = await agi_session(
            self.port, env_block("authorize", uniqueid, sip, number), {}
        )
        await agi_session(
            self.port,
            env_block("settle", uniqueid, sip, "h"),
            {
                b"DIALSTATUS": b"ANSWER",
                b"ANSWEREDTIME": b"60",
                b"HANGUPCAUSE": b"16",
                b"UNIQUEID": uniqueid.encode(),
                b"CALLGATE_ROUTE_INDEX": b"1",
            },
        )
        return latency


async def closed_loop(
    work, connections: int, seconds: float
) -> tuple[int, list[float]]:
    deadline = time.perf_counter() + seconds
    done = 0
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            latencies.append(await work())
            done += 1

    await asyncio.gather(*(worker() for _ in range(connections)))
    return done, latencies


async def open_loop(work, rate: float, seconds: float) -> list[float]:
    latencies: list[float] = []
    tasks = []
    start = time.perf_counter()
    total = int(rate * seconds)
    for index in range(total):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)

        async def one() -> None:
            latencies.append(await work())

        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def seed(url: str) -> list[str]:
    database = await db.Database.connect(url, max_size=4)
    logins: list[str] = []
    async with database.transaction() as connection:
        rows, _ = plans.read_rate_file(REPO / "data" / "ratedeck-world.csv")
        wholesale = await plans.create_plan(connection, "wholesale")
        await plans.replace_rates(connection, wholesale, rows)
        trunk = await plans.add_trunk(connection, "carrier", "PJSIP/{number}@carrier")
        await plans.add_route(connection, wholesale, trunk)
        for r in range(RESELLERS):
            reseller = await accounts.create_account(
                connection,
                kind="reseller",
                currency="EUR",
                login=f"reseller{r}",
                plan_id=wholesale,
                balance=Decimal(1_000_000),
            )
            for c in range(CLIENTS_PER_RESELLER):
                login = f"{r + 1}{c:05d}000"
                await accounts.create_account(
                    connection,
                    kind="client",
                    currency="EUR",
                    login=login,
                    parent_id=reseller.id,
                    balance=Decimal(100_000),
                )
                logins.append(login)
    await database.close()
    return logins


async def rating_time(url: str, samples: int = 2000) -> list[float]:
    database = await db.Database.connect(url, max_size=2)
    async with database.pool.acquire() as connection:
        plan_id = await connection.fetchval(
            "SELECT id FROM plans WHERE name = 'wholesale'"
        )
        timings = []
        for _ in range(samples):
            number = random.choice(NUMBERS)[:-2] + f"{random.randrange(100):02d}"
            started = time.perf_counter()
            prefixes = rating.candidate_prefixes(rating.normalize(number))
            row = await connection.fetchrow(
                FIND_RATES, [plan_id] * len(prefixes), prefixes
            )
            rate = rating.Rate(
                row["prefix"],
                "",
                row["rate"],
                row["initblock"],
                row["billingblock"],
                row["connect_fee"],
            )
            rating.call_cost(61, rate, rating.Tariff())
            timings.append(time.perf_counter() - started)
    await database.close()
    return timings


async def database_baseline(
    url: str, clients: list[str], connections: int, seconds: float
) -> float:
    settings = load_settings({"CALLGATE_DATABASE_URL": url})
    # The same pool size as the daemon, so both drive the same concurrency.
    database = await db.Database.connect(url, max_size=settings.db_pool_size)
    calls = CallService(database, settings)
    load = Load(0, clients)

    async def work() -> float:
        uniqueid, sip, number = load.next_call()
        started = time.perf_counter()
        await calls.authorize(
            AuthorizeRequest("db" + uniqueid, f"PJSIP/{sip}-1", number)
        )
        latency = time.perf_counter() - started
        await calls.settle(SettleRequest("db" + uniqueid, "ANSWER", 60, 16, 1))
        return latency

    done, _ = await closed_loop(work, connections, seconds)
    await database.close()
    return done / seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def start_database(prefix: str) -> tuple[Any, str, str]:
    """Start a migrated embedded PostgreSQL in a new temporary directory.

    Returns the server (call its cleanup() when done), its URL and the directory.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        data_dir = tempfile.mkdtemp(prefix=prefix)
        server = pgserver.get_server(data_dir, cleanup_mode="delete")
    url: str = server.get_uri()
    await db.migrate_url(url)
    return server, url, data_dir


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--rate", type=float, default=500)
    args = parser.parse_args()

    server, url, data_dir = await start_database("cgbench")
    print("seeding: world deck, 10 resellers, 1,000 clients ...", flush=True)
    clients = await seed(url)

    port = free_port()
    env = {
        **os.environ,
        "CALLGATE_DATABASE_URL": url,
        "CALLGATE_AGI_LISTEN": f"{HOST}:{port}",
        "CALLGATE_LOG_LEVEL": "WARNING",
        "CALLGATE_DATA_DIR": data_dir,
    }
    daemon = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--no-api"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    assert daemon.stdout is not None
    daemon.stdout.readline()
    try:
        load = Load(port, clients)

        async def ping() -> float:
            return await agi_session(port, env_block("ping", "0.0", "x", "s"), {})

        await closed_loop(load.call, 20, 2)  # warm up
        pings, _ = await closed_loop(ping, args.connections, args.seconds / 3)
        protocol_rate = pings / (args.seconds / 3)
        load.failed = 0
        done, closed = await closed_loop(load.call, args.connections, args.seconds)
        closed_failed = load.failed
        full_rate = (done - closed_failed) / args.seconds
        await asyncio.sleep(3)  # let the daemon drain before the paced run
        load.failed = 0
        paced = await open_loop(load.call, args.rate, args.seconds)
        paced_failed = load.failed
        rss = rss_mb(daemon.pid)
    finally:
        daemon.terminate()
        try:
            daemon.wait(60)  # an overloaded daemon finishes its sessions first
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
        daemon.stdout.close()

    baseline = await database_baseline(url, clients, args.connections, args.seconds)
    timings = await rating_time(url)
    server.cleanup()
    report(
        args,
        full_rate,
        closed,
        closed_failed,
        paced,
        paced_failed,
        rss,
        protocol_rate,
        baseline,
        timings,
    )


def milliseconds(values: list[float], fraction: float) -> str:
    succeeded = [value for value in values if value >= 0]
    if not succeeded:
        return "n/a"
    return f"{percentile(succeeded, fraction) * 1e3:.1f} ms"


def report(
    args: argparse.Namespace,
    full_rate: float,
    closed: list[float],
    closed_failed: int,
    paced: list[float],
    paced_failed: int,
    rss: float,
    protocol_rate: float,
    baseline: float,
    timings: list[float],
) -> None:
    loop = f"{args.connections} connections, closed loop"
    print(
        f"full calls/s (authorize+settle, {loop}): {full_rate:.0f}"
        f" ({closed_failed} failed)"
    )
    print(
        f"  authorize latency in that loop: p50 {milliseconds(closed, 0.5)},"
        f" p99 {milliseconds(closed, 0.99)}"
    )
    print(
        f"authorize latency at {args.rate:.0f} calls/s offered (open loop):"
        f" p50 {milliseconds(paced, 0.5)}, p99 {milliseconds(paced, 0.99)}"
        f" ({paced_failed} failed)"
    )
    print(f"daemon RSS: {rss:.0f} MB")
    print(
        f"FastAGI protocol-only baseline (ping script): {protocol_rate:.0f} sessions/s"
    )
    print(f"database baseline (same transactions from asyncpg): {baseline:.0f} calls/s")
    print(f"ratio to database baseline: {full_rate / baseline:.2f}")
    rating_p50 = statistics.median(timings) * 1e3
    rating_p99 = percentile(timings, 0.99) * 1e3
    print(f"rating on the world deck: p50 {rating_p50:.3f} ms, p99 {rating_p99:.3f} ms")


if __name__ == "__main__":
    asyncio.run(main())
