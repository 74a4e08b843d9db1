# syntax=docker/dockerfile:1
# relayjob-operator: `docker build -t relayjob-operator .` (skaffold.yaml builds it for `skaffold dev`).
#
# The build stage installs the package and its dependencies into a virtualenv; the runtime stage
# gets only that virtualenv on a slim Python, without pip, compilers or caches, and runs as a
# fixed non-root uid that the chart's securityContext names too.
# tests/integration/test_dockerfile_install.py runs the build stage's RUN steps verbatim, with
# VENV and SRC pointed at temp dirs, and checks the entrypoint they produce.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV VENV=/opt/relayjob \
    SRC=/src \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml ./
# The virtualenv's own pip (from ensurepip) installs everything and is then removed, so the base
# needs only `python` with venv: the official Python images and Debian's python3 + python3-venv
# both do. The dependencies come first, in a layer of their own that a change to the source alone
# reuses. Bytecode is compiled here because the root filesystem is read-only at run time.
RUN python -m venv "$VENV" \
    && python -c 'import sys, tomllib; print(*tomllib.load(sys.stdin.buffer)["project"]["dependencies"], sep="\n")' \
       < "$SRC/pyproject.toml" > "$SRC/requirements.txt" \
    && "$VENV/bin/python" -m pip install --no-cache-dir --requirement "$SRC/requirements.txt"
COPY controller ./controller
RUN "$VENV/bin/python" -m pip install --no-cache-dir --no-deps "$SRC" \
    && "$VENV/bin/python" -m pip uninstall --yes pip setuptools \
    && "$VENV/bin/relayjob-operator" --help

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="relayjob-operator" \
      org.opencontainers.image.description="Kubernetes-native job relay: RelayJobs queued in Redis, recorded in PostgreSQL" \
      org.opencontainers.image.licenses="Apache-2.0"
# The passwd entry matters: outside a pod (no POD_ID) kopf names its peer after getpass.getuser().
# pip and setuptools, when the base image has them, have no use at run time.
RUN groupadd --system --gid 65532 relay \
    && useradd --system --uid 65532 --gid relay --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin relay \
    && if python -m pip --version >/dev/null 2>&1; then \
         python -m pip uninstall --yes --no-cache-dir pip setuptools wheel; \
       fi
COPY --from=build /opt/relayjob /opt/relayjob
ENV PATH=/opt/relayjob/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["relayjob-operator", "run"]
