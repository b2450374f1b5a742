"""Settings from the environment and an optional TOML file.

Every setting has one environment name (``CALLGATE_…``). The TOML file named by
``CALLGATE_SETTINGS`` uses the same names in lower case without the prefix
(``max_call_duration = 3600``); the environment wins over the file. An invalid
value stops the start with a message that names the setting.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.errors import SettingsError

PREFIX = "CALLGATE_"


def _listen(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("expected HOST:PORT, for example 127.0.0.1:4573")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("expected a port from 0 to 65535")
    return host.strip("[]"), port


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("expected a whole number above 0")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("expected a whole number of 0 or more")
    return number


def _positive_seconds(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("expected a number of seconds above 0")
    return number


def _non_negative_seconds(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError("expected a number of seconds of 0 or more")
    return number


def _currency(value: str) -> str:
    if len(value) != 3 or not value.isalpha() or not value.isupper():
        raise ValueError("expected a three-letter ISO 4217 code such as EUR")
    return value


def _optional_text(value: str) -> str | None:
    return value or None


def _ami_url(value: str) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme != "ami" or not parts.hostname or not parts.username:
        raise ValueError("expected ami://USER:SECRET@HOST:PORT")
    if parts.password is None:
        raise ValueError("expected ami://USER:SECRET@HOST:PORT (the secret is missing)")
    _ = parts.port  # raises ValueError for a port that is not a number
    return value


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level


def _money(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise ValueError("expected a decimal amount such as 1.50") from exc
    if not amount.is_finite() or amount < 0:
        raise ValueError("expected a decimal amount of 0 or more")
    return amount


def _janus_plugins(value: str) -> str:
    plugins = [item.strip() for item in value.split(",") if item.strip()]
    if not plugins or not all(
        item.replace(".", "").replace("_", "").replace("-", "").isalnum()
        for item in plugins
    ):
        raise ValueError(
            "expected plugin names such as janus.plugin.sip, comma-separated"
        )
    return ",".join(plugins)


def _websocket_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("expected a ws:// or wss:// URL, for example wss://host:8989/")
    return value


def _http_url(value: str) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "expected an http:// or https:// URL, for example http://127.0.0.1:9300"
        )
    _ = parts.port  # raises ValueError for a port that is not a number
    return value.rstrip("/")


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            "expected an IANA time zone name such as Europe/Berlin or UTC"
        ) from exc
    return value


@dataclass(frozen=True)
class Spec:
    """How one setting is named, parsed, defaulted and documented."""

    field: str
    parse: Callable[[str], Any]
    default: str
    help: str

    @property
    def env(self) -> str:
        return PREFIX + self.field.upper()


SPECS: tuple[Spec, ...] = (
    Spec(
        "database_url",
        _optional_text,
        "",
        "PostgreSQL URL (postgresql://user:pass@host:port/db). Empty: start an "
        "embedded PostgreSQL under the data directory.",
    ),
    Spec("data_dir", Path, "./var", "Directory for the embedded database and state."),
    Spec(
        "db_pool_size",
        _positive_int,
        "12",
        "Most database connections of one process. More than a few per core "
        "makes concurrent calls wait on each other's row locks, not run faster.",
    ),
    Spec("agi_listen", _listen, "127.0.0.1:4573", "FastAGI listen address HOST:PORT."),
    Spec("api_listen", _listen, "127.0.0.1:8080", "HTTP API listen address HOST:PORT."),
    Spec(
        "metrics_listen",
        lambda v: _listen(v) if v else None,
        "",
        "Listen address for /metrics when the API is not run (HOST:PORT).",
    ),
    Spec(
        "max_call_duration",
        _positive_int,
        "10800",
        "Longest call callgate authorizes, in seconds.",
    ),
    Spec(
        "ring_timeout",
        _positive_int,
        "60",
        "Dial timeout in seconds, passed to the dialplan as CALLGATE_DIAL_TIMEOUT.",
    ),
    Spec(
        "agi_deadline",
        _positive_seconds,
        "2",
        "Time budget of one FastAGI session, in seconds; past it the call fails "
        "closed (CALLGATE_STATUS=ERROR).",
    ),
    Spec(
        "agi_max_sessions",
        _positive_int,
        "2000",
        "Most FastAGI sessions served at once; more are refused.",
    ),
    Spec(
        "agi_max_header_bytes",
        _positive_int,
        "16384",
        "Largest FastAGI environment block accepted, in bytes.",
    ),
    Spec("currency", _currency, "EUR", "The one currency of this deployment."),
    Spec(
        "ami_url",
        _ami_url,
        "",
        "Asterisk manager interface, ami://USER:SECRET@HOST:PORT. Empty: no AMI.",
    ),
    Spec(
        "debit_interval",
        _positive_int,
        "60",
        "Seconds of talk time funded ahead while AMI is connected.",
    ),
    Spec(
        "hangup_margin",
        _non_negative_seconds,
        "1",
        "Seconds before the last funded second at which an unfunded call is cut.",
    ),
    Spec(
        "settle_grace",
        _positive_seconds,
        "10",
        "Seconds after the caller's AMI Hangup to wait for the settle AGI before "
        "settling from AMI events.",
    ),
    Spec(
        "expiry_margin",
        _non_negative_int,
        "300",
        "Seconds past its max duration and ring timeout after which a live "
        "session is expired and billed from Asterisk's CDR.",
    ),
    Spec(
        "expiry_interval",
        _positive_seconds,
        "30",
        "Seconds between two sweeps for expired sessions.",
    ),
    Spec(
        "node",
        str,
        "",
        "Asterisk node name (its systemname) whose AMI this process watches.",
    ),
    Spec(
        "hangup_removed_endpoints",
        _boolean,
        "false",
        "Hang up the live calls of a SIP account or IP authorization that is "
        "deleted or disabled (over AMI).",
    ),
    Spec("log_level", _log_level, "INFO", "DEBUG, INFO, WARNING or ERROR."),
    Spec(
        "trusted_proxies",
        _networks,
        "",
        "Comma-separated networks whose X-Forwarded-For is believed.",
    ),
    Spec(
        "allow_private_ip_auth",
        _boolean,
        "false",
        "Accept private and loopback addresses for IP authorization (lab use).",
    ),
    Spec("tls_cert", _optional_text, "", "PEM certificate file for HTTPS on the API."),
    Spec("tls_key", _optional_text, "", "PEM private key file for HTTPS on the API."),
    Spec(
        "auth_failure_limit",
        _positive_int,
        "20",
        "Failed API authentications allowed per client address per window.",
    ),
    Spec(
        "auth_failure_window",
        _positive_seconds,
        "60",
        "Window for the failed-authentication limit, in seconds.",
    ),
    Spec(
        "voucher_limit",
        _positive_int,
        "10",
        "Voucher redemptions allowed per API key per window.",
    ),
    Spec(
        "voucher_window",
        _positive_seconds,
        "60",
        "Window for the voucher redemption limit, in seconds.",
    ),
    Spec(
        "api_max_body_bytes",
        _positive_int,
        "65536",
        "Largest API request body accepted, in bytes; a larger one gets HTTP 413.",
    ),
    Spec(
        "default_markup",
        _money,
        "0.20",
        "Markup of a new reseller's retail plan over its wholesale plan (0.20 = 20 %).",
    ),
    Spec(
        "janus_secret",
        _optional_text,
        "",
        "Janus token_auth_secret shared with the Janus gateway; signs Web Phone "
        "tokens. Empty: client-softphone-token answers 503.",
    ),
    Spec(
        "janus_plugins",
        _janus_plugins,
        "janus.plugin.sip",
        "Comma-separated Janus plugins a Web Phone token grants.",
    ),
    Spec(
        "webphone_ws_url",
        _websocket_url,
        "ws://127.0.0.1:8188/",
        "Janus WebSocket URL handed to Web Phones.",
    ),
    Spec(
        "webphone_sip_domain",
        str,
        "127.0.0.1",
        "SIP domain of Web Phone identities (sip:<login>_web1@DOMAIN).",
    ),
    Spec(
        "softphone_token_ttl",
        _positive_int,
        "3600",
        "Lifetime of a Web Phone token, in seconds.",
    ),
    Spec(
        "portal_auth_failure_limit",
        _positive_int,
        "5",
        "Wrong passwords allowed per client login and reseller before the portal "
        "login is locked for the rest of the window.",
    ),
    Spec(
        "portal_auth_failure_window",
        _positive_seconds,
        "900",
        "Window of the portal login lockout, in seconds.",
    ),
    Spec(
        "login_check_limit",
        _positive_int,
        "30",
        "Login availability checks (check-client-login, taken logins in "
        "create-client) allowed per API key per window.",
    ),
    Spec(
        "login_check_window",
        _positive_seconds,
        "60",
        "Window of the login availability limit, in seconds.",
    ),
    Spec(
        "timezone",
        _timezone,
        "UTC",
        "IANA time zone of the server; an SMS scheduled_at without an offset is "
        "read in it.",
    ),
    Spec(
        "sms_url",
        _http_url,
        "",
        "Base URL of the CryptoSMS HTTP provider (POST /send, GET /status/ID). "
        "Empty: the cryptosms provider is off.",
    ),
    Spec(
        "sms_api_key",
        _optional_text,
        "",
        "Bearer token callgate sends to the CryptoSMS provider.",
    ),
    Spec(
        "sms_timeout",
        _positive_seconds,
        "10",
        "Seconds to wait for the SMS provider; past it the message stays PENDING "
        "with its reservation held.",
    ),
    Spec(
        "sms_rate_limit",
        _positive_int,
        "10",
        "Most queued SMS (scheduled and bulk) sent per second per provider, "
        "across all daemons.",
    ),
    Spec(
        "sms_dlr_secret",
        _optional_text,
        "",
        "Shared secret of the delivery-report callback (HMAC-SHA256 of the body "
        "in X-Callgate-Signature). Empty: delivery reports are rejected.",
    ),
    Spec(
        "esim_url",
        _http_url,
        "",
        "Base URL of the eSIM upstream (GET /packages, POST /orders). Empty: no "
        "upstream eSIM provider.",
    ),
    Spec(
        "esim_api_key",
        _optional_text,
        "",
        "Bearer token callgate sends to the eSIM upstream.",
    ),
    Spec(
        "esim_timeout",
        _positive_seconds,
        "15",
        "Seconds to wait for the eSIM upstream; past it the order stays PENDING "
        "with its reservation held.",
    ),
    Spec(
        "esim_markup",
        _money,
        "0",
        "Operator markup over the eSIM upstream price (0.30 = 30 %).",
    ),
    Spec(
        "local_providers",
        _boolean,
        "false",
        "Offer the local development SMS provider (code local) and eSIM catalogue, "
        "which need no network and deliver nothing. Not for production.",
    ),
)


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    data_dir: Path
    db_pool_size: int
    agi_listen: tuple[str, int]
    api_listen: tuple[str, int]
    metrics_listen: tuple[str, int] | None
    max_call_duration: int
    ring_timeout: int
    agi_deadline: float
    agi_max_sessions: int
    agi_max_header_bytes: int
    currency: str
    ami_url: str | None
    debit_interval: int
    hangup_margin: float
    settle_grace: float
    expiry_margin: int
    expiry_interval: float
    node: str
    hangup_removed_endpoints: bool
    log_level: str
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    allow_private_ip_auth: bool
    tls_cert: str | None
    tls_key: str | None
    auth_failure_limit: int
    auth_failure_window: float
    voucher_limit: int
    voucher_window: float
    api_max_body_bytes: int
    default_markup: Decimal
    janus_secret: str | None
    janus_plugins: str
    webphone_ws_url: str
    webphone_sip_domain: str
    softphone_token_ttl: int
    portal_auth_failure_limit: int
    portal_auth_failure_window: float
    login_check_limit: int
    login_check_window: float
    timezone: str
    sms_url: str | None
    sms_api_key: str | None
    sms_timeout: float
    sms_rate_limit: int
    sms_dlr_secret: str | None
    esim_url: str | None
    esim_api_key: str | None
    esim_timeout: float
    esim_markup: Decimal
    local_providers: bool

    def replace(self, **changes: Any) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


def _read_file(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise SettingsError(
            f"CALLGATE_SETTINGS={path}: cannot read the file: {exc}"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"CALLGATE_SETTINGS={path}: invalid TOML: {exc}") from exc
    known = {spec.field for spec in SPECS}
    values: dict[str, str] = {}
    for key, value in document.items():
        if key not in known:
            raise SettingsError(
                f"CALLGATE_SETTINGS={path}: unknown setting {key!r}; "
                f"known settings: {', '.join(sorted(known))}"
            )
        if isinstance(value, bool):
            values[key] = "true" if value else "false"
        elif isinstance(value, list):
            values[key] = ",".join(str(item) for item in value)
        else:
            values[key] = str(value)
    return values


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every setting; raise SettingsError naming the first invalid one."""
    env = os.environ if environ is None else environ
    from_file: dict[str, str] = {}
    settings_path = env.get(PREFIX + "SETTINGS")
    if settings_path:
        from_file = _read_file(settings_path)

    values: dict[str, Any] = {}
    for spec in SPECS:
        if spec.env in env:
            raw, origin = env[spec.env], spec.env
        elif spec.field in from_file:
            raw, origin = from_file[spec.field], f"{spec.field} in {settings_path}"
        else:
            raw, origin = spec.default, f"{spec.env} (default)"
        try:
            values[spec.field] = spec.parse(raw.strip())
        except (ValueError, ArithmeticError) as exc:
            raise SettingsError(f"{origin}={raw!r} is invalid: {exc}") from exc
    settings = Settings(**values)
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SettingsError(
            "CALLGATE_TLS_CERT and CALLGATE_TLS_KEY must be set together for HTTPS"
        )
    return settings


def describe_settings() -> str:
    """Return the help text that lists every setting with its default."""
    lines = ["settings (environment, or the TOML file named by CALLGATE_SETTINGS):"]
    for spec in SPECS:
        default = spec.default or "(empty)"
        lines.append(f"  {spec.env:<34} {spec.help} Default: {default}")
    return "\n".join(lines)


def settings_markdown() -> str:
    """Return the settings table of the README (a test keeps the two equal)."""
    rows = ["| setting | default | what it sets |", "| --- | --- | --- |"]
    for spec in SPECS:
        default = f"`{spec.default}`" if spec.default else "(empty)"
        rows.append(f"| `{spec.env}` | {default} | {spec.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_markdown())
