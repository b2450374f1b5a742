"""Prometheus metrics of every part of callgate, in one registry.

Labels never carry a phone number, login, channel name or unique id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
)

agi_sessions = Counter(
    "callgate_agi_sessions_total",
    "FastAGI sessions served, by script and result.",
    ["script", "result"],
    registry=REGISTRY,
)
authorize_seconds = Histogram(
    "callgate_authorize_duration_seconds",
    "Time from the end of the environment block to the authorize decision.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
rejections = Counter(
    "callgate_rejections_total",
    "Calls rejected by authorize, by reason.",
    ["reason"],
    registry=REGISTRY,
)
cdrs = Counter(
    "callgate_cdrs_total",
    "CDRs and failed CDRs written, by disposition.",
    ["disposition"],
    registry=REGISTRY,
)
unresolved_cdrs = Counter(
    "callgate_unresolved_cdrs_total",
    "Expired sessions with no record of their outcome, billed 0.",
    registry=REGISTRY,
)
live_sessions = Gauge(
    "callgate_live_sessions",
    "Sessions authorized and not yet settled (all nodes).",
    registry=REGISTRY,
)
reserved_amount = Gauge(
    "callgate_reserved_amount",
    "Money held by reservations of live sessions, in the deployment currency.",
    registry=REGISTRY,
)
db_query_seconds = Histogram(
    "callgate_db_query_duration_seconds",
    "Database work by query name.",
    ["query"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
api_requests = Counter(
    "callgate_api_requests_total",
    "API requests, by API, endpoint and HTTP status.",
    ["api", "endpoint", "status"],
    registry=REGISTRY,
)
api_request_seconds = Histogram(
    "callgate_api_request_duration_seconds",
    "API request handling time, by API.",
    ["api"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)


def observe_query(name: str, seconds: float) -> None:
    db_query_seconds.labels(name).observe(seconds)


sms_messages = Counter(
    "callgate_sms_messages_total",
    "SMS messages reaching a status, by provider and status.",
    ["provider", "status"],
    registry=REGISTRY,
)
esim_orders = Counter(
    "callgate_esim_orders_total",
    "eSIM orders reaching a status, by status.",
    ["status"],
    registry=REGISTRY,
)

ami_connected = Gauge(
    "callgate_ami_connected",
    "1 while this process's AMI link to its node is logged in.",
    registry=REGISTRY,
)
ami_reconnects = Counter(
    "callgate_ami_reconnects_total",
    "AMI links lost (each is followed by a reconnect attempt).",
    registry=REGISTRY,
)
ami_events = Counter(
    "callgate_ami_events_total",
    "AMI events received, by event name.",
    ["event"],
    registry=REGISTRY,
)
debit_hangups = Counter(
    "callgate_debit_hangups_total",
    "Calls hung up over AMI because their money ran out.",
    registry=REGISTRY,
)
outage_unfunded = Counter(
    "callgate_outage_unfunded_amount_total",
    "Money live calls could not reserve up to their L() limit when AMI dropped.",
    registry=REGISTRY,
)
cache_expire_actions = Counter(
    "callgate_cache_expire_actions_total",
    "Sorcery memory cache expire and populate actions sent over AMI, by result.",
    ["result"],
    registry=REGISTRY,
)
