"""The database-backed SMS queue: due times, once-only sends, pace and recovery."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from engine.db import Database
from engine.errors import Conflict
from engine.jobs import SmsQueue, run_sms_queue
from engine.providers.base import Outcome, OutgoingSms, SmsResult
from engine.settings import Settings
from engine.sms import SmsRequest, SmsService
from tests.conftest import World, wait_until
from tests.test_sms_api import OWNER, build_sms_scene, sms_settings

pytestmark = pytest.mark.timeout(60)

PHONE = "+447575396991"


@dataclass
class RecordingProvider:
    """An in-process provider that counts every hand-off by reference."""

    code: str = "local"
    name: str = "Recording provider"
    outcome: Outcome = Outcome.ACCEPTED
    delay: float = 0.0
    sent: list[str] = field(default_factory=list)

    async def send(self, message: OutgoingSms) -> SmsResult:
        self.sent.append(message.reference)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.outcome is not Outcome.ACCEPTED:
            return SmsResult(self.outcome, error="fake failure")
        return SmsResult(Outcome.ACCEPTED, "accepted", "id-" + message.reference)

    async def status(
        self, reference: str, provider_message_id: str | None
    ) -> SmsResult:
        return SmsResult(Outcome.ACCEPTED, "accepted", "id-" + reference)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
async def scene(world: World, database: Database) -> World:
    await build_sms_scene(world, database)
    return world


def service_for(
    database: Database,
    settings: Settings,
    provider: RecordingProvider,
    **changes: object,
) -> SmsService:
    return SmsService(
        database, sms_settings(settings, **changes), {provider.code: provider}
    )


async def make_due(database: Database) -> None:
    async with database.pool.acquire() as connection:
        await connection.execute(
            "UPDATE sms_messages SET due_at = now() - interval '1 second' "
            "WHERE status IN ('SCHEDULED', 'QUEUED')"
        )


async def statuses(database: Database) -> Counter[str]:
    async with database.pool.acquire() as connection:
        rows = await connection.fetch("SELECT status FROM sms_messages")
    return Counter(row["status"] for row in rows)


def future_text(month: int, day: int, hour: int) -> str:
    return f"{datetime.now(UTC).year + 1}-{month:02d}-{day:02d} {hour:02d}:00:00"


async def test_queue_sends_due_message_once(
    database: Database, settings: Settings, scene: World
):
    provider = RecordingProvider()
    service = service_for(database, settings, provider)
    queue = SmsQueue(database, service.settings, service)
    scheduled = await service.schedule(
        world_client(scene), SmsRequest(PHONE, "hello"), future_text(3, 1, 9)
    )

    assert await queue.run_once() == 0
    assert provider.sent == []
    await make_due(database)
    await queue.run_once()
    await queue.run_once()

    assert provider.sent == [f"callgate-sms-{scheduled.message['id']}"]
    assert await statuses(database) == {"SENT_TO_PROVIDER": 1}
    assert await scene.balance(OWNER) == Decimal("0.965000")
    assert await scene.reserved(OWNER) == Decimal(0)
    assert await scene.ledger_sum(OWNER) == await scene.balance(OWNER)


def world_client(world: World) -> int:
    return world.accounts[OWNER]


async def test_queue_due_time_is_utc_across_dst(
    database: Database, settings: Settings, scene: World
):
    service = service_for(database, settings, RecordingProvider())
    winter = await service.schedule(
        world_client(scene), SmsRequest(PHONE, "w"), future_text(1, 15, 9)
    )
    summer = await service.schedule(
        world_client(scene), SmsRequest(PHONE, "s"), future_text(7, 15, 9)
    )
    year = datetime.now(UTC).year + 1

    assert winter.message["due_at"] == datetime(year, 1, 15, 8, 0, tzinfo=UTC)
    assert summer.message["due_at"] == datetime(year, 7, 15, 7, 0, tzinfo=UTC)


async def test_queue_two_workers_send_each_once(
    database: Database, settings: Settings, scene: World
):
    provider = RecordingProvider(delay=0.01)
    phones = [f"+1234567{n:04d}" for n in range(40)]
    first = service_for(database, settings, provider, sms_rate_limit=1000)
    second = service_for(database, settings, provider, sms_rate_limit=1000)
    await first.bulk(world_client(scene), phones, "bulk", None, None, None)
    workers = [SmsQueue(database, first.settings, s) for s in (first, second)]

    async def drain(queue: SmsQueue) -> None:
        while (await statuses(database)).get("QUEUED"):
            await queue.run_once()

    await asyncio.gather(*(drain(queue) for queue in workers))

    assert len(provider.sent) == 40
    assert len(set(provider.sent)) == 40
    assert await statuses(database) == {"SENT_TO_PROVIDER": 40}
    assert await scene.balance(OWNER) == Decimal("1.00") - 40 * Decimal("0.010")
    assert await scene.reserved(OWNER) == Decimal(0)
    assert await scene.ledger_sum(OWNER) == await scene.balance(OWNER)


async def test_queue_rate_limit_per_round(
    database: Database, settings: Settings, scene: World
):
    provider = RecordingProvider()
    service = service_for(database, settings, provider, sms_rate_limit=5)
    phones = [f"+1234567{n:04d}" for n in range(12)]
    await service.bulk(world_client(scene), phones, "bulk", None, None, None)
    queue = SmsQueue(database, service.settings, service)

    await queue.run_once()
    await queue.run_once()

    # The bucket contains one second's worth, so the second round finds it
    # nearly empty.
    assert 5 <= len(provider.sent) <= 6
    assert (await statuses(database))["QUEUED"] >= 6


async def test_queue_unavailable_retried_then_failed(
    database: Database, settings: Settings, scene: World
):
    provider = RecordingProvider(outcome=Outcome.UNAVAILABLE)
    service = service_for(database, settings, provider)
    await service.schedule(
        world_client(scene), SmsRequest(PHONE, "hi"), future_text(3, 1, 9)
    )
    queue = SmsQueue(database, service.settings, service)

    for attempt in range(1, 6):
        await make_due(database)
        await queue.run_once()
        assert len(provider.sent) == attempt

    assert await statuses(database) == {"FAILED": 1}
    assert await scene.reserved(OWNER) == Decimal(0)
    assert await scene.balance(OWNER) == Decimal("1.000000")


async def test_queue_stale_sending_recovered_and_checked(
    database: Database, settings: Settings, scene: World
):
    provider = RecordingProvider()
    service = service_for(database, settings, provider)
    await service.schedule(
        world_client(scene), SmsRequest(PHONE, "hi"), future_text(3, 1, 9)
    )
    async with database.pool.acquire() as connection:
        # A daemon claimed the message and died before the provider responded.
        await connection.execute(
            "UPDATE sms_messages SET status = 'SENDING', "
            "claimed_at = now() - interval '1 hour'"
        )
    queue = SmsQueue(database, service.settings, service, check_interval=0)

    await queue.run_once()

    assert provider.sent == []
    assert await statuses(database) == {"SENT_TO_PROVIDER": 1}
    assert await scene.balance(OWNER) == Decimal("0.965000")
    assert await scene.reserved(OWNER) == Decimal(0)


async def test_queue_cancelled_campaign_not_sent(
    database: Database, settings: Settings, scene: World
):
    provider = RecordingProvider()
    service = service_for(database, settings, provider)
    created = await service.bulk(
        world_client(scene), ["+1234567890", "+1234567891"], "x", None, None, None
    )
    await service.cancel_campaign(world_client(scene), created.campaign["id"])
    await SmsQueue(database, service.settings, service).run_once()

    assert provider.sent == []
    assert await scene.reserved(OWNER) == Decimal(0)


async def test_run_sms_queue_until_stopped(
    database: Database, settings: Settings, scene: World
):
    provider = RecordingProvider()
    service = service_for(database, settings, provider)
    await service.schedule(
        world_client(scene), SmsRequest(PHONE, "hi"), future_text(3, 1, 9)
    )
    await make_due(database)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_sms_queue(
            database, service.settings, stop, poll_interval=0.02, service=service
        )
    )

    async def sent() -> bool:
        return (await statuses(database)) == {"SENT_TO_PROVIDER": 1}

    await wait_until(sent)
    stop.set()
    await asyncio.wait_for(task, 5)

    assert len(provider.sent) == 1


async def test_queue_cancel_races_sending(
    database: Database, settings: Settings, scene: World
):
    provider = RecordingProvider(delay=0.005)
    service = service_for(database, settings, provider, sms_rate_limit=1000)
    phones = [f"+1234567{n:04d}" for n in range(30)]
    created = await service.bulk(world_client(scene), phones, "x", None, None, None)
    queue = SmsQueue(database, service.settings, service)

    async def cancel_soon() -> int:
        await asyncio.sleep(0)
        try:
            return await service.cancel_campaign(
                world_client(scene), created.campaign["id"]
            )
        except Conflict:
            return 0  # the queue had claimed every message first

    _, cancelled = await asyncio.gather(queue.run_once(), cancel_soon())
    counts = await statuses(database)

    assert counts["CANCELLED"] == cancelled
    assert counts.get("SENT_TO_PROVIDER", 0) + cancelled == 30
    assert len(provider.sent) == counts.get("SENT_TO_PROVIDER", 0)
    sent = counts.get("SENT_TO_PROVIDER", 0)
    assert await scene.balance(OWNER) == Decimal("1.00") - sent * Decimal("0.010")
    assert await scene.reserved(OWNER) == Decimal(0)
    assert await scene.ledger_sum(OWNER) == await scene.balance(OWNER)
