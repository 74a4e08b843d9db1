"""Build the operator's image from the Dockerfile with podman, without a Docker daemon or a registry.

The base image is Debian bookworm's own Python, made by debootstrap and cached as a tarball under
the per-user cache (images/<name>-<version>.tar), so a fresh clone builds it once and a new
podman store only imports it. The build reaches the package index from the host's network with
the host's CA bundle, since the index may sit behind a TLS proxy with a CA of its own. podman
keeps the layers, so a rebuild with unchanged sources takes seconds.

`python -m devtools.image` builds the image and prints its name and size in bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devtools.binaries import Binaries, file_lock

REPO = Path(__file__).resolve().parents[1]
# Bump when the recipe below changes: the tag and the cached tarball are keyed by it.
BASE_VERSION = "bookworm-1"
BASE_NAME = "relayjob-python"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
IMAGE = "localhost/relayjob-operator:dev"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# podman asks runc for rlimits above this host's hard limits by default, which runc may not set
# ("error setting rlimit type 7"); these fit, and leave pip and the operator room enough.
ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")


class ImageError(RuntimeError):
    """The image cannot be built here; the message says what is missing or what failed."""


@dataclass(frozen=True)
class Podman:
    """podman as root with runc, the runtime Debian's podman works with on this kind of host."""

    path: Path

    @classmethod
    def find(cls, env: Mapping[str, str] | None = None) -> Podman:
        found = shutil.which("podman", path=(env or os.environ).get("PATH", ""))
        if found is None:
            raise ImageError("podman is not installed: apt-get install podman runc (scripts/bootstrap.sh)")
        if os.geteuid() != 0:
            raise ImageError("building and running the image with podman needs root on this host")
        return cls(Path(found))

    def command(self, *args: str) -> list[str]:
        return [str(self.path), "--runtime", "runc", *args]

    def run(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise ImageError(
                f"podman {' '.join(args[:2])} exited {result.returncode}:\n{result.stderr[-4000:]}"
            )
        return result

    def has_image(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def size_bytes(self, name: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


def _progress(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def base_tag() -> str:
    return f"localhost/{BASE_NAME}:{BASE_VERSION}"


def base_tarball(env: Mapping[str, str] | None = None) -> Path:
    return Binaries(env).cache_dir / "images" / f"{BASE_NAME}-{BASE_VERSION}.tar"


def _debootstrap(tarball: Path) -> None:
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageError("debootstrap is not installed: apt-get install debootstrap (scripts/bootstrap.sh)")
    _progress(f"building the base image with debootstrap (once, cached as {tarball})")
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix="rootfs-") as scratch:
        root = Path(scratch) / "rootfs"
        result = subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                "bookworm",
                str(root),
                DEBIAN_MIRROR,
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if result.returncode != 0:
            raise ImageError(
                f"debootstrap exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr}"
            )
        # The Dockerfile calls `python`, as the official Python images name it.
        (root / "usr" / "bin" / "python").symlink_to("python3")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = tarball.with_suffix(".partial")
        # debootstrap mounts /proc and /sys while it works; a failed unmount must not leak them.
        packed = subprocess.run(
            [
                "tar",
                "--numeric-owner",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "-C",
                str(root),
                "-cf",
                str(partial),
                ".",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if packed.returncode != 0:
            raise ImageError(
                f"tar of the base image's root exited {packed.returncode}:\n{packed.stderr[-3000:]}"
            )
        partial.rename(tarball)


def ensure_base_image(podman: Podman, env: Mapping[str, str] | None = None) -> str:
    """The base image's tag, imported into podman's store from the cached tarball, made if absent."""
    tag = base_tag()
    if podman.has_image(tag):
        return tag
    tarball = base_tarball(env)
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(tarball.with_suffix(".lock")):
        if not tarball.exists():
            _debootstrap(tarball)
        if not podman.has_image(tag):
            podman.run("import", "--change", 'CMD=["python"]', str(tarball), tag)
    return tag


def build_image(podman: Podman, *, tag: str = IMAGE, env: Mapping[str, str] | None = None) -> str:
    """Build the Dockerfile of this repository as `tag`, on the locally made base image."""
    base = ensure_base_image(podman, env)
    with tempfile.TemporaryDirectory(prefix="relayjob-image-") as scratch:
        # pip inside the build trusts exactly what the host trusts.
        pip_conf = Path(scratch) / "pip.conf"
        pip_conf.write_text(f"[global]\ncert = {HOST_CA_BUNDLE}\n")
        _progress(f"building {tag} on {base}")
        podman.run(
            "build",
            "--network",
            "host",
            *ULIMITS,
            "--build-arg",
            f"PYTHON_IMAGE={base}",
            "--volume",
            f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro",
            "--volume",
            f"{pip_conf}:/etc/pip.conf:ro",
            "--tag",
            tag,
            "--file",
            str(REPO / "Dockerfile"),
            str(REPO),
            timeout=1800,
        )
    return tag


def main() -> int:
    try:
        podman = Podman.find()
        tag = build_image(podman)
    except ImageError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"{tag} {podman.size_bytes(tag)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
