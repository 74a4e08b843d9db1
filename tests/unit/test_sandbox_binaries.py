"""The pure parts of binary resolution: go.mod generation and where each tool is looked up."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from devtools.binaries import (
    ETCD_VERSION,
    KUBERNETES_BUILD,
    KUBERNETES_VERSION,
    PROMETHEUS_BUILD,
    PROMETHEUS_RELEASE,
    Binaries,
    BinaryError,
    file_lock,
    go_directive,
    render_gomod,
    render_tools_go,
    staging_replaces,
    staging_version,
)

KUBERNETES_GOMOD = """\
module k8s.io/kubernetes

go 1.26.0

require (
\tk8s.io/api v0.0.0
\tk8s.io/apimachinery v0.0.0
\tgithub.com/spf13/cobra v1.10.2
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/apimachinery => ./staging/src/k8s.io/apimachinery // the core types
\tk8s.io/cri-api v0.0.0 => ./staging/src/k8s.io/cri-api
\tgithub.com/some/fork => github.com/other/fork v1.2.3
\tk8s.io/api => ./staging/src/k8s.io/api
)

replace k8s.io/kubectl => ./staging/src/k8s.io/kubectl
"""


def test_staging_version_maps_minor_and_patch() -> None:
    assert staging_version("v1.36.3") == "v0.36.3"
    assert staging_version("v1.37.0-rc.1") == "v0.37.0-rc.1"
    with pytest.raises(ValueError, match="not a Kubernetes"):
        staging_version("3.6.16")


def test_staging_replaces_keeps_only_staging_lines_sorted_and_unique() -> None:
    assert staging_replaces(KUBERNETES_GOMOD, "v0.36.3") == [
        "k8s.io/api => k8s.io/api v0.36.3",
        "k8s.io/apimachinery => k8s.io/apimachinery v0.36.3",
        "k8s.io/cri-api => k8s.io/cri-api v0.36.3",
        "k8s.io/kubectl => k8s.io/kubectl v0.36.3",
    ]


def test_staging_replaces_of_a_module_without_staging_is_empty() -> None:
    assert staging_replaces("module x\n\nreplace a => ../a\n", "v0.36.3") == []


def test_render_gomod_with_replace_block() -> None:
    text = render_gomod(
        "relayjob.local/kubebuild",
        "1.26.0",
        "k8s.io/kubernetes",
        KUBERNETES_VERSION,
        ["k8s.io/api => k8s.io/api v0.36.3"],
    )
    assert text == (
        "module relayjob.local/kubebuild\n\ngo 1.26.0\n\n"
        "require k8s.io/kubernetes v1.36.3\n\n"
        "replace (\n\tk8s.io/api => k8s.io/api v0.36.3\n)\n"
    )


def test_render_gomod_without_replaces_has_no_block() -> None:
    text = render_gomod("m", "1.26.0", "helm.sh/helm/v3", "v3.19.5", [])
    assert "replace" not in text
    assert text.endswith("require helm.sh/helm/v3 v3.19.5\n")


def test_tools_go_is_excluded_from_builds_by_tag() -> None:
    text = render_tools_go(["k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl"])
    assert text.startswith("//go:build tools\n")
    assert '\t_ "k8s.io/kubernetes/cmd/kubectl"\n' in text


def test_go_directive_is_the_toolchain_language_level() -> None:
    assert go_directive("go version go1.26.8 linux/amd64") == "1.26.0"
    with pytest.raises(BinaryError):
        go_directive("nonsense")


def _fake_tool(directory: Path, name: str, executable: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755 if executable else 0o644)
    return path


def test_cache_layout_follows_xdg_cache_home(tmp_path: Path) -> None:
    binaries = Binaries({"XDG_CACHE_HOME": str(tmp_path), "PATH": ""})
    root = tmp_path / "relayjob-operator"
    assert binaries.cached_path("kube-apiserver") == (
        root / "bin" / f"kubernetes-{KUBERNETES_VERSION}" / "kube-apiserver"
    )
    assert binaries.cached_path("kubectl").parent == binaries.cached_path("kube-apiserver").parent
    assert binaries.cached_path("etcd") == root / "bin" / f"etcd-{ETCD_VERSION}" / "etcd"
    assert binaries.build_dir("kubectl") == root / "build" / f"kubernetes-{KUBERNETES_VERSION}"


def test_cache_defaults_to_home_dot_cache(tmp_path: Path) -> None:
    binaries = Binaries({"HOME": str(tmp_path), "PATH": ""})
    assert binaries.cache_dir == tmp_path / ".cache" / "relayjob-operator"


def test_kubebuilder_assets_win_over_the_cache(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    for tool in ("etcd", "kube-apiserver", "kubectl"):
        _fake_tool(assets, tool)
    cache = Binaries({"XDG_CACHE_HOME": str(tmp_path / "cache")})
    for tool in ("etcd", "kube-apiserver", "kubectl"):
        _fake_tool(cache.cached_path(tool).parent, tool)
    binaries = Binaries({"KUBEBUILDER_ASSETS": str(assets), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    for tool in ("etcd", "kube-apiserver", "kubectl"):
        assert binaries.locate(tool) == assets / tool
        assert binaries.ensure(tool) == assets / tool


def test_kubectl_missing_from_assets_falls_back_to_the_cache(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    _fake_tool(assets, "etcd")
    _fake_tool(assets, "kube-apiserver")
    env = {"KUBEBUILDER_ASSETS": str(assets), "XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": ""}
    binaries = Binaries(env)
    assert binaries.locate("kubectl") is None
    cached = _fake_tool(binaries.cached_path("kubectl").parent, "kubectl")
    assert binaries.locate("kubectl") == cached


def test_assets_without_an_executable_apiserver_is_an_error(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    _fake_tool(assets, "etcd")
    _fake_tool(assets, "kube-apiserver", executable=False)
    binaries = Binaries({"KUBEBUILDER_ASSETS": str(assets), "XDG_CACHE_HOME": str(tmp_path)})
    with pytest.raises(BinaryError, match=r"KUBEBUILDER_ASSETS=.*'kube-apiserver'"):
        binaries.locate("kube-apiserver")


def test_helm_is_never_taken_from_kubebuilder_assets(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    _fake_tool(assets, "helm")
    binaries = Binaries({"KUBEBUILDER_ASSETS": str(assets), "XDG_CACHE_HOME": str(tmp_path), "PATH": ""})
    assert binaries.locate("helm") is None


def test_cached_binary_is_used_without_go(tmp_path: Path) -> None:
    binaries = Binaries({"XDG_CACHE_HOME": str(tmp_path), "PATH": ""})
    cached = _fake_tool(binaries.cached_path("etcd").parent, "etcd")
    assert binaries.go() is None
    assert binaries.ensure("etcd") == cached


def test_without_assets_or_go_the_error_says_what_to_install(tmp_path: Path) -> None:
    binaries = Binaries({"XDG_CACHE_HOME": str(tmp_path), "PATH": str(tmp_path / "empty")})
    with pytest.raises(BinaryError) as error:
        binaries.ensure("kube-apiserver")
    message = str(error.value)
    assert "KUBEBUILDER_ASSETS" in message
    assert "install Go" in message
    assert str(binaries.cached_path("kube-apiserver")) in message
    with pytest.raises(BinaryError, match="install Go"):
        binaries.ensure("helm")


def test_unknown_tool_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tool"):
        Binaries({"XDG_CACHE_HOME": str(tmp_path)}).locate("minikube")


def test_file_lock_excludes_concurrent_holders(tmp_path: Path) -> None:
    lock = tmp_path / "build.lock"
    inside = 0
    overlaps: list[int] = []

    def hold() -> None:
        nonlocal inside
        with file_lock(lock):
            inside += 1
            overlaps.append(inside)
            time.sleep(0.05)
            inside -= 1

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1, 1, 1, 1]


def test_kubernetes_builds_are_stamped_with_their_release() -> None:
    flags = " ".join(KUBERNETES_BUILD.ldflags)
    assert f"k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}" in flags
    assert "k8s.io/client-go/pkg/version.gitMinor=36" in flags


def _printing_tool(path: Path, output: str) -> Path:
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(0o755)
    return path


def test_stamped_checks_the_reported_release(tmp_path: Path) -> None:
    binaries = Binaries({"XDG_CACHE_HOME": str(tmp_path), "PATH": ""})
    good = _printing_tool(tmp_path / "good", f"Client Version: {KUBERNETES_VERSION}")
    bare = _printing_tool(tmp_path / "bare", "Client Version: v0.0.0-master+$Format:%H$")
    assert binaries.stamped("kubectl", good)
    assert not binaries.stamped("kubectl", bare)
    assert binaries.stamped("etcd", bare), "etcd carries its version in source, no probe needed"


def test_unstamped_cached_binary_is_kept_when_go_is_missing(tmp_path: Path) -> None:
    binaries = Binaries({"XDG_CACHE_HOME": str(tmp_path), "PATH": ""})
    cached = binaries.cached_path("kubectl")
    cached.parent.mkdir(parents=True)
    _printing_tool(cached, "Client Version: v0.0.0-master")
    assert binaries.ensure("kubectl") == cached


def test_promtool_and_prometheus_are_one_build_stamped_with_the_prometheus_release(tmp_path: Path) -> None:
    binaries = Binaries({"XDG_CACHE_HOME": str(tmp_path), "PATH": ""})
    assert binaries.cached_path("promtool").parent == binaries.cached_path("prometheus").parent
    assert binaries.build_dir("promtool") == binaries.build_dir("prometheus")
    assert f"github.com/prometheus/common/version.Version={PROMETHEUS_RELEASE}" in PROMETHEUS_BUILD.ldflags[0]
    good = _printing_tool(
        tmp_path / "good", f"promtool, version {PROMETHEUS_RELEASE} (branch: , revision: unknown)"
    )
    bare = _printing_tool(tmp_path / "bare", "promtool, version  (branch: , revision: unknown)")
    assert binaries.stamped("promtool", good)
    assert not binaries.stamped("promtool", bare)
