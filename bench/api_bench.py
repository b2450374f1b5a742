"""Benchmark the Client API's `me` and `calls` from a separate process on loopback.

Run `python bench/api_bench.py` (options: --duration, --connections). It starts
bench/api_server.py (embedded PostgreSQL in a temporary directory), then, per
endpoint, keeps N keep-alive connections busy for the duration and prints
requests/s with p50 and p99 latency. Client, server and PostgreSQL share the
machine, so the figures are for all three together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

SERVER = Path(__file__).resolve().parent / "api_server.py"
ENDPOINTS = ("me", "calls")


async def worker(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    until: float,
    latencies: list[float],
) -> int:
    errors = 0
    headers = {"X-API-Key": key}
    while time.perf_counter() < until:
        started = time.perf_counter()
        async with session.get(url, headers=headers) as response:
            await response.read()
            if response.status != 200:
                errors += 1
        latencies.append(time.perf_counter() - started)
    return errors


async def load(
    base: str, key: str, endpoint: str, connections: int, duration: float
) -> str:
    url = f"{base}/client-api/index.php?endpoint={endpoint}"
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        warmup: list[float] = []
        until = time.perf_counter() + min(1.0, duration / 5)
        await asyncio.gather(
            *(worker(session, url, key, until, warmup) for _ in range(connections))
        )
        latencies: list[float] = []
        started = time.perf_counter()
        errors = await asyncio.gather(
            *(
                worker(session, url, key, started + duration, latencies)
                for _ in range(connections)
            )
        )
        elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return (
        f"{endpoint:<6} {len(latencies) / elapsed:8.0f} req/s  "
        f"p50 {cuts[49] * 1000:6.2f} ms  p99 {cuts[98] * 1000:6.2f} ms  "
        f"requests {len(latencies)}  errors {sum(errors)}  "
        f"({connections} connections, {elapsed:.1f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per endpoint"
    )
    parser.add_argument(
        "--connections", type=int, default=10, help="keep-alive connections"
    )
    args = parser.parse_args()

    server = subprocess.Popen(
        [sys.executable, str(SERVER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        ready = json.loads(server.stdout.readline())
        for endpoint in ENDPOINTS:
            print(
                asyncio.run(
                    load(
                        ready["url"],
                        ready["key"],
                        endpoint,
                        args.connections,
                        args.duration,
                    )
                ),
                flush=True,
            )
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
