"""kopf's own API session honours HTTPS_PROXY / NO_PROXY, as our API client does."""

from __future__ import annotations

import kopf

from controller.handlers import configure
from controller.settings import Settings


def test_kopf_reads_the_proxy_variables() -> None:
    settings = kopf.OperatorSettings()
    configure(settings, Settings(redis_url="redis://x", database_url="postgresql://x"))
    assert settings.networking.trust_env is True
