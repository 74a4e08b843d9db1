"""Locate, or build once and cache, the executables the sandbox runs.

Control-plane binaries (etcd, kube-apiserver, kubectl) come from `KUBEBUILDER_ASSETS` when it is
set, the same directory controller-runtime's envtest uses, so a CI image that already has them
never needs Go. Otherwise they, helm (Helm 3 as `helm`, Helm 4 as `helm4`), promtool and prometheus
are built from the Go module proxy into a per-user cache outside the repository, keyed by tool and
version, so a checkout never carries binaries and a version bump never reuses a stale build.

Redis and PostgreSQL come from the operating system's packages.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devtools.files import write_atomic

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.19.5"
HELM4_VERSION = "v4.3.2"
# The Go module's v0.3XX.Y is Prometheus release 3.XX.Y.
PROMETHEUS_VERSION = "v0.316.0"
PROMETHEUS_RELEASE = "3.16.0"

CONTROL_PLANE_TOOLS = ("etcd", "kube-apiserver", "kubectl")
ALL_TOOLS = (*CONTROL_PLANE_TOOLS, "helm", "helm4", "promtool", "prometheus")
# What set-up builds: what the tests use. The prometheus server only serves bench/dashboard.py,
# which builds it when first run (minutes on two cores, which no test run should pay).
TEST_TOOLS = tuple(t for t in ALL_TOOLS if t != "prometheus")


class BinaryError(RuntimeError):
    """A required executable is missing and cannot be built; the message says what to do."""


@dataclass(frozen=True)
class GoBuild:
    """One Go module whose packages produce one or more of our tools.

    The layout (build/<key>-<version>/, bin/<key>-<version>/<binary>) is shared with builds made
    by hand, so changing it means rebuilding everything on every machine.
    """

    key: str
    version: str
    module_name: str
    require: str
    packages: Mapping[str, str]
    minutes: int
    fixed_replaces: tuple[str, ...] = field(default=())
    ldflags: tuple[str, ...] = field(default=())
    tags: tuple[str, ...] = field(default=())
    # What the built binary prints as its version, when that is not the module version.
    release: str = ""

    @property
    def dirname(self) -> str:
        return f"{self.key}-{self.version}"

    @property
    def stamp(self) -> str:
        return self.release or self.version


def _etcd_replaces(version: str) -> tuple[str, ...]:
    # etcd's server module replaces its sibling modules with relative paths, which only apply
    # inside etcd's own repository; pinning them keeps the whole server at one release.
    siblings = ("api/v3", "client/pkg/v3", "client/v3", "pkg/v3")
    return tuple(f"go.etcd.io/etcd/{s} => go.etcd.io/etcd/{s} {version}" for s in siblings)


def _kubernetes_ldflags(version: str) -> tuple[str, ...]:
    # What kubernetes' hack/lib/version.sh stamps. Without it the server reports gitVersion
    # v0.0.0-master, which helm compares against a chart's kubeVersion and rejects.
    major, minor = version.lstrip("v").split(".")[:2]
    values = {"gitVersion": version, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean"}
    return tuple(
        f"-X {package}.{name}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for name, value in values.items()
    )


KUBERNETES_BUILD = GoBuild(
    key="kubernetes",
    version=KUBERNETES_VERSION,
    module_name="relayjob.local/kubebuild",
    require="k8s.io/kubernetes",
    packages={
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    },
    minutes=10,
    ldflags=_kubernetes_ldflags(KUBERNETES_VERSION),
)
ETCD_BUILD = GoBuild(
    key="etcd",
    version=ETCD_VERSION,
    module_name="relayjob.local/etcdbuild",
    require="go.etcd.io/etcd/server/v3",
    packages={"etcd": "go.etcd.io/etcd/server/v3"},
    minutes=3,
    fixed_replaces=_etcd_replaces(ETCD_VERSION),
)
HELM_BUILD = GoBuild(
    key="helm",
    version=HELM_VERSION,
    module_name="relayjob.local/helmbuild",
    require="helm.sh/helm/v3",
    packages={"helm": "helm.sh/helm/v3/cmd/helm"},
    minutes=4,
    ldflags=(f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",),
)
# Users run both majors: Helm 4 applies server-side by default, Helm 3 client-side, and the chart
# must install and upgrade with either.
HELM4_BUILD = GoBuild(
    key="helm4",
    version=HELM4_VERSION,
    module_name="relayjob.local/helm4build",
    require="helm.sh/helm/v4",
    packages={"helm4": "helm.sh/helm/v4/cmd/helm"},
    minutes=4,
    ldflags=(f"-X helm.sh/helm/v4/internal/version.version={HELM4_VERSION}",),
)
# promtool checks and unit-tests the chart's alerting rules; prometheus scrapes the operator for
# the dashboard's queries. `remove_all_sd` leaves out the cloud service discoveries (a scrape of
# static targets needs none), which are most of the build.
PROMETHEUS_BUILD = GoBuild(
    key="prometheus",
    version=PROMETHEUS_VERSION,
    module_name="relayjob.local/prometheusbuild",
    require="github.com/prometheus/prometheus",
    packages={
        "promtool": "github.com/prometheus/prometheus/cmd/promtool",
        "prometheus": "github.com/prometheus/prometheus/cmd/prometheus",
    },
    minutes=6,
    ldflags=(f"-X github.com/prometheus/common/version.Version={PROMETHEUS_RELEASE}",),
    tags=("remove_all_sd",),
    release=PROMETHEUS_RELEASE,
)
BUILDS: Mapping[str, GoBuild] = {
    tool: build
    for build in (KUBERNETES_BUILD, ETCD_BUILD, HELM_BUILD, HELM4_BUILD, PROMETHEUS_BUILD)
    for tool in build.packages
}

# How each stamped tool prints its version; the output must contain the release.
_VERSION_PROBES: Mapping[str, tuple[str, ...]] = {
    "kube-apiserver": ("--version",),
    "kubectl": ("version", "--client"),
    "helm": ("version", "--short"),
    "helm4": ("version", "--short"),
    "promtool": ("--version",),
    "prometheus": ("--version",),
}

_STAGING_REPLACE = re.compile(
    r"^\s*(?:replace\s+)?(?P<mod>k8s\.io/[A-Za-z0-9_.-]+)(?:\s+v\S+)?\s*=>\s*"
    r"\./staging/src/(?P<dir>k8s\.io/[A-Za-z0-9_.-]+)\s*$"
)


def staging_version(kubernetes_version: str) -> str:
    """k8s.io/kubernetes vX.Y.Z publishes its staging modules as v0.Y.Z."""
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)(.*)", kubernetes_version)
    if match is None:
        raise ValueError(f"not a Kubernetes v1.x.y version: {kubernetes_version!r}")
    return f"v0.{match.group(1)}.{match.group(2)}{match.group(3)}"


def staging_replaces(gomod_text: str, version: str) -> list[str]:
    """Turn k8s.io/kubernetes's own `=> ./staging/src/...` replaces into published versions.

    Those relative replaces are ignored when k8s.io/kubernetes is a dependency, and its go.mod
    requires the staging modules at v0.0.0, which does not exist: without these lines the module
    cannot be built from outside its repository.
    """
    lines = []
    for raw in gomod_text.splitlines():
        match = _STAGING_REPLACE.match(raw.split("//", 1)[0])
        if match is not None:
            lines.append(f"{match.group('mod')} => {match.group('mod')} {version}")
    return sorted(set(lines))


def render_gomod(
    module_name: str, go_version: str, require: str, version: str, replaces: Sequence[str]
) -> str:
    text = f"module {module_name}\n\ngo {go_version}\n\nrequire {require} {version}\n"
    if replaces:
        text += "\nreplace (\n" + "".join(f"\t{line}\n" for line in replaces) + ")\n"
    return text


def render_tools_go(packages: Sequence[str]) -> str:
    # The build tag keeps this file out of every real build while `go mod tidy`, which looks at
    # all tags, still records the commands' dependencies.
    imports = "".join(f'\t_ "{pkg}"\n' for pkg in packages)
    return f"//go:build tools\n\npackage tools\n\nimport (\n{imports})\n"


def go_directive(go_version_output: str) -> str:
    """`go version go1.26.8 linux/amd64` -> `1.26.0`: the language level of the local toolchain."""
    match = re.search(r"go(\d+)\.(\d+)", go_version_output)
    if match is None:
        raise BinaryError(f"cannot parse the Go version from {go_version_output!r}")
    return f"{match.group(1)}.{match.group(2)}.0"


def is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the block, across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _progress(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr, flush=True)


class Binaries:
    """Where each tool lives for a given environment; `ensure` builds what is missing."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env: Mapping[str, str] = os.environ if env is None else env

    @property
    def cache_dir(self) -> Path:
        base = self.env.get("XDG_CACHE_HOME") or str(Path(self.env.get("HOME", "~")) / ".cache")
        return Path(base).expanduser() / "relayjob-operator"

    @property
    def assets_dir(self) -> Path | None:
        value = self.env.get("KUBEBUILDER_ASSETS", "").strip()
        return Path(value).expanduser() if value else None

    def cached_path(self, tool: str) -> Path:
        build = BUILDS[tool]
        return self.cache_dir / "bin" / build.dirname / tool

    def build_dir(self, tool: str) -> Path:
        return self.cache_dir / "build" / BUILDS[tool].dirname

    def go(self) -> Path | None:
        found = shutil.which("go", path=self.env.get("PATH", ""))
        return Path(found) if found else None

    def locate(self, tool: str) -> Path | None:
        """The tool's path if it is already available, without building anything."""
        if tool not in BUILDS:
            raise ValueError(f"unknown tool {tool!r}; known: {', '.join(ALL_TOOLS)}")
        assets = self.assets_dir
        if assets is not None and tool in CONTROL_PLANE_TOOLS:
            candidate = assets / tool
            if is_executable(candidate):
                return candidate
            if tool != "kubectl":
                # Mixing an envtest etcd with a cached apiserver of another version would make
                # failures depend on what happens to be cached; refuse instead.
                raise BinaryError(
                    f"KUBEBUILDER_ASSETS={assets} has no executable {tool!r}; point it at a "
                    "directory with etcd, kube-apiserver and kubectl (for instance the output of "
                    "`setup-envtest use -p path`), or unset it to build them with Go"
                )
        cached = self.cached_path(tool)
        return cached if is_executable(cached) else None

    def ensure(self, tool: str) -> Path:
        """The tool's path, building it into the cache first if needed."""
        found = self.locate(tool)
        go = self.go()
        if found is not None:
            if found != self.cached_path(tool) or go is None or self.stamped(tool, found):
                return found
            # A cached build without version stamps (e.g. made by hand with a bare `go build`):
            # relinking reuses Go's build cache, so this costs a link, not a rebuild.
            _progress(f"{found} reports no {BUILDS[tool].stamp} version stamp; relinking it")
            return self._build(tool, go, relink=True)
        if go is None:
            raise BinaryError(self._missing_message(tool))
        return self._build(tool, go)

    def stamped(self, tool: str, path: Path) -> bool:
        """Whether the binary reports the release it was built from (see GoBuild.ldflags)."""
        probe = _VERSION_PROBES.get(tool)
        if probe is None:
            return True
        try:
            result = subprocess.run(
                [str(path), *probe], capture_output=True, text=True, timeout=60, check=False
            )
        except OSError:
            return False
        return BUILDS[tool].stamp in result.stdout

    def ensure_all(self, tools: Sequence[str] = TEST_TOOLS) -> dict[str, Path]:
        return {tool: self.ensure(tool) for tool in tools}

    def _missing_message(self, tool: str) -> str:
        build = BUILDS[tool]
        where = self.cached_path(tool)
        if tool in CONTROL_PLANE_TOOLS:
            return (
                f"{tool} {build.version} is not available: set KUBEBUILDER_ASSETS to a directory "
                "holding etcd, kube-apiserver and kubectl (e.g. `setup-envtest use -p path "
                f"{KUBERNETES_VERSION.lstrip('v')}`), or install Go >= 1.26 (https://go.dev/dl/) and "
                f"put `go` on PATH so the sandbox can build it once into {where}"
            )
        return (
            f"{tool} {build.version} is not available: install Go >= 1.26 "
            f"(https://go.dev/dl/) and put `go` on PATH so the sandbox can build it once "
            f"into {where}"
        )

    def _go_env(self) -> dict[str, str]:
        env = dict(self.env)
        # Builds run unattended: never stop to ask for credentials of a private VCS.
        env["GIT_TERMINAL_PROMPT"] = "0"
        return env

    def _run_go(self, go: Path, args: Sequence[str], cwd: Path, log: Path, *, capture: bool = False) -> str:
        with log.open("a") as handle:
            handle.write(f"$ go {' '.join(args)}\n")
            handle.flush()
            result = subprocess.run(
                [str(go), *args],
                cwd=cwd,
                env=self._go_env(),
                stdout=subprocess.PIPE if capture else handle,
                stderr=handle,
                text=True,
                check=False,
            )
            handle.write(f"exit {result.returncode}\n")
        if result.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise BinaryError(
                f"`go {' '.join(args)}` failed in {cwd} (exit {result.returncode}); "
                f"last lines of {log}:\n{tail}"
            )
        return result.stdout or ""

    def _replaces(self, build: GoBuild, go: Path, build_dir: Path, log: Path) -> list[str]:
        if build is not KUBERNETES_BUILD:
            return list(build.fixed_replaces)
        info = json.loads(
            self._run_go(
                go,
                ["mod", "download", "-json", f"{build.require}@{build.version}"],
                build_dir,
                log,
                capture=True,
            )
        )
        gomod = Path(str(info["GoMod"])).read_text()
        replaces = staging_replaces(gomod, staging_version(build.version))
        if not replaces:
            raise BinaryError(f"found no staging replaces in {info['GoMod']}; layout changed?")
        return replaces

    def _prepare_module(self, build: GoBuild, go: Path, build_dir: Path, log: Path) -> None:
        gomod = build_dir / "go.mod"
        # A go.mod already naming this release (ours or one written by hand) is kept: tidy below
        # repairs an interrupted run without re-resolving the replaces.
        if not (gomod.exists() and f"require {build.require} {build.version}" in gomod.read_text()):
            version_out = subprocess.run(
                [str(go), "version"], capture_output=True, text=True, check=True, env=self._go_env()
            ).stdout
            replaces = self._replaces(build, go, build_dir, log)
            text = render_gomod(
                build.module_name, go_directive(version_out), build.require, build.version, replaces
            )
            write_atomic(gomod, text)
        tools_go = build_dir / "tools.go"
        if not tools_go.exists():
            write_atomic(tools_go, render_tools_go(sorted(build.packages.values())))
        self._run_go(go, ["mod", "tidy"], build_dir, log)

    def _build(self, tool: str, go: Path, *, relink: bool = False) -> Path:
        build = BUILDS[tool]
        build_dir = self.build_dir(tool)
        target = self.cached_path(tool)
        with file_lock(self.cache_dir / "build" / f"{build.dirname}.lock"):
            if is_executable(target) and self.stamped(tool, target):
                return target  # another process built it while we waited for the lock
            build_dir.mkdir(parents=True, exist_ok=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            log = build_dir / "build.log"
            estimate = "about a minute" if relink else f"first run only, ~{build.minutes} min"
            _progress(f"building {tool} {build.version} from the Go module proxy ({estimate}); log: {log}")
            started = time.monotonic()
            self._prepare_module(build, go, build_dir, log)
            temp = target.with_name(f".{tool}.tmp-{os.getpid()}")
            try:
                flags = ["-ldflags", " ".join(build.ldflags)] if build.ldflags else []
                flags += ["-tags", ",".join(build.tags)] if build.tags else []
                self._run_go(go, ["build", *flags, "-o", str(temp), build.packages[tool]], build_dir, log)
                os.replace(temp, target)
            finally:
                temp.unlink(missing_ok=True)
            _progress(f"built {target} in {time.monotonic() - started:.0f}s")
        return target


def find_redis_server(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    found = shutil.which("redis-server", path=env.get("PATH", "")) or (
        "/usr/bin/redis-server" if is_executable(Path("/usr/bin/redis-server")) else None
    )
    if found is None:
        raise BinaryError(
            "redis-server not found: install it (Debian/Ubuntu: `apt-get install redis-server`, "
            "macOS: `brew install redis`) or put it on PATH"
        )
    return Path(found)


def find_postgres_bindir(env: Mapping[str, str] | None = None) -> Path:
    """The directory with initdb and postgres: PATH first, then Debian's versioned layout."""
    env = os.environ if env is None else env
    on_path = shutil.which("initdb", path=env.get("PATH", ""))
    candidates = [Path(on_path).parent] if on_path else []

    def major(path: Path) -> int:
        name = path.parent.name
        return int(name) if name.isdigit() else -1

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True)
    for bindir in candidates:
        if all(is_executable(bindir / tool) for tool in ("initdb", "postgres", "pg_isready")):
            return bindir
    raise BinaryError(
        "PostgreSQL server binaries (initdb, postgres, pg_isready) not found: install them "
        "(Debian/Ubuntu: `apt-get install postgresql`, macOS: `brew install postgresql@15`) "
        "or put their directory on PATH"
    )


def find_openssl(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    found = shutil.which("openssl", path=env.get("PATH", ""))
    if found is None:
        raise BinaryError("openssl not found: install it (Debian/Ubuntu: `apt-get install openssl`)")
    return Path(found)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m devtools.binaries [TOOL ...]`: build or locate the tools (by default those the
    tests use), print paths."""
    import sys

    tools = list(argv if argv is not None else sys.argv[1:]) or list(TEST_TOOLS)
    try:
        for tool, path in Binaries().ensure_all(tools).items():
            print(f"{tool} {path}")
    except BinaryError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
