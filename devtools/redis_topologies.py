"""Redis as managed services offer it, for the tests: TLS with an ACL user, and Cluster.

Each is a `RedisServer` started with other options, so it keeps the bookkeeping of `servers.py`
(pid file, log, stop/kill/pause); each node gets a workdir of its own.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

from devtools.pki import PKI
from devtools.servers import RedisServer, ServerError, free_port, port_is_free


class SecureRedisServer(RedisServer):
    """TLS only (no plaintext port), the `default` user off and one ACL user with a password."""

    name = "redis-tls"

    def __init__(self, workdir: Path, executable: Path, *, pki: PKI, user: str, password: str) -> None:
        super().__init__(workdir, executable)
        self.pki = pki
        self.user = user
        self.password = password

    @property
    def url(self) -> str:
        return (
            f"rediss://{self.user}:{self.password}@{self.host}:{self.port}/0?ssl_ca_certs={self.pki.ca_cert}"
        )

    def command(self) -> list[str]:
        plain = super().command()
        plain[plain.index("--port") + 1] = "0"
        return [
            *plain,
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.pki.serving_cert),
            "--tls-key-file", str(self.pki.serving_key),
            "--tls-ca-cert-file", str(self.pki.ca_cert),
            "--tls-auth-clients", "no",
            "--user", "default", "off",
            "--user", self.user, "on", f">{self.password}", "~*", "&*", "+@all",
        ]  # fmt: skip

    def ping(self, timeout: float = 1.0) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        hello = f"AUTH {self.user} {self.password}\r\nPING\r\n".encode()
        try:
            with (
                socket.create_connection((self.host, self.port), timeout=timeout) as raw,
                context.wrap_socket(raw, server_hostname=self.host) as sock,
            ):
                sock.sendall(hello)
                answer = b""
                while answer.count(b"\r\n") < 2:
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    answer += chunk
                return answer == b"+OK\r\n+PONG\r\n"
        except OSError:
            return False


class ClusterRedisNode(RedisServer):
    """One primary of a Redis Cluster; `create_cluster` joins the nodes once all are up."""

    name = "redis-cluster-node"

    def prepare(self) -> None:
        super().prepare()
        # Each node also listens on its port + 10000 for the cluster bus, so both must be free.
        while not self.port or self.port > 55535 or not port_is_free(self.port + 10000, self.host):
            self.port = free_port(self.host)

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.data_dir / "nodes.conf"),
            "--cluster-node-timeout", "2000",
        ]  # fmt: skip


def create_cluster(nodes: list[ClusterRedisNode], redis_cli: Path, timeout: float = 60.0) -> str:
    """Assign all slots across `nodes` (primaries only) and wait for the cluster to say ok;
    returns the `redis+cluster://` URL the operator takes."""
    addresses = [f"{node.host}:{node.port}" for node in nodes]
    result = subprocess.run(
        [str(redis_cli), "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise ServerError(f"redis-cli --cluster create failed: {result.stdout}{result.stderr}")
    deadline = time.monotonic() + timeout
    for node in nodes:
        while True:
            info = subprocess.run(
                [str(redis_cli), "-h", node.host, "-p", str(node.port), "CLUSTER", "INFO"],
                capture_output=True,
                text=True,
                check=False,
            )
            if "cluster_state:ok" in info.stdout:
                break
            if time.monotonic() > deadline:
                raise ServerError(f"{node.host}:{node.port} never reported cluster_state:ok")
            time.sleep(0.2)
    return f"redis+cluster://{','.join(addresses)}/0"


class ReplicaRedisServer(RedisServer):
    """A replica of `primary`, which Sentinel may promote."""

    name = "redis-replica"

    def __init__(self, workdir: Path, executable: Path, *, primary: RedisServer) -> None:
        super().__init__(workdir, executable)
        self.primary = primary

    def command(self) -> list[str]:
        return [*super().command(), "--replicaof", self.primary.host, str(self.primary.port)]

    def synced(self) -> bool:
        return "master_link_status:up" in _redis_cli(self, "INFO", "replication")


class SentinelServer(RedisServer):
    """One Sentinel watching `primary` as `service`. Its config file is its own (Sentinel rewrites
    it with what it learns), so it is written once and kept across restarts."""

    name = "redis-sentinel"

    def __init__(self, workdir: Path, executable: Path, *, primary: RedisServer, service: str) -> None:
        super().__init__(workdir, executable)
        self.primary = primary
        self.service = service

    @property
    def config_file(self) -> Path:
        return self.data_dir / "sentinel.conf"

    def prepare(self) -> None:
        super().prepare()
        if not self.port:
            self.port = free_port(self.host)
        if not self.config_file.exists():
            self.config_file.write_text(
                f"port {self.port}\n"
                f"bind {self.host}\n"
                f"dir {self.data_dir}\n"
                f"sentinel monitor {self.service} {self.primary.host} {self.primary.port} 2\n"
                # Quick to notice and to promote: the tests fail the primary on purpose.
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 10000\n"
            )

    def command(self) -> list[str]:
        return [str(self.executable), str(self.config_file), "--sentinel", "--logfile", ""]

    def primary_address(self) -> tuple[str, int] | None:
        answer = _redis_cli(self, "SENTINEL", "get-master-addr-by-name", self.service).split()
        return (answer[0], int(answer[1])) if len(answer) == 2 and answer[1].isdigit() else None


def _redis_cli(server: RedisServer, *command: str) -> str:
    result = subprocess.run(
        ["redis-cli", "-h", server.host, "-p", str(server.port), *command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return result.stdout
