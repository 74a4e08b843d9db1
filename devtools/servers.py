"""The real servers behind the sandbox and the test fixtures, one class each.

Every server runs detached in its own session (its own process group), logs to
`<workdir>/logs/<name>.log` and records its pid in `<workdir>/<name>.pid`, so a later process (a
second `sandbox up`, `sandbox down`, a test that injects a fault) can find it, check it, pause it
or stop it without having started it. A server keeps its port across stop/start so clients that
hold its URL reconnect to the restarted instance, which is what fault-injection tests rely on.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

from devtools.files import write_atomic
from devtools.pki import PKI

LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    pass


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Without SO_REUSEADDR a port in TIME_WAIT from our own stopped server would look busy
        # and force a new port on every restart.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return []
    # The command name is parenthesised and may itself contain spaces or parentheses.
    return raw[raw.rfind(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """True for a running or stopped process; a zombie has exited and only awaits its reaper."""
    if not Path("/proc").is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _proc_stat(pid)
    if fields is None:
        return False
    return not fields or fields[0] not in ("Z", "X", "x")


def process_tree(root: int) -> list[int]:
    """The live processes of a server: its process group and every descendant.

    Both, because PostgreSQL's children call setsid() and leave the group, while a child that
    outlives its parent is re-parented and only the group still ties it to the server.
    """
    table: dict[int, tuple[str, int, int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _proc_stat(int(entry.name))
        if fields and len(fields) > 2:
            table[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]))
    found = {pid for pid, (_, _, pgrp) in table.items() if pgrp == root}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (_, ppid, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    if root in table:
        found.add(root)
    return sorted(pid for pid in found if table.get(pid, ("Z",))[0] not in ("Z", "X", "x"))


def _signal_all(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        # Gone already, or (unprivileged) not ours to signal: either way nothing to do.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class Server(abc.ABC):
    """One detached server process; subclasses say how to run it and how to tell it is ready."""

    name: ClassVar[str]
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    start_timeout: ClassVar[float] = 60.0

    def __init__(self, workdir: Path, executable: Path, *, port: int = 0) -> None:
        self.workdir = workdir
        self.executable = executable
        self.host = LOOPBACK
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None

    # -- what subclasses provide -------------------------------------------------------------

    @abc.abstractmethod
    def command(self) -> list[str]: ...

    @abc.abstractmethod
    def check_health(self) -> bool:
        """One quick probe; True once the server answers real requests."""

    @property
    @abc.abstractmethod
    def url(self) -> str: ...

    # Optional hooks, empty by design: most servers need neither.
    def prepare(self) -> None:  # noqa: B027
        """Create data directories and anything else needed before the first launch."""

    def after_start(self) -> None:  # noqa: B027
        """Runs once the server is healthy (e.g. to create a database)."""

    def run_as(self) -> tuple[int, int] | None:
        return None

    def state(self) -> dict[str, Any]:
        """What a later process needs to find and re-run this server (persisted by Sandbox)."""
        return {"executable": str(self.executable), "port": self.port}

    # -- process bookkeeping -----------------------------------------------------------------

    @property
    def pid_file(self) -> Path:
        return self.workdir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.workdir / "logs" / f"{self.name}.log"

    def recorded_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    @property
    def pid(self) -> int | None:
        """The live pid of this server, or None; a recycled pid is not mistaken for ours."""
        pid = self.recorded_pid()
        if pid is None or not pid_alive(pid):
            return None
        try:
            exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
        except FileNotFoundError:
            return None
        except OSError:
            return pid  # no /proc or not ours to inspect: trust the pid file
        return pid if exe == os.path.realpath(self.executable) else None

    def is_running(self) -> bool:
        return self.pid is not None

    def is_paused(self) -> bool:
        pid = self.pid
        fields = _proc_stat(pid) if pid is not None else None
        return fields is not None and len(fields) > 0 and fields[0] in ("T", "t")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to answer (see wait_ready)."""
        if self.is_running():
            raise ServerError(f"{self.name} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        if not self.port:
            self.port = free_port(self.host)
        elif not port_is_free(self.port, self.host):
            raise ServerError(f"{self.name}: port {self.host}:{self.port} is already in use")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        command = self.command()
        credentials = self.run_as()
        with self.log_file.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log.write(f"--- {stamp} starting: {' '.join(command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._cwd(),
                # Own session: survives the CLI that started it, ignores the terminal's ^C, and
                # gives one process group to pause or kill as a whole.
                start_new_session=True,
                user=credentials[0] if credentials else None,
                group=credentials[1] if credentials else None,
                extra_groups=[] if credentials else None,
            )
        write_atomic(self.pid_file, f"{self._proc.pid}\n")

    def _cwd(self) -> Path:
        return self.workdir

    def wait_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        delay = 0.05
        while not self.check_health():
            exited = self._proc.poll() if self._proc is not None else None
            if exited is not None or (self._proc is None and not self.is_running()):
                self.stop()
                raise ServerError(
                    f"{self.name} exited during start-up (status {exited}); "
                    f"last lines of {self.log_file}:\n{_log_tail(self.log_file)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"{self.name} did not become ready within {timeout or self.start_timeout:.0f}s"
                    f"; last lines of {self.log_file}:\n{_log_tail(self.log_file)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        self.after_start()

    def healthy_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if self.check_health():
                return True
            if time.monotonic() > deadline or not self.is_running():
                return False
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop, then SIGKILL for everything the server spawned; idempotent."""
        pid = self.pid
        if pid is not None:
            # Taken before signalling: once the leader exits its children are re-parented.
            tree = process_tree(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, self.stop_signal)
            # A paused server would otherwise hold the signal pending forever.
            _signal_all(tree, signal.SIGCONT)
            if not self._wait_gone(pid, timeout):
                _signal_all(tree, signal.SIGKILL)
                self._wait_gone(pid, 10.0)
            _signal_all([p for p in tree if pid_alive(p)], signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:
                    return True
            elif not pid_alive(pid):
                return True
            time.sleep(0.05)
        return False

    def restart(self, timeout: float | None = None) -> None:
        self.stop()
        self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP the server and all its processes: connections stay open but nothing answers."""
        _signal_all(process_tree(self._require_pid()), signal.SIGSTOP)

    def resume(self) -> None:
        _signal_all(process_tree(self._require_pid()), signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL every process of the server at once, as a crash would; the pid file stays."""
        pid = self._require_pid()
        _signal_all(process_tree(pid), signal.SIGKILL)
        self._wait_gone(pid, 10.0)
        if self._proc is not None:
            self._proc.wait(timeout=5)
            self._proc = None

    def _require_pid(self) -> int:
        pid = self.pid
        if pid is None:
            raise ServerError(f"{self.name} is not running")
        return pid

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} pid={self.recorded_pid()}>"


def _http_get(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
        body: bytes = response.read()
        return body


class EtcdServer(Server):
    name = "etcd"

    def __init__(self, workdir: Path, executable: Path, *, port: int = 0, peer_port: int = 0):
        super().__init__(workdir, executable, port=port)
        self.peer_port = peer_port

    @property
    def data_dir(self) -> Path:
        return self.workdir / "etcd"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def state(self) -> dict[str, Any]:
        return {**super().state(), "peer_port": self.peer_port}

    def prepare(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.peer_port or not port_is_free(self.peer_port, self.host):
            self.peer_port = free_port(self.host)

    def command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        return [
            str(self.executable),
            "--name=sandbox",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=sandbox={peer}",
            # Durability is worthless for a throw-away cluster and fsync dominates its latency.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

    def check_health(self) -> bool:
        try:
            body = json.loads(_http_get(f"{self.url}/health", timeout=1.0))
        except (OSError, ValueError):
            return False
        return isinstance(body, dict) and body.get("health") == "true"


class KubeAPIServer(Server):
    name = "kube-apiserver"
    start_timeout = 180.0

    def __init__(self, workdir: Path, executable: Path, *, pki: PKI, etcd_url: str, port: int = 0) -> None:
        super().__init__(workdir, executable, port=port)
        self.pki = pki
        self.etcd_url = etcd_url
        self._ssl: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def state(self) -> dict[str, Any]:
        return {**super().state(), "etcd_url": self.etcd_url}

    def command(self) -> list[str]:
        pki = self.pki
        return [
            str(self.executable),
            f"--etcd-servers={self.etcd_url}",
            f"--secure-port={self.port}",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=RBAC",
            # A stable issuer keeps tokens valid when a restart has to pick a new port.
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            # No controller-manager runs, so no default ServiceAccount would ever appear and the
            # admission plugin would reject every pod (envtest makes the same choice).
            "--disable-admission-plugins=ServiceAccount",
            # Queueing and fairness only add latency to a single-tenant test cluster.
            "--enable-priority-and-fairness=false",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            "--v=1",
        ]

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
            context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
            self._ssl = context
        return self._ssl

    def get(self, path: str, timeout: float = 10.0) -> bytes:
        """An authenticated GET as cluster-admin, e.g. get('/metrics')."""
        return _http_get(f"{self.url}{path}", self.ssl_context(), timeout)

    def metrics(self) -> str:
        return self.get("/metrics").decode()

    def check_health(self) -> bool:
        try:
            return self.get("/readyz", timeout=2.0).strip() == b"ok"
        except (OSError, ssl.SSLError, urllib.error.URLError):
            return False


class RedisServer(Server):
    name = "redis"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "redis"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def prepare(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            str(self.executable),
            "--bind", self.host,
            "--port", str(self.port),
            # No persistence: a restart loses everything, which the operator must survive.
            "--save", "",
            "--appendonly", "no",
            "--maxmemory-policy", "noeviction",
            "--maxclients", "10000",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip

    def ping(self, timeout: float = 1.0) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def check_health(self) -> bool:
        return self.ping()


def _postgres_account() -> tuple[str, int, int] | None:
    """The unprivileged account to run PostgreSQL as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return name, entry.pw_uid, entry.pw_gid
    raise ServerError(
        "running as root, but PostgreSQL refuses to run as root and there is neither a "
        "'postgres' nor a 'nobody' user to run it as; create one "
        "(`useradd --system postgres`) or run as an ordinary user"
    )


def _traversable(path: Path, name: str, uid: int, gid: int) -> bool:
    groups = set(os.getgrouplist(name, gid))
    for part in (path, *path.parents):
        try:
            info = part.stat()
        except FileNotFoundError:
            continue
        if info.st_uid == uid:
            needed = stat.S_IXUSR
        elif info.st_gid in groups:
            needed = stat.S_IXGRP
        else:
            needed = stat.S_IXOTH
        if not info.st_mode & needed:
            return False
    return True


class PostgresServer(Server):
    name = "postgres"
    # SIGINT is the fast shutdown; SIGTERM ("smart") would wait for pooled clients forever.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        workdir: Path,
        bindir: Path,
        *,
        port: int = 0,
        database: str = "relay",
        superuser: str = "postgres",
        base_dir: Path | None = None,
    ) -> None:
        super().__init__(workdir, bindir / "postgres", port=port)
        if not database.replace("_", "").isalnum():
            raise ValueError(f"database name must be alphanumeric: {database!r}")
        self.bindir = bindir
        self.database = database
        self.superuser = superuser
        self.account = _postgres_account()
        # Recorded rather than recomputed: permissions may change between `up` and `down`.
        self.base_dir = base_dir or self._choose_base_dir()

    def _choose_base_dir(self) -> Path:
        if self.account is None or _traversable(self.workdir, *self.account):
            return self.workdir
        # PostgreSQL runs unprivileged but cannot reach a root-only directory (pytest's temp
        # dirs, anything under /root): keep its files in a world-traversable place named after
        # the sandbox, and link it from the sandbox so it is still found there.
        return Path(tempfile.gettempdir()) / f"relayjob-pg-{self._digest()}"

    def _digest(self) -> str:
        return hashlib.sha256(str(self.workdir.resolve()).encode()).hexdigest()[:16]

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "pg"

    @property
    def socket_dir(self) -> Path:
        preferred = self.base_dir / "pg-socket"
        # A socket path must fit in sun_path (107 bytes), and ".s.PGSQL.<port>" is appended.
        if len(str(preferred)) <= 85:
            return preferred
        return Path(tempfile.gettempdir()) / f"relayjob-pg-{self._digest()}-socket"

    @property
    def url(self) -> str:
        return self.dsn

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{database}"

    def state(self) -> dict[str, Any]:
        return {
            "bindir": str(self.bindir),
            "port": self.port,
            "database": self.database,
            "base_dir": str(self.base_dir),
        }

    def run_as(self) -> tuple[int, int] | None:
        return None if self.account is None else self.account[1:]

    def _cwd(self) -> Path:
        return self.base_dir

    def _owned_dir(self, path: Path, mode: int) -> None:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        path.chmod(mode)
        if self.account is not None:
            os.chown(path, self.account[1], self.account[2])

    def prepare(self) -> None:
        if self.base_dir != self.workdir:
            self.base_dir.mkdir(mode=0o755, exist_ok=True)
            link = self.workdir / "pg"
            if not link.exists() and not link.is_symlink():
                link.symlink_to(self.data_dir)
        self._owned_dir(self.socket_dir, 0o755)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _initdb(self) -> None:
        # initdb works in a side directory renamed into place, so an interrupted run never leaves
        # a half-initialised cluster that a later run would try to start.
        staging = self.data_dir.with_name(f"{self.data_dir.name}.initdb")
        shutil.rmtree(staging, ignore_errors=True)
        self._owned_dir(staging, 0o700)
        credentials = self.run_as()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            result = subprocess.run(
                [
                    str(self.bindir / "initdb"),
                    f"--pgdata={staging}",
                    f"--username={self.superuser}",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env={**os.environ, "LC_ALL": "C"},
                user=credentials[0] if credentials else None,
                group=credentials[1] if credentials else None,
                extra_groups=[] if credentials else None,
                check=False,
            )
        if result.returncode != 0:
            raise ServerError(
                f"initdb failed (exit {result.returncode}); last lines of {self.log_file}:\n"
                f"{_log_tail(self.log_file)}"
            )
        shutil.rmtree(self.data_dir, ignore_errors=True)
        os.replace(staging, self.data_dir)

    def command(self) -> list[str]:
        return [
            str(self.executable),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-k", str(self.socket_dir),
            "-c", f"listen_addresses={self.host}",
            "-c", "max_connections=300",
            # Crash safety buys nothing in a disposable cluster and costs every commit an fsync.
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
        ]  # fmt: skip

    def check_health(self) -> bool:
        result = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-t", "1"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def psql_path(self) -> Path:
        local = self.bindir / "psql"
        if local.exists():
            return local
        found = shutil.which("psql")
        if found is None:
            raise ServerError(f"psql not found in {self.bindir} or on PATH")
        return Path(found)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser and return unaligned, tuples-only output."""
        result = subprocess.run(
            [str(self.psql_path()), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", self.dsn_for(database), "-c", sql],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ServerError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def after_start(self) -> None:
        query = f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"
        if self.psql(query) != "1":
            self.psql(f'CREATE DATABASE "{self.database}"')

    def remove_data(self) -> None:
        """Delete the cluster's files (the server must be stopped), including any outside workdir."""
        if self.is_running():
            raise ServerError("stop postgres before removing its data")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        if self.base_dir != self.workdir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            link = self.workdir / "pg"
            if link.is_symlink():
                link.unlink()


class PgBouncerServer(Server):
    """PgBouncer in transaction mode in front of `postgres`, as managed PostgreSQL often is: each
    transaction may run on a different server session, and start-up parameters other than the
    few it knows are refused. Every database of `postgres` is reachable through it by name."""

    name = "pgbouncer"

    def __init__(self, workdir: Path, executable: Path, *, postgres: PostgresServer, port: int = 0) -> None:
        super().__init__(workdir, executable, port=port)
        self.postgres = postgres
        # PgBouncer refuses to run as root: it runs as PostgreSQL's account, from a directory
        # that account can read.
        self.account = postgres.account
        traversable = self.account is None or _traversable(workdir, *self.account)
        self.base_dir = workdir if traversable else postgres.base_dir

    @property
    def config_file(self) -> Path:
        return self.base_dir / "pgbouncer.ini"

    @property
    def url(self) -> str:
        return self.dsn_for(self.postgres.database)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.postgres.superuser}@{self.host}:{self.port}/{database}"

    def run_as(self) -> tuple[int, int] | None:
        return None if self.account is None else self.account[1:]

    def _cwd(self) -> Path:
        return self.base_dir

    def prepare(self) -> None:
        self.base_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        users = self.base_dir / "pgbouncer-users.txt"
        users.write_text(f'"{self.postgres.superuser}" ""\n')
        self.config_file.write_text(
            "[databases]\n"
            f"* = host={self.postgres.host} port={self.postgres.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = {self.host}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 2000\n"
            # Fewer server sessions than the operator's pool holds connections, so transactions of
            # one client connection really do move between server sessions.
            "default_pool_size = 8\n"
            "server_reset_query =\n"
        )
        for path in (users, self.config_file):
            path.chmod(0o644)

    def command(self) -> list[str]:
        return [str(self.executable), str(self.config_file)]

    def check_health(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False


class TlsPostgresServer(PostgresServer):
    """PostgreSQL as a managed service offers it: TLS with a certificate from `pki`'s CA (valid
    for 127.0.0.1 and localhost), and a login role `user` that must give `password`. The
    superuser still gets in without one, for the fixtures' own statements."""

    def __init__(self, workdir: Path, bindir: Path, *, pki: PKI, user: str, password: str) -> None:
        super().__init__(workdir, bindir)
        if not user.isalnum() or "'" in password:
            raise ValueError("user must be alphanumeric and the password free of quotes")
        self.pki = pki
        self.user = user
        self.password = password

    def prepare(self) -> None:
        super().prepare()
        for source, name in ((self.pki.serving_cert, "server.crt"), (self.pki.serving_key, "server.key")):
            target = self.data_dir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)  # PostgreSQL refuses a key others may read
            if self.account is not None:
                os.chown(target, self.account[1], self.account[2])
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {self.superuser} 127.0.0.1/32 trust\n"
            f"hostssl all {self.user} 127.0.0.1/32 scram-sha-256\n"
        )

    def command(self) -> list[str]:
        return [*super().command(), "-c", "ssl=on"]

    def after_start(self) -> None:
        super().after_start()
        if self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{self.user}'") != "1":
            self.psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
            self.psql(f'ALTER DATABASE "{self.database}" OWNER TO {self.user}')

    def user_dsn(self, password: str, query: str = "") -> str:
        """The database as the login role reaches it, with `password` and URL query `query`."""
        return f"postgresql://{self.user}:{password}@{self.host}:{self.port}/{self.database}{query}"
