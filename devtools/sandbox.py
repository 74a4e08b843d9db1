"""A local environment of real servers: etcd + kube-apiserver, redis-server and PostgreSQL.

Everything lives in one directory (default `.sandbox/`):

    state.json            executables and ports of each server, so later runs find them
    <server>.pid          one per running server
    logs/<server>.log     their output
    pki/, kubeconfig      certificates and an admin kubeconfig (O=system:masters)
    etcd/, redis/, pg/    data
    env                   shell-sourceable exports for the operator, kubectl and helm

The API server authorizes with RBAC alone, so a user the admin impersonates (`kubectl --as`) has
exactly their roles' rights; `up` installs the RelayJob CRD and the Secret-reference admission
policy (manifests/secret-policy.yaml), which judges each such user as the requester.

`up` is idempotent: healthy servers are reused, dead or hung ones are restarted on their previous
port when it is still free. The test fixtures drive the same class with a subset of components,
so the harness and the developer sandbox can never drift apart.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from devtools.binaries import Binaries, file_lock, find_postgres_bindir, find_redis_server
from devtools.files import write_atomic
from devtools.pki import PKI, ensure_pki, write_kubeconfig
from devtools.servers import (
    EtcdServer,
    KubeAPIServer,
    PostgresServer,
    RedisServer,
    Server,
    port_is_free,
)

COMPONENTS = ("etcd", "kube-apiserver", "redis", "postgres")
CONTROL_PLANE = ("etcd", "kube-apiserver")
DEFAULT_CRD = Path(__file__).resolve().parents[1] / "manifests" / "crd.yaml"
DEFAULT_SECRET_POLICY = DEFAULT_CRD.with_name("secret-policy.yaml")
_REUSE_GRACE_SECONDS = 10.0

Logger = Callable[[str], None]
_S = TypeVar("_S", bound=Server)


def stderr_logger(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr, flush=True)


class SandboxError(RuntimeError):
    pass


class CommandError(subprocess.CalledProcessError):
    """A failed kubectl/helm call whose message carries the tool's own explanation."""

    def __str__(self) -> str:
        return f"{shlex.join(str(a) for a in self.cmd)} exited {self.returncode}: {self.stderr}"


