"""A misconfigured operator says what to fix, naming the setting, and exits non-zero where it
cannot run; no traceback, no secret in what it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import redis

from devtools.operator_process import OperatorProcess
from devtools.servers import free_port

pytestmark = pytest.mark.e2e


def run(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "RELAY_STARTUP_TIMEOUT_SECONDS": "2", "RELAY_HTTP_PORT": str(free_port()), **env}
    return subprocess.run([sys.executable, "-m", "controller", "run"], env=full, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def assert_clear(result: subprocess.CompletedProcess[str], code: int, setting: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert setting in output, output
    assert "Traceback" not in output, output
    return output


def test_unreachable_redis(operator_env: dict[str, str]) -> None:
    assert_clear(run({**operator_env, "RELAY_REDIS_URL": "redis://127.0.0.1:1/0"}), 1, "RELAY_REDIS_URL")


def test_wrong_redis_password(operator_env: dict[str, str], redis_server: Any) -> None:
    admin = redis.Redis(host=redis_server.host, port=redis_server.port)
    admin.config_set("requirepass", "right-horse")
    try:
        url = f"redis://:wrong-battery@{redis_server.host}:{redis_server.port}/0"
        output = assert_clear(run({**operator_env, "RELAY_REDIS_URL": url}), 1, "RELAY_REDIS_URL")
        assert "wrong-battery" not in output
    finally:
        redis.Redis(host=redis_server.host, port=redis_server.port, password="right-horse").config_set(
            "requirepass", ""
        )


def test_unreachable_postgres(operator_env: dict[str, str]) -> None:
    url = "postgresql://relay:pw-secret@127.0.0.1:1/relay"
    output = assert_clear(run({**operator_env, "RELAY_DATABASE_URL": url}), 1, "RELAY_DATABASE_URL")
    assert "pw-secret" not in output


def test_unknown_postgres_role(operator_env: dict[str, str], postgres_server: Any) -> None:
    url = operator_env["RELAY_DATABASE_URL"].replace("postgres@", "no_such_role@")
    output = assert_clear(run({**operator_env, "RELAY_DATABASE_URL": url}), 1, "RELAY_DATABASE_URL")
    assert "credentials" in output


def test_invalid_setting(operator_env: dict[str, str]) -> None:
    assert_clear(run({**operator_env, "RELAY_CONCURRENCY": "zero"}), 2, "RELAY_CONCURRENCY")


def test_no_kubeconfig(operator_env: dict[str, str]) -> None:
    assert_clear(run({**operator_env, "KUBECONFIG": "/nonexistent/kubeconfig"}), 1, "KUBECONFIG")


def test_evicting_redis_is_a_loud_warning(
    operator_env: dict[str, str], redis_server: Any, tmp_path: Any
) -> None:
    admin = redis.Redis(host=redis_server.host, port=redis_server.port)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    try:
        op = OperatorProcess(operator_env, tmp_path / "op.log").start()
        try:
            warnings = [r for r in op.log_records() if "maxmemory-policy" in r.get("msg", "")]
            assert warnings and warnings[0]["level"] == "WARNING"
            assert warnings[0]["setting"] == "RELAY_REDIS_URL"
        finally:
            assert op.stop() == 0
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
