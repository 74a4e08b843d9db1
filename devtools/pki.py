"""Certificates for the sandbox API server, made with the openssl CLI.

The openssl CLI is on every machine that runs the sandbox, while the `cryptography` package
would become a runtime dependency of the operator for the sake of a test harness.

One CA signs both the serving certificate and the admin client certificate, and is the API
server's client CA; the admin certificate's organisation `system:masters` is what makes it
cluster-admin under RBAC without any binding, which must hold before anything else exists.
ECDSA P-256 keys because they are generated instantly and every party accepts them.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devtools.binaries import find_openssl
from devtools.files import write_atomic

ADMIN_USER = "relayjob-sandbox-admin"
_DAYS = "3650"

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash

[serving]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @alt_names

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[alt_names]
IP.1 = 127.0.0.1
IP.2 = 10.0.0.1
DNS.1 = localhost
DNS.2 = kubernetes
DNS.3 = kubernetes.default
DNS.4 = kubernetes.default.svc
DNS.5 = kubernetes.default.svc.cluster.local
"""


class PKIError(RuntimeError):
    pass


@dataclass(frozen=True)
class PKI:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.directory / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.directory / "admin.key"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        return self.directory / "sa.pub"

    def files(self) -> tuple[Path, ...]:
        return (
            self.ca_cert,
            self.ca_key,
            self.serving_cert,
            self.serving_key,
            self.admin_cert,
            self.admin_key,
            self.service_account_key,
            self.service_account_pub,
        )

    def complete(self) -> bool:
        return all(path.is_file() and path.stat().st_size > 0 for path in self.files())


def ensure_pki(directory: Path) -> PKI:
    """Create the certificates once; later calls reuse them so kubeconfigs stay valid."""
    pki = PKI(directory)
    if pki.complete():
        return pki
    # Generated aside and renamed into place, so a crash never leaves a half-made set that a
    # later run would trust.
    staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700, parents=True)
    try:
        _generate(PKI(staging))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return pki


def _generate(pki: PKI) -> None:
    openssl = str(find_openssl())
    config = pki.directory / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG)

    def run(*args: str) -> None:
        result = subprocess.run(
            [openssl, *args], cwd=pki.directory, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise PKIError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")

    def new_key(path: Path) -> None:
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
        path.chmod(0o600)

    def signed(cert: Path, key: Path, subject: str, extensions: str) -> None:
        new_key(key)
        csr = cert.with_suffix(".csr")
        run("req", "-new", "-config", str(config), "-key", str(key), "-subj", subject, "-out", str(csr))
        run(
            "x509", "-req", "-in", str(csr), "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key),
            "-set_serial", str(secrets.randbits(63)), "-days", _DAYS,
            "-extfile", str(config), "-extensions", extensions, "-out", str(cert),
        )  # fmt: skip
        csr.unlink()

    new_key(pki.ca_key)
    run(
        "req", "-x509", "-new", "-config", str(config), "-extensions", "ca",
        "-key", str(pki.ca_key), "-subj", "/CN=relayjob-sandbox-ca", "-days", _DAYS,
        "-set_serial", str(secrets.randbits(63)), "-out", str(pki.ca_cert),
    )  # fmt: skip
    signed(pki.serving_cert, pki.serving_key, "/CN=kube-apiserver", "serving")
    signed(pki.admin_cert, pki.admin_key, f"/O=system:masters/CN={ADMIN_USER}", "client")
    new_key(pki.service_account_key)
    run("pkey", "-in", str(pki.service_account_key), "-pubout", "-out", str(pki.service_account_pub))
    config.unlink()


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def kubeconfig_document(
    pki: PKI, server: str, name: str = "relayjob-sandbox", token: str | None = None
) -> dict[str, Any]:
    """A self-contained kubeconfig (data embedded) so it keeps working when copied elsewhere: the
    admin's client certificate, or a bearer `token` (a ServiceAccount's) when one is given."""
    if token is None:
        user, credentials = (
            ADMIN_USER,
            {
                "client-certificate-data": _b64(pki.admin_cert),
                "client-key-data": _b64(pki.admin_key),
            },
        )
    else:
        user, credentials = f"{name}-token", {"token": token}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {"server": server, "certificate-authority-data": _b64(pki.ca_cert)},
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [
            {
                "name": name,
                "context": {"cluster": name, "user": user, "namespace": "default"},
            }
        ],
        "current-context": name,
        "preferences": {},
    }


def write_kubeconfig(path: Path, pki: PKI, server: str, token: str | None = None) -> None:
    text = yaml.safe_dump(kubeconfig_document(pki, server, token=token), sort_keys=False)
    write_atomic(path, text, mode=0o600)  # it holds a key or a token: the owner's alone
