"""The dev tools' one way of rewriting a file that other processes read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from devtools.files import write_atomic
from devtools.pki import PKI, write_kubeconfig


def test_a_rewrite_replaces_the_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("an older and longer content")
    write_atomic(path, "{}\n")
    assert path.read_text() == "{}\n"
    assert list(tmp_path.iterdir()) == [path]


def test_a_kubeconfig_is_private_even_over_a_temp_file_a_crash_left(tmp_path: Path) -> None:
    """A crash between creating the temp file and renaming it leaves one behind, world-readable if
    an older run made it so; the token written through it must still be the owner's alone."""
    pki = PKI(tmp_path / "pki")
    pki.ca_cert.parent.mkdir()
    for path in (pki.ca_cert, pki.admin_cert, pki.admin_key):
        path.write_bytes(b"-----BEGIN TEST-----\n")
    kubeconfig = tmp_path / "kubeconfig"
    stale = tmp_path / f".kubeconfig.tmp-{os.getpid()}"
    stale.write_text("left by a crash")
    stale.chmod(0o644)

    write_kubeconfig(kubeconfig, pki, "https://127.0.0.1:6443", token="a-service-account-token")

    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    assert yaml.safe_load(kubeconfig.read_text())["users"][0]["user"] == {"token": "a-service-account-token"}
    assert not stale.exists()
