"""`relayjob-operator dev`: the README's one command to see the operator work.

Against the current kube context when one answers, else against a sandbox control plane it starts.
Redis and PostgreSQL come from RELAY_REDIS_URL / RELAY_DATABASE_URL when set, else from the
sandbox. It installs the CRD and the Secret-reference policy, starts the operator, applies a sample
RelayJob, shows it reach Completed in `kubectl get rj`, and keeps the operator in the foreground
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from devtools.binaries import Binaries
from devtools.sandbox import (
    COMPONENTS,
    DEFAULT_CRD,
    DEFAULT_SECRET_POLICY,
    CommandError,
    KubeTools,
    Sandbox,
)

REPO = DEFAULT_CRD.parents[1]
SAMPLE = REPO / "manifests" / "samples" / "noop.yaml"


def _say(message: str) -> None:
    print(f"dev: {message}", file=sys.stderr, flush=True)


def _current_context(kubectl: Path) -> KubeTools | None:
    """A client for the user's current context if it answers within a few seconds."""
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not any(Path(p).is_file() for p in kubeconfig.split(os.pathsep)):
        return None
    probe = subprocess.run(
        [str(kubectl), "version", "--request-timeout=5s"],
        capture_output=True, text=True, env={**os.environ, "KUBECONFIG": kubeconfig}, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        _say(f"current kube context does not answer ({probe.stderr.strip()[:200]}); using a sandbox")
        return None
    return KubeTools.for_existing_cluster(kubeconfig, Path(".sandbox") / "context")


def dev_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="relayjob-operator dev", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".sandbox"), help="sandbox directory")
    parser.add_argument("--sandbox", action="store_true", help="use a sandbox even if a context answers")
    parser.add_argument("--once", action="store_true", help="exit after the sample completes")
    args = parser.parse_args(argv)

    binaries = Binaries()
    kube = None if args.sandbox else _current_context(binaries.ensure("kubectl"))
    needed = [c for c in ("redis", "postgres") if not os.environ.get(f"RELAY_{_var(c)}_URL")]
    if kube is None:
        needed = list(COMPONENTS)
    sandbox: Sandbox | None = None
    env = dict(os.environ)
    if needed:
        sandbox = Sandbox(args.dir, components=needed, helm=False)
        sandbox.up()
        env.update(sandbox.env())
    if kube is None:
        assert sandbox is not None
        kube = sandbox.kube_tools()
        _say("using the sandbox control plane")
    else:
        _say(f"using the current kube context ({kube.server})")
        kube.install_crd(DEFAULT_CRD, _say)
        try:
            kube.install_secret_policy(DEFAULT_SECRET_POLICY, _say)
        except CommandError as error:
            # A cluster older than 1.30 has no ValidatingAdmissionPolicy; the operator says what
            # that means when it starts.
            _say(f"warning: the Secret-reference policy was not installed: {error.stderr.strip()[:300]}")
        env["KUBECONFIG"] = str(kube.kubeconfig)
    env["PATH"] = kube.env()["PATH"]
    env.setdefault("RELAY_LOG_FORMAT", "text")
    # SIGTERM (`timeout`, a service manager, an IDE's stop button) takes the Ctrl-C path below:
    # Python's default would end this process at once and leave the operator running without it.
    signal.signal(signal.SIGTERM, _interrupt)
    operator = subprocess.Popen([sys.executable, "-m", "controller", "run"], env=env)
    try:
        kube.kubectl("apply", "-f", str(SAMPLE))
        _say("applied manifests/samples/noop.yaml; waiting for it to complete")
        kube.kubectl("wait", "--for=condition=Succeeded", "rj/hello", "--timeout=120s")
        print(kube.kubectl("get", "rj", "-o", "wide").stdout, flush=True)
        shell = f"source {sandbox.env_file}; " if sandbox and kube.sandbox else ""
        _say(f"try: {shell}kubectl get rj; kubectl describe rj hello")
        if args.once:
            return 0
        _say(
            "operator running; Ctrl-C stops it (the sandbox keeps running: `relayjob-operator sandbox down`)"
        )
        return operator.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if operator.poll() is None:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(30)
            except subprocess.TimeoutExpired:
                operator.kill()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _var(component: str) -> str:
    return {"redis": "REDIS", "postgres": "DATABASE"}[component]