class KubeTools:
    """kubectl and helm bound to one cluster's kubeconfig, always the built binaries: the clients a
    user has. (Code that calls the API itself uses the operator's `controller.adapters.kube`.)"""

    def __init__(
        self,
        kubeconfig: Path,
        kubectl_path: Path,
        server: str,
        *,
        helm_path: Path | None = None,
        binaries: Binaries | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.kubectl_path = kubectl_path
        self.server = server
        # The servers behind this cluster when we run them (for fault injection); None for a
        # cluster we were merely given.
        self.sandbox = sandbox
        self._helm_path = helm_path
        self._binaries = binaries or Binaries()

    @property
    def helm_path(self) -> Path:
        # Built on first use only: most tests never need helm and it costs minutes to build.
        if self._helm_path is None:
            self._helm_path = self._binaries.ensure("helm")
        return self._helm_path

    def helm_path_of(self, tool: str) -> Path:
        """`helm` (Helm 3, the sandbox's) or `helm4`, built on first use."""
        return self.helm_path if tool == "helm" else self._binaries.ensure(tool)

    def env(self) -> dict[str, str]:
        """Environment for subprocesses: this cluster, and our kubectl/helm ahead of any other."""
        dirs = [str(self.kubectl_path.parent)]
        if self._helm_path is not None:
            dirs.append(str(self._helm_path.parent))
        path = os.pathsep.join([*dict.fromkeys(dirs), os.environ.get("PATH", "")])
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def _run(
        self, command: list[str], *, check: bool, input: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise CommandError(result.returncode, command, result.stdout, result.stderr)
        return result

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args]
        return self._run(command, check=check, input=input, timeout=timeout)

    def helm(
        self,
        *args: str,
        tool: str = "helm",
        check: bool = True,
        input: str | None = None,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.helm_path_of(tool)), f"--kubeconfig={self.kubeconfig}", *args]
        return self._run(command, check=check, input=input, timeout=timeout)

    def _apply(self, manifest: Path | None, what: str, log: Logger) -> bool:
        """Server-side apply a manifest file; False when there is none."""
        if manifest is None:
            return False
        if not manifest.is_file():
            log(f"warning: {manifest} does not exist; {what} was not installed")
            return False
        self.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager=relayjob-sandbox",
            "-f", str(manifest),
        )  # fmt: skip
        return True

    def install_crd(self, crd: Path | None, log: Logger = stderr_logger) -> bool:
        """Server-side apply the RelayJob CRD and the other relay.dev CRDs beside it (`crd-*.yaml`
        in the same directory: RelayQueue, RelaySchedule), and wait until they serve; False when
        the file is absent."""
        if crd is None or not self._apply(crd, "the RelayJob CRD", log):
            return False
        siblings = sorted(crd.parent.glob("crd-*.yaml"))
        for sibling in siblings:
            self._apply(sibling, f"the CRD in {sibling.name}", log)
        for manifest in (crd, *siblings):
            self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(manifest))
        return True

    def install_secret_policy(self, policy: Path | None, log: Logger = stderr_logger) -> bool:
        """Server-side apply the Secret-reference admission policy and its binding; False when the
        file is absent. The API server enforces it within a second or so of this returning."""
        return self._apply(policy, "the Secret-reference policy", log)

    @classmethod
    def for_existing_cluster(
        cls, kubeconfig: str, scratch: Path, binaries: Binaries | None = None
    ) -> KubeTools:
        """A client for a cluster named by a KUBECONFIG value (possibly a list of files)."""
        binaries = binaries or Binaries()
        kubectl = binaries.ensure("kubectl")
        env = {**os.environ, "KUBECONFIG": kubeconfig}
        view = [str(kubectl), "config", "view", "--minify", "--flatten", "--raw"]
        flattened = subprocess.run(view, capture_output=True, text=True, env=env, check=False)
        if flattened.returncode != 0:
            raise SandboxError(f"KUBECONFIG={kubeconfig} is unusable: {flattened.stderr.strip()}")
        # One self-contained file, so `--kubeconfig` works even when KUBECONFIG was a list.
        scratch.mkdir(parents=True, exist_ok=True)
        path = scratch / "kubeconfig"
        write_atomic(path, flattened.stdout, mode=0o600)  # it holds the user's credentials
        server = subprocess.run(
            [str(kubectl), f"--kubeconfig={path}", "config", "view", "--minify",
             "-o", "jsonpath={.clusters[0].cluster.server}"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        return cls(path, kubectl, server, binaries=binaries)


class Sandbox:
    def __init__(
        self,
        directory: Path | str,
        *,
        components: Sequence[str] = COMPONENTS,
        crd: Path | None = DEFAULT_CRD,
        secret_policy: Path | None = DEFAULT_SECRET_POLICY,
        helm: bool = True,
        binaries: Binaries | None = None,
        log: Logger = stderr_logger,
    ) -> None:
        unknown = set(components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components {sorted(unknown)}; known: {COMPONENTS}")
        if "kube-apiserver" in components and "etcd" not in components:
            raise ValueError("kube-apiserver needs etcd")
        self.directory = Path(directory).expanduser().resolve()
        self.components = tuple(c for c in COMPONENTS if c in components)
        self.crd = crd
        self.secret_policy = secret_policy
        self.helm = helm
        self.binaries = binaries or Binaries()
        self.log = log
        self._servers: dict[str, Server] = {}

    # -- layout ------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    @property
    def env_file(self) -> Path:
        return self.directory / "env"

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.directory / "pki"

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {"servers": {}, "tools": {}}
        if not isinstance(data, dict):
            raise SandboxError(f"{self.state_file} is not a sandbox state file")
        data.setdefault("servers", {})
        data.setdefault("tools", {})
        return data

    def _write_state(self, state: Mapping[str, Any]) -> None:
        write_atomic(self.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")

    # -- servers as recorded in the directory ------------------------------------------------

    def _from_state(self, name: str, state: Mapping[str, Any]) -> Server | None:
        entry = state["servers"].get(name)
        if entry is None:
            return None
        port = int(entry.get("port", 0))
        d = self.directory
        if name == "etcd":
            return EtcdServer(
                d, Path(entry["executable"]), port=port, peer_port=int(entry.get("peer_port", 0))
            )
        if name == "kube-apiserver":
            return KubeAPIServer(
                d,
                Path(entry["executable"]),
                pki=PKI(self.pki_dir),
                etcd_url=str(entry["etcd_url"]),
                port=port,
            )
        if name == "redis":
            return RedisServer(d, Path(entry["executable"]), port=port)
        if name == "postgres":
            base_dir = entry.get("base_dir")
            return PostgresServer(
                d,
                Path(entry["bindir"]),
                port=port,
                database=str(entry.get("database", "relay")),
                base_dir=Path(base_dir) if base_dir else None,
            )
        raise SandboxError(f"unknown server {name!r} in {self.state_file}")

    def server(self, name: str) -> Server:
        if name not in self._servers:
            server = self._from_state(name, self._read_state())
            if server is None:
                raise SandboxError(f"{name} is not part of the sandbox in {self.directory}")
            self._servers[name] = server
        return self._servers[name]

    def _typed(self, name: str, kind: type[_S]) -> _S:
        server = self.server(name)
        assert isinstance(server, kind)
        return server

    @property
    def etcd(self) -> EtcdServer:
        return self._typed("etcd", EtcdServer)

    @property
    def apiserver(self) -> KubeAPIServer:
        return self._typed("kube-apiserver", KubeAPIServer)

    @property
    def redis(self) -> RedisServer:
        return self._typed("redis", RedisServer)

    @property
    def postgres(self) -> PostgresServer:
        return self._typed("postgres", PostgresServer)

    def kube_tools(self) -> KubeTools:
        tools = self._read_state()["tools"]
        if "kubectl" not in tools:
            raise SandboxError(f"no control plane in {self.directory}; run `sandbox up` first")
        helm = tools.get("helm")
        return KubeTools(
            self.kubeconfig,
            Path(tools["kubectl"]),
            self.apiserver.url,
            helm_path=Path(helm) if helm else None,
            binaries=self.binaries,
            sandbox=self,
        )

    # -- up / down ---------------------------------------------------------------------------

    def up(self) -> None:
        """Start what is not running, reuse what is healthy; return once everything answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with file_lock(self.directory / ".lock"):
            started = time.monotonic()
            self._up()
            self.log(f"up in {time.monotonic() - started:.1f}s; source {self.env_file}")

    def _resolve_tools(self) -> dict[str, Path]:
        kube = "kube-apiserver" in self.components
        needed = ["etcd"] if "etcd" in self.components else []
        if kube:
            needed += ["kube-apiserver", "kubectl", *(["helm"] if self.helm else [])]
        # Resolve (and on a fresh machine build) everything before starting anything, so a
        # missing binary fails fast instead of leaving half a sandbox running.
        tools = {tool: self.binaries.ensure(tool) for tool in needed}
        helm = self.binaries.locate("helm") if kube and not self.helm else None
        if helm is not None:
            tools["helm"] = helm
        return tools

    def _reconcile(
        self,
        name: str,
        state: dict[str, Any],
        fresh: Callable[[int], _S],
        compatible: Callable[[Server], bool],
        launched: list[Server],
    ) -> Server:
        """Reuse the recorded server if it is alive, healthy and compatible; else (re)launch it."""
        old = self._from_state(name, state)
        if old is not None and old.pid is not None:
            if old.is_paused():
                self.log(f"{name}: pid {old.pid} was paused; resuming it")
                old.resume()
            if compatible(old) and old.healthy_within(_REUSE_GRACE_SECONDS):
                self.log(f"{name}: reusing pid {old.pid} at {old.url}")
                self._servers[name] = old
                return old
            self.log(f"{name}: pid {old.pid} is unhealthy or outdated; restarting it")
        port = 0
        if old is not None:
            old.stop()  # also clears a stale pid file left by a crash
            if old.port and port_is_free(old.port):
                port = old.port  # clients holding the old URL reconnect to the new process
        server = fresh(port)
        server.launch()
        state["servers"][name] = server.state()
        self._write_state(state)
        self.log(f"{name}: started pid {server.pid} at {server.url}")
        self._servers[name] = server
        launched.append(server)
        return server

    def _up(self) -> None:
        state = self._read_state()
        comps = self.components
        tools = self._resolve_tools()
        redis_exe = find_redis_server() if "redis" in comps else None
        pg_bindir = find_postgres_bindir() if "postgres" in comps else None
        pki = ensure_pki(self.pki_dir) if "kube-apiserver" in comps else None
        directory = self.directory
        launched: list[Server] = []

        def always(_: Server) -> bool:
            return True

        # etcd, redis and postgres start side by side; only the API server has to wait for etcd.
        etcd: Server | None = None
        if "etcd" in comps:
            peer_port = int(state["servers"].get("etcd", {}).get("peer_port", 0))
            etcd = self._reconcile(
                "etcd",
                state,
                lambda port: EtcdServer(directory, tools["etcd"], port=port, peer_port=peer_port),
                always,
                launched,
            )
        if redis_exe is not None:
            self._reconcile(
                "redis", state, lambda port: RedisServer(directory, redis_exe, port=port), always, launched
            )
        if pg_bindir is not None:
            recorded = state["servers"].get("postgres", {}).get("base_dir")
            pg_base = Path(recorded) if recorded else None  # where its data already is
            self._reconcile(
                "postgres",
                state,
                lambda port: PostgresServer(directory, pg_bindir, port=port, base_dir=pg_base),
                always,
                launched,
            )
        if etcd is not None and etcd in launched:
            etcd.wait_ready()
        apiserver: Server | None = None
        if etcd is not None and pki is not None:
            etcd_url = etcd.url
            apiserver = self._reconcile(
                "kube-apiserver",
                state,
                lambda port: KubeAPIServer(
                    directory, tools["kube-apiserver"], pki=pki, etcd_url=etcd_url, port=port
                ),
                lambda old: isinstance(old, KubeAPIServer) and old.etcd_url == etcd_url,
                launched,
            )
        for server in launched:
            if server is not etcd:
                server.wait_ready()

        state["tools"] = {tool: str(tools[tool]) for tool in ("kubectl", "helm") if tool in tools}
        self._write_state(state)
        if apiserver is not None and pki is not None:
            write_kubeconfig(self.kubeconfig, pki, apiserver.url)
            kube = self.kube_tools()
            kube.install_crd(self.crd, self.log)
            kube.install_secret_policy(self.secret_policy, self.log)
        write_atomic(self.env_file, self.env_file_text())

    def down(self, *, purge: bool = False) -> None:
        """Stop every server (SIGTERM, then SIGKILL); with purge, delete the directory too."""
        if not self.directory.exists():
            return
        with file_lock(self.directory / ".lock"):
            state = self._read_state()
            # The API server first, so it does not spend its shutdown retrying a vanished etcd.
            for name in reversed(COMPONENTS):
                server = self._from_state(name, state)
                if server is None:
                    continue
                pid = server.pid
                server.stop()
                self.log(f"{name}: stopped pid {pid}" if pid else f"{name}: was not running")
                if purge and isinstance(server, PostgresServer):
                    server.remove_data()
            self._servers.clear()
            if purge:
                shutil.rmtree(self.directory, ignore_errors=True)

    def pids(self) -> dict[str, int | None]:
        state = self._read_state()
        result: dict[str, int | None] = {}
        for name in COMPONENTS:
            server = self._from_state(name, state)
            if server is not None:
                result[name] = server.pid
        return result

    # -- environment -------------------------------------------------------------------------

    def _exports(self) -> tuple[dict[str, str], list[str]]:
        state = self._read_state()
        if not state["servers"]:
            raise SandboxError(f"no sandbox in {self.directory}; run `sandbox up` first")
        servers = state["servers"]
        values = {"RELAY_SANDBOX_DIR": str(self.directory)}
        if "kube-apiserver" in servers:
            values["KUBECONFIG"] = str(self.kubeconfig)
            values["RELAY_SANDBOX_KUBE_SERVER"] = self.server("kube-apiserver").url
        if "etcd" in servers:
            values["RELAY_SANDBOX_ETCD_URL"] = self.server("etcd").url
        if "redis" in servers:
            values["RELAY_REDIS_URL"] = self.server("redis").url
        if "postgres" in servers:
            values["RELAY_DATABASE_URL"] = self.server("postgres").url
        dirs = [str(Path(path).parent) for path in state["tools"].values()]
        return values, list(dict.fromkeys(dirs))

    def env(self) -> dict[str, str]:
        """The variables the env file exports, with PATH expanded against ours."""
        values, dirs = self._exports()
        values["PATH"] = os.pathsep.join([*dirs, os.environ.get("PATH", "")])
        return values

    def env_file_text(self) -> str:
        values, dirs = self._exports()
        lines = [f"export {key}={shlex.quote(value)}" for key, value in values.items()]
        if dirs:
            lines.append(f'export PATH={shlex.quote(os.pathsep.join(dirs))}:"$PATH"')
        return "# generated by `relayjob-operator sandbox up`; source it\n" + "\n".join(lines) + "\n"
