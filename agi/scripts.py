"""The FastAGI scripts Asterisk runs: `authorize` before Dial, `settle` in `h`.

authorize never leaves money behind. A reservation whose variables could not
be set (caller hung up, socket closed, deadline) is released at once. An
error or a missed deadline leaves CALLGATE_STATUS unset or ERROR, which the
dialplan treats as a rejection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from agi.fastagi import AGIError, AGISession
from engine import metrics
from engine.calls import Authorization, AuthorizeRequest, CallService, SettleRequest

log = logging.getLogger("callgate.agi")
T = TypeVar("T")


# Asterisk's times and causes fit in 32 bits. A longer number is clamped, so
# settle caps it at the max duration instead of failing on the column.
MAX_INTEGER = 2**31 - 1


def _parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        return None
    if len(value) > 10:
        return MAX_INTEGER
    return min(int(value), MAX_INTEGER)


class Scripts:
    """Binds the AGI scripts to a CallService."""

    def __init__(self, calls: CallService) -> None:
        self.calls = calls
        # Cleanups that outlive their session (a release after a deadline):
        # kept here so none is garbage-collected before it finishes.
        self._cleanups: set[asyncio.Task[Any]] = set()

    @property
    def handlers(self) -> dict[str, object]:
        return {"authorize": self.authorize, "settle": self.settle, "ping": self.ping}

    async def wait_cleanups(self) -> None:
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    def _release_later(
        self, decision: asyncio.Task[Authorization], uniqueid: str
    ) -> None:
        async def release() -> None:
            try:
                result = await decision
            except Exception:
                log.exception("authorize failed uniqueid=%s", uniqueid)
                return
            if result.status == "OK":
                await self.calls.release(uniqueid, "authorize_aborted")
                log.warning(
                    "reservation released uniqueid=%s: authorize did not finish",
                    uniqueid,
                )

        self._track(release())

    async def authorize(self, session: AGISession) -> None:
        env = session.env
        request = AuthorizeRequest(
            uniqueid=env.get("agi_uniqueid", ""),
            channel=env.get("agi_channel", ""),
            extension=env.get("agi_extension", ""),
        )
        if not request.uniqueid:
            session.outcome = "ERROR"
            await self._set_error(session, "missing agi_uniqueid")
            return
        started = time.perf_counter()
        # The decision runs as its own task and is shielded, so a deadline or
        # a hangup cannot cut it between its commit and our release.
        decision = asyncio.create_task(self.calls.authorize(request))
        try:
            result = await asyncio.shield(decision)
        except asyncio.CancelledError:
            self._release_later(decision, request.uniqueid)
            session.outcome = "ERROR"
            raise
        except Exception as exc:
            log.exception(
                "authorize failed uniqueid=%s channel=%s",
                request.uniqueid,
                request.channel,
            )
            session.outcome = "ERROR"
            await self._set_error(session, f"internal error: {type(exc).__name__}")
            return
        metrics.authorize_seconds.observe(time.perf_counter() - started)
        session.outcome = result.status
        if result.status != "OK":
            metrics.rejections.labels(result.reason).inc()

        delivered = False
        try:
            if not session.hung_up:
                await self._deliver(session, result)
                delivered = not session.hung_up
        except asyncio.CancelledError:
            if result.status == "OK":
                self._release_now(request.uniqueid, "deadline")
            raise
        except (AGIError, OSError) as exc:
            log.warning(
                "authorize result not delivered uniqueid=%s: %s", request.uniqueid, exc
            )
        if result.status == "OK" and not delivered:
            # The caller is gone (or the link is), so the dialplan will not
            # Dial: give the money back now rather than at settle or expiry.
            session.outcome = "HANGUP"
            await asyncio.shield(
                self._track(self.calls.release(request.uniqueid, "caller_hangup"))
            )

    def _track(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run work as a task that is kept referenced until it finishes."""
        task = asyncio.create_task(work)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    def _release_now(self, uniqueid: str, reason: str) -> None:
        self._track(self.calls.release(uniqueid, reason))

    async def _deliver(self, session: AGISession, result: Authorization) -> None:
        await session.set_variable("CALLGATE_STATUS", result.status)
        await session.set_variable("CALLGATE_REASON", result.reason)
        if result.status != "OK":
            await session.set_variable("CALLGATE_CAUSE", str(result.cause or 21))
            return
        if result.callerid:
            await session.set_variable("CALLERID(num)", result.callerid)
        await session.set_variable("CALLGATE_MAX_MS", str(result.max_seconds * 1000))
        await session.set_variable("CALLGATE_DIAL_TIMEOUT", str(result.dial_timeout))
        await session.set_variable("CALLGATE_ROUTE_COUNT", str(len(result.routes)))
        for index, dialstring in enumerate(result.routes, start=1):
            await session.set_variable(f"CALLGATE_ROUTE_{index}", dialstring)

    async def _set_error(self, session: AGISession, reason: str) -> None:
        try:
            await session.set_variable("CALLGATE_STATUS", "ERROR")
            await session.set_variable("CALLGATE_REASON", reason)
            await session.set_variable("CALLGATE_CAUSE", "41")
        except (AGIError, OSError) as exc:
            log.warning(
                "error status not delivered uniqueid=%s: %s",
                session.env.get("agi_uniqueid"),
                exc,
            )

    async def ping(self, session: AGISession) -> None:
        """Do nothing: a connectivity check and the protocol-only benchmark."""
        session.outcome = "OK"

    async def settle(self, session: AGISession) -> None:
        dialstatus = await session.get_variable("DIALSTATUS")
        answered = await session.get_variable("ANSWEREDTIME")
        cause = await session.get_variable("HANGUPCAUSE")
        uniqueid = await session.get_variable("UNIQUEID") or session.env.get(
            "agi_uniqueid", ""
        )
        route_index = await session.get_variable("CALLGATE_ROUTE_INDEX")
        if not uniqueid:
            session.outcome = "ERROR"
            log.error(
                "settle without a unique id channel=%s", session.env.get("agi_channel")
            )
            return
        request = SettleRequest(
            uniqueid=uniqueid,
            dialstatus=dialstatus or None,
            answered_seconds=_parse_int(answered),
            hangup_cause=_parse_int(cause),
            route_index=_parse_int(route_index),
            source="agi",
        )
        # Shielded: once the settle transaction started, a deadline must not
        # abandon it half way (it commits or rolls back on its own).
        result = await asyncio.shield(self._track(self.calls.settle(request)))
        session.outcome = result.outcome
        if result.outcome == "settled":
            metrics.cdrs.labels("ANSWERED").inc()
        elif result.outcome == "failed":
            metrics.cdrs.labels(dialstatus or "NONE").inc()
