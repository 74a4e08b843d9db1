"""`sandbox up/down` and the fixtures, against the real servers they start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devtools.binaries import Binaries
from devtools.sandbox import COMPONENTS, DEFAULT_CRD, KubeTools, Sandbox
from devtools.servers import PostgresServer, RedisServer, process_tree

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    # A separate process, as a developer runs it: the servers must outlive it.
    return subprocess.run(
        [sys.executable, "-m", "devtools.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def _up(directory: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = _cli("up", "--dir", str(directory))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    return result, elapsed


def _in_env(directory: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run a bash script after sourcing the env file, with a PATH that has a decoy kubectl."""
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "$1"\n{script}', "bash", str(directory / "env")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _pids(directory: Path) -> dict[str, int]:
    return {name: int((directory / f"{name}.pid").read_text()) for name in COMPONENTS}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def sandbox_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "sandbox"
    yield directory
    # Whatever the test did, leave no server behind.
    _cli("down", "--dir", str(directory), "--purge")


@pytest.mark.e2e
def test_up_serves_everything_up_again_reuses_and_down_stops_all(sandbox_dir: Path) -> None:
    _, cold = _up(sandbox_dir)
    print(f"sandbox up (cold) took {cold:.1f}s")

    env = Sandbox(sandbox_dir).env()
    for key in ("KUBECONFIG", "RELAY_REDIS_URL", "RELAY_DATABASE_URL", "RELAY_SANDBOX_DIR", "PATH"):
        assert env[key], key
    binaries = Binaries()
    kubectl, helm = binaries.locate("kubectl"), binaries.locate("helm")
    assert kubectl is not None
    assert helm is not None

    checks = _in_env(
        sandbox_dir,
        """
        command -v kubectl
        command -v helm
        kubectl version >/dev/null  # fails on a build without version stamps
        kubectl get ns -o name
        kubectl auth can-i '*' '*'
        psql "$RELAY_DATABASE_URL" -X -tAc 'select 1'
        """,
    )
    assert checks.returncode == 0, checks.stderr
    lines = checks.stdout.split()
    assert lines[0] == str(kubectl), "the env file must put the built kubectl first on PATH"
    assert lines[1] == str(helm)
    assert "namespace/default" in lines
    assert "namespace/kube-system" in lines
    assert lines[-2:] == ["yes", "1"]
    with redis.Redis.from_url(env["RELAY_REDIS_URL"]) as client:
        assert client.ping() is True
        assert client.config_get("maxclients") == {"maxclients": "10000"}
        assert client.config_get("save") == {"save": ""}

    sandbox = Sandbox(sandbox_dir)
    assert "apiserver_request_total" in sandbox.apiserver.metrics()
    if DEFAULT_CRD.is_file():
        sandbox.kube_tools().kubectl("get", "crd", "relayjobs.relay.dev")

    pids = _pids(sandbox_dir)
    env_text = (sandbox_dir / "env").read_text()
    again, warm = _up(sandbox_dir)
    print(f"sandbox up (warm) took {warm:.1f}s")
    assert _pids(sandbox_dir) == pids, "a second up must reuse the running servers"
    assert again.stderr.count("reusing pid") == len(COMPONENTS)
    assert (sandbox_dir / "env").read_text() == env_text

    tree = [pid for root in pids.values() for pid in process_tree(root)]
    assert len(tree) > len(pids), "postgres has helper processes; they must be tracked too"
    down = _cli("down", "--dir", str(sandbox_dir))
    assert down.returncode == 0, down.stderr
    assert not list(sandbox_dir.glob("*.pid"))
    survivors = [pid for pid in tree if _alive(pid)]
    assert survivors == [], f"processes survived sandbox down: {survivors}"
    assert _cli("down", "--dir", str(sandbox_dir)).returncode == 0, "down twice is harmless"


@pytest.mark.e2e
def test_up_restarts_dead_or_paused_servers_on_their_ports(sandbox_dir: Path) -> None:
    _up(sandbox_dir)
    before = Sandbox(sandbox_dir).env()
    pids = _pids(sandbox_dir)

    os.kill(pids["redis"], signal.SIGKILL)  # a crash leaves its pid file behind
    os.killpg(pids["etcd"], signal.SIGKILL)
    Sandbox(sandbox_dir).postgres.pause()
    result, _ = _up(sandbox_dir)

    after = _pids(sandbox_dir)
    assert after["redis"] != pids["redis"]
    assert after["etcd"] != pids["etcd"]
    assert after["postgres"] == pids["postgres"], "a paused server is resumed, not replaced"
    assert after["kube-apiserver"] == pids["kube-apiserver"], "the API server reconnects to etcd"
    assert "was paused; resuming it" in result.stderr
    assert Sandbox(sandbox_dir).env() == before, "restarted servers keep their URLs"

    status = _cli("status", "--dir", str(sandbox_dir))
    assert status.returncode == 0, status.stdout
    printed = _cli("env", "--dir", str(sandbox_dir))
    assert printed.stdout == (sandbox_dir / "env").read_text()
    checks = _in_env(
        sandbox_dir, "kubectl get ns default -o name; psql \"$RELAY_DATABASE_URL\" -X -tAc 'select 1'"
    )
    assert checks.stdout.split() == ["namespace/default", "1"], checks.stderr

    down = _cli("down", "--dir", str(sandbox_dir), "--purge")
    assert down.returncode == 0, down.stderr
    assert not sandbox_dir.exists()
    assert not any(_alive(pid) for pid in after.values())
    assert _cli("status", "--dir", str(sandbox_dir)).returncode == 1


@pytest.mark.e2e
def test_session_fixtures_serve_real_servers(
    control_plane: KubeTools, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    assert control_plane.kubectl("auth", "can-i", "create", "relayjobs.relay.dev").stdout.strip() == "yes"
    assert control_plane.server.startswith("https://")
    failed = control_plane.kubectl("get", "pods", "-n", "no-such-namespace-x", "nope", check=False)
    assert failed.returncode != 0
    assert "NotFound" in failed.stderr or "not found" in failed.stderr
    version = subprocess.run(
        [str(control_plane.helm_path), "version", "--short"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("v3.")
    with redis.Redis(host=redis_server.host, port=redis_server.port) as client:
        assert client.ping() is True
    assert redis.Redis.from_url(redis_server.url).ping() is True
    assert postgres_server.psql("select current_database()", database="relay") == "relay"
    assert postgres_server.dsn.endswith("/relay")
