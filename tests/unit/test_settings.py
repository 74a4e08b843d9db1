import pytest
from pydantic import ValidationError

from controller.settings import Settings, describe_error


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RELAY_CONCURRENCY", "RELAY_NAMESPACES", "RELAY_REDIS_URL"):
        monkeypatch.delenv(key, raising=False)
    settings = Settings()
    assert settings.concurrency == 10
    assert settings.namespaces == []
    assert settings.redis_pool_max >= 2


def test_namespaces_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_NAMESPACES", " team-a, team-b ,,")
    assert Settings().namespaces == ["team-a", "team-b"]


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("RELAY_CONCURRENCY", "0", "greater than or equal to 1"),
        ("RELAY_CONCURRENCY", "ten", "valid integer"),
        ("RELAY_REDIS_URL", "http://localhost", "redis://"),
        ("RELAY_DATABASE_URL", "mysql://x", "postgresql://"),
        ("RELAY_LEASE_SECONDS", "0", "greater than or equal to 1"),
    ],
)
def test_errors_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    text = describe_error(caught.value)
    assert var in text
    assert fragment in text


def test_secrets_do_not_leak_into_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_DATABASE_URL", "postgresql://relay:hunter2@db/relay")
    assert "hunter2" not in repr(Settings())
