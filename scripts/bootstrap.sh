#!/usr/bin/env bash
# Everything `make run` and `make test` need on a fresh Debian machine: redis-server and
# PostgreSQL from Debian's packages, a virtualenv with the package and its dev extras, and the
# control-plane binaries, helm and promtool (built once from the Go module proxy, cached
# outside the repo).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# redis-cli joins the test Redis Cluster and asks the test Sentinels; the Sentinels themselves are
# `redis-server --sentinel` (the binary Debian's redis-sentinel package links to).
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The integration tier also runs the ledger behind PgBouncer (Debian installs it in /usr/sbin).
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || need_apt+=(pgbouncer)
# The image is built and run with podman (tests/e2e/test_image.py, devtools/image.py), as root only.
if [ "$(id -u)" = 0 ]; then
  command -v podman >/dev/null 2>&1 || need_apt+=(podman runc netavark)
  command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
fi
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing ${need_apt[*]} from Debian's packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: please install ${need_apt[*]} (e.g. sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi
# Debian's postgresql package starts a cluster on 5432; the sandbox and the tests run their own.
if [ "$(id -u)" = 0 ] && command -v pg_lsclusters >/dev/null 2>&1; then
  pg_lsclusters -h 2>/dev/null | awk '$4 == "online" {print $1, $2}' | while read -r v c; do
    pg_ctlcluster "$v" "$c" stop || true
  done
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

if [ -z "${KUBEBUILDER_ASSETS:-}" ] && ! command -v go >/dev/null 2>&1; then
  echo "bootstrap: no Go toolchain and no KUBEBUILDER_ASSETS: install Go 1.26+ (to build" \
       "etcd, kube-apiserver, kubectl, helm and promtool once) or point KUBEBUILDER_ASSETS at a folder" \
       "with etcd, kube-apiserver and kubectl" >&2
  exit 1
fi
.venv/bin/python -m devtools.binaries >/dev/null
