"""SMS and eSIM provider adapters and the registry that builds them from settings."""

from __future__ import annotations

from engine.providers.base import EsimProvider, SmsProvider
from engine.providers.cryptosms import CryptoSms
from engine.providers.esim_upstream import EsimUpstream
from engine.providers.local import LocalEsim, LocalSms
from engine.settings import Settings


def sms_providers(settings: Settings) -> dict[str, SmsProvider]:
    """Return the configured SMS providers by code, the default first."""
    providers: dict[str, SmsProvider] = {}
    if settings.sms_url:
        providers["cryptosms"] = CryptoSms(
            settings.sms_url, settings.sms_api_key, settings.sms_timeout
        )
    if settings.local_providers:
        providers["local"] = LocalSms()
    return providers


def esim_provider(settings: Settings) -> EsimProvider | None:
    """Return the configured eSIM provider: the upstream, else local, else None."""
    if settings.esim_url:
        return EsimUpstream(
            settings.esim_url,
            settings.esim_api_key,
            settings.esim_timeout,
            settings.currency,
        )
    if settings.local_providers:
        return LocalEsim(settings.currency)
    return None
