"""The `callgate` command line, run as a user runs it: as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from engine.secrets import hash_api_key
from tests.conftest import DATA, REPO, World
from tests.test_agi_callpath import Daemon

HEADER = "prefix,destination,rate,initblock,billingblock,connect_fee\n"


def run_cli(
    database_url: str, tmp: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "CALLGATE_DATABASE_URL": database_url,
        "CALLGATE_DATA_DIR": str(tmp),
        "CALLGATE_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        env=environment,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def cli(
    database_url: str, tmp: Path, *args: str, **kw: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, database_url, tmp, *args, **kw)


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["serve", "--help"],
        ["migrate", "--help"],
        ["plan", "add", "--help"],
        ["rates", "import", "--help"],
        ["trunk", "add", "--help"],
        ["account", "add", "--help"],
        ["account", "show", "--help"],
        ["apikey", "issue", "--help"],
        ["voucher", "add", "--help"],
        ["call", "--help"],
    ],
)
def test_every_command_has_help(command: list[str], tmp_path: Path):
    result = run_cli("", tmp_path, *command)

    assert result.returncode == 0
    assert "usage: callgate" in result.stdout


def test_help_lists_every_setting(tmp_path: Path):
    result = run_cli("", tmp_path, "--help")

    for name in (
        "CALLGATE_DATABASE_URL",
        "CALLGATE_AGI_DEADLINE",
        "CALLGATE_RING_TIMEOUT",
        "CALLGATE_DEBIT_INTERVAL",
        "CALLGATE_AMI_URL",
        "CALLGATE_CURRENCY",
    ):
        assert name in result.stdout


def test_invalid_setting_stops_start_naming_it(tmp_path: Path):
    result = run_cli("", tmp_path, "migrate", env={"CALLGATE_AGI_DEADLINE": "soon"})

    assert result.returncode == 2
    assert "CALLGATE_AGI_DEADLINE" in result.stderr


async def test_migrate_twice_and_from_two_processes(server_url: str, tmp_path: Path):
    import asyncpg

    from tests.conftest import with_database

    admin = await asyncpg.connect(server_url)
    await admin.execute("CREATE DATABASE cli_migrate_race")
    await admin.close()
    url = with_database(server_url, "cli_migrate_race")
    try:
        first, second = await asyncio.gather(
            cli(url, tmp_path, "migrate", "--json"),
            cli(url, tmp_path, "migrate", "--json"),
        )
        again = await cli(url, tmp_path, "migrate", "--json")
    finally:
        admin = await asyncpg.connect(server_url)
        await admin.execute("DROP DATABASE cli_migrate_race WITH (FORCE)")
        await admin.close()

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    applied = json.loads(first.stdout)["applied"] + json.loads(second.stdout)["applied"]
    assert sorted(applied) == sorted(set(applied))
    assert json.loads(again.stdout) == {"applied": []}


async def test_rates_import_reports_bad_rows_and_imports_nothing(
    database_url: str, tmp_path: Path, world: World
):
    await world.plan("retail", [("1", "0.01", 1, 1, "0")])
    deck = tmp_path / "deck.csv"
    deck.write_text(
        HEADER
        + "44,UK,0.02,1,1,0\n"
        + "44,UK again,0.03,1,1,0\n"
        + "4x,bad prefix,0.02,1,1,0\n"
        + "49,Germany,-1,1,1,0\n"
        + "33,France,0.02,1,0,0\n"
    )

    result = await cli(database_url, tmp_path, "rates", "import", "retail", str(deck))

    assert result.returncode == 1
    assert "line 3: duplicate prefix 44" in result.stderr
    assert "line 4: invalid prefix '4x'" in result.stderr
    assert "line 5: invalid rate '-1'" in result.stderr
    assert "line 6: invalid billingblock '0'" in result.stderr
    async with world.db.pool.acquire() as connection:
        prefixes = await connection.fetch("SELECT prefix FROM rates ORDER BY prefix")
    assert [row["prefix"] for row in prefixes] == ["1"]


async def test_rates_import_skip_invalid_replaces_deck(
    database_url: str, tmp_path: Path, world: World
):
    await world.plan("retail", [("1", "0.01", 1, 1, "0")])
    deck = tmp_path / "deck.csv"
    deck.write_text(HEADER + "44,UK,0.02,1,1,0\n4x,bad,0.02,1,1,0\n")

    result = await cli(
        database_url,
        tmp_path,
        "rates",
        "import",
        "retail",
        str(deck),
        "--skip-invalid",
        "--json",
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"plan": "retail", "imported": 1, "skipped": 1}
    async with world.db.pool.acquire() as connection:
        prefixes = await connection.fetch("SELECT prefix FROM rates")
    assert [row["prefix"] for row in prefixes] == ["44"]


async def test_rates_import_world_deck_rederives_retail(
    database_url: str, tmp_path: Path, world: World
):
    await world.plan("wholesale", [("1", "0.01", 1, 1, "0")])
    await world.reseller("res", "wholesale")

    result = await cli(
        database_url,
        tmp_path,
        "rates",
        "import",
        "wholesale",
        str(DATA / "ratedeck-world.csv"),
    )

    assert result.returncode == 0, result.stderr
    async with world.db.pool.acquire() as connection:
        counts = await connection.fetch(
            "SELECT plan_id, count(*) FROM rates GROUP BY plan_id ORDER BY plan_id"
        )
        retail_uk = await connection.fetchval(
            "SELECT rate FROM rates WHERE plan_id = $1 AND prefix = '4420'",
            world.plans["res-retail"],
        )
    assert [row["count"] for row in counts] == [49749, 49749]
    assert retail_uk == Decimal("0.012442")


async def test_cli_builds_a_world_and_places_a_call(
    database_url: str, tmp_path: Path, world: World
):
    deck = tmp_path / "deck.csv"
    deck.write_text(HEADER + "1,USA,0.025,1,1,0\n")
    steps = [
        ("plan", "add", "wholesale", "--decimals", "6", "--signup"),
        ("rates", "import", "wholesale", str(deck)),
        (
            "trunk",
            "add",
            "carrier",
            "--dialstring",
            "PJSIP/{number}@carrier",
            "--plan",
            "wholesale",
        ),
        (
            "account",
            "add",
            "res",
            "--kind",
            "reseller",
            "--plan",
            "wholesale",
            "--balance",
            "10",
        ),
        (
            "account",
            "add",
            "1234567801",
            "--kind",
            "client",
            "--reseller",
            "res",
            "--balance",
            "10",
            "--password",
            "Secret123456",
        ),
        ("voucher", "add", "V-1", "--amount", "5", "--reseller", "res"),
    ]
    for step in steps:
        result = await cli(database_url, tmp_path, *step)
        assert result.returncode == 0, (step, result.stderr)
    key = (await cli(database_url, tmp_path, "apikey", "issue", "1234567801")).stdout

    daemon = Daemon(database_url, tmp_path)
    try:
        await daemon.start()
        placed = await cli(
            database_url,
            tmp_path,
            "call",
            "--sip",
            "1234567801",
            "--number",
            "+1 555 555 0101",
            "--talk",
            "61",
            "--agi",
            f"127.0.0.1:{daemon.port}",
            "--json",
        )
    finally:
        daemon.stop()
    shown = await cli(database_url, tmp_path, "account", "show", "res", "--json")

    assert placed.returncode == 0, placed.stderr
    report = json.loads(placed.stdout)
    assert report["variables"]["CALLGATE_STATUS"] == "OK"
    assert report["cdr"]["cost"] == "0.030500"
    assert [c["cost"] for c in report["cdr"]["charges"]] == ["0.030500", "0.025417"]
    assert json.loads(shown.stdout)["balance"] == "9.974583"
    assert key.strip().startswith("cg_")
    assert len(key.strip().splitlines()) == 1
    async with world.db.pool.acquire() as connection:
        stored = await connection.fetchval("SELECT key_hash FROM api_keys")
    assert stored == hash_api_key(key.strip())


async def test_cli_errors_exit_non_zero(
    database_url: str, tmp_path: Path, world: World
):
    await world.plan("retail", [("1", "0.01", 1, 1, "0")])
    cases = [
        ("account", "add", "x1000", "--kind", "client", "--plan", "missing"),
        ("account", "add", "bad login!", "--kind", "client", "--plan", "retail"),
        ("account", "show", "nobody"),
        ("trunk", "add", "t", "--dialstring", "PJSIP/carrier"),
        ("voucher", "add", "V", "--amount", "-5"),
        ("plan", "add", "retail"),
        ("apikey", "issue", "nobody"),
        ("voucher", "add", "", "--amount", "1"),
        ("voucher", "add", "V0", "--amount", "0"),
        ("voucher", "add", "V\t1", "--amount", "1"),
        ("plan", "add", "p9", "--intl-prefix", "abc"),
        ("account", "add", "x2000", "--kind", "client"),
        (
            "account",
            "add",
            "x3000",
            "--kind",
            "client",
            "--plan",
            "retail",
            "--password",
            "short",
        ),
        ("account", "credit", "nobody", "--amount", "5"),
        ("call", "--sip", "x", "--number", "1", "--talk", "-5"),
        ("call", "--sip", "x", "--number", "1", "--agi", "garbage"),
        ("call", "--sip", "x", "--number", "1", "--agi", "127.0.0.1:1"),
    ]
    for case in cases:
        result = await cli(database_url, tmp_path, *case)
        assert result.returncode != 0, case
        assert "Traceback" not in result.stderr, case
        assert result.stderr.strip(), case


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("48,PL,0.01,1,1\n", "line 2: fewer columns than the header"),
        ("", "line 1: the file has no rate rows"),
        ("48,P\x00L,0.01,1,1,0\n", "line 2: invalid destination"),
    ],
)
async def test_rates_import_rejects_short_empty_and_control_rows(
    database_url: str, tmp_path: Path, world: World, body: str, message: str
):
    await world.plan("retail", [("1", "0.01", 1, 1, "0")])
    deck = tmp_path / "deck.csv"
    deck.write_text(HEADER + body)

    result = await cli(database_url, tmp_path, "rates", "import", "retail", str(deck))

    assert result.returncode == 1
    assert message in result.stderr
    async with world.db.pool.acquire() as connection:
        assert await connection.fetchval("SELECT count(*) FROM rates") == 1


async def test_account_credit_goes_through_ledger(
    database_url: str, tmp_path: Path, world: World
):
    await world.plan("retail", [("1", "0.01", 1, 1, "0")])
    await world.client("1234567801", "retail", "1")

    credit = await cli(
        database_url,
        tmp_path,
        "account",
        "credit",
        "1234567801",
        "--amount",
        "2.5",
        "--json",
    )
    debit = await cli(
        database_url, tmp_path, "account", "credit", "1234567801", "--amount", "-0.5"
    )

    assert credit.returncode == 0, credit.stderr
    assert debit.returncode == 0, debit.stderr
    assert json.loads(credit.stdout)["balance"] == "3.500000"
    assert await world.balance("1234567801") == Decimal("3.000000")
    assert await world.ledger_sum("1234567801") == Decimal("3.000000")
