"""RELAY_REDIS_URL for each Redis topology: parsed once, refused at start-up with the setting named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from controller.settings import RedisEndpoint, Settings, describe_error, redis_endpoint


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    url = "rediss+sentinel://relay:p%40ss@10.0.0.1:26379,[::1]:26380/mymaster/2?ssl_ca_certs=/ca/ca.crt"
    assert redis_endpoint(url) == RedisEndpoint(
        topology="sentinel",
        tls=True,
        hosts=(("10.0.0.1", 26379), ("::1", 26380)),
        username="relay",
        password="p@ss",
        service="mymaster",
        db=2,
        options={"ssl_ca_certs": "/ca/ca.crt"},
    )


def test_a_cluster_url_names_its_seed_nodes() -> None:
    endpoint = redis_endpoint("redis+cluster://:secret@a:7000,b:7001")
    assert (endpoint.topology, endpoint.hosts, endpoint.password, endpoint.username) == (
        "cluster",
        (("a", 7000), ("b", 7001)),
        "secret",
        None,
    )


def test_plain_urls_are_left_to_redis_py() -> None:
    endpoint = redis_endpoint("rediss://u:p@redis.example:6380/1?ssl_ca_certs=/ca.crt")
    assert (endpoint.topology, endpoint.tls, endpoint.options) == (
        "single",
        True,
        {"ssl_ca_certs": "/ca.crt"},
    )


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://u:hunter2@localhost", "redis+sentinel://"),
        ("redis+sentinel://u:hunter2@a:26379", "names its service"),
        ("redis+sentinel://u:hunter2@a/mymaster", "is not host:port"),
        ("redis+sentinel://u:hunter2@a:1/mymaster/zero", "expected /<db>"),
        ("redis+cluster://u:hunter2@a:1/3", "only database 0"),
    ],
)
def test_a_malformed_url_is_refused_naming_the_setting_not_the_password(
    monkeypatch: pytest.MonkeyPatch, url: str, fragment: str
) -> None:
    monkeypatch.setenv("RELAY_REDIS_URL", url)
    with pytest.raises(ValidationError) as caught:
        Settings()
    text = describe_error(caught.value)
    assert "RELAY_REDIS_URL" in text and fragment in text
    assert "hunter2" not in text
