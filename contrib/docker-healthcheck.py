"""Docker health check of a callgate container: GET /metrics on its own listener.

Exits 0 when the API listener, or CALLGATE_METRICS_LISTEN for a process run
with --no-api, returns HTTP 200 for /metrics, and 1 otherwise. It reads the
same settings as `callgate serve` (environment and CALLGATE_SETTINGS file), so
the check follows the listen addresses and TLS of the process it checks.
"""

from __future__ import annotations

import ssl
import sys
import urllib.request

from engine.errors import SettingsError
from engine.settings import load_settings

TIMEOUT_SECONDS = 3


def local_url(host: str, port: int, scheme: str) -> str:
    """Return the /metrics URL of a listener, seen from inside the container."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/metrics"


def candidate_urls() -> list[str]:
    settings = load_settings()
    scheme = "https" if settings.tls_cert else "http"
    urls = [local_url(*settings.api_listen, scheme)]
    if settings.metrics_listen is not None:
        # The metrics-only listener never uses TLS (api/serve.py).
        urls.append(local_url(*settings.metrics_listen, "http"))
    return urls


def main() -> int:
    try:
        urls = candidate_urls()
    except SettingsError as exc:
        print(f"health check failed: {exc}", file=sys.stderr)
        return 1
    # The certificate names the public host, not the loopback address that
    # this check connects to, so it is not verified here.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(
                url, timeout=TIMEOUT_SECONDS, context=context
            ) as response:
                if response.status == 200:
                    return 0
                errors.append(f"{url}: HTTP {response.status}")
        except OSError as exc:  # URLError, HTTPError, timeouts and TLS errors
            errors.append(f"{url}: {exc}")
    print("health check failed: " + "; ".join(errors), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
