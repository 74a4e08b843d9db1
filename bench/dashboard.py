"""docs/dashboard.png: the Grafana dashboard's panels, drawn from its own PromQL over a real run.

Grafana cannot run here (no package; its Go module needs a frontend build), so the picture is
made the way Grafana would make it, minus Grafana: a sandbox (etcd, kube-apiserver, redis-server,
PostgreSQL), the operator as a process, a real Prometheus scraping its /metrics on loopback every
two seconds, and RelayJobs created through the API server in waves (no-op jobs, HTTP jobs against a
local target that answers slowly, fails sometimes or always, and a burst that builds a backlog).
Then every expression of helm/relayjob-operator/dashboards/relayjob-operator.json goes to
Prometheus's HTTP API (`query_range`), with the dashboard's variables filled in, and each panel is
plotted with matplotlib.

    python -m bench.dashboard [--minutes 4] [--out docs/dashboard.png]

Needs matplotlib (`pip install -e '.[bench]'`) and the prometheus binary (devtools.binaries).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg

from bench.env import ROOT, WORK, log
from devtools.binaries import Binaries
from devtools.operator_process import OperatorProcess
from devtools.sandbox import KubeTools, Sandbox
from devtools.servers import LOOPBACK, free_port

DASHBOARD = ROOT / "helm" / "relayjob-operator" / "dashboards" / "relayjob-operator.json"
OUT = ROOT / "docs" / "dashboard.png"
JOB = "relayjob-operator"
SCRAPE_SECONDS = 2
# What Grafana's $__rate_interval comes to for a 2 s scrape and this picture's resolution.
RATE_INTERVAL = "30s"
STEP_SECONDS = 5
CONCURRENCY = 6  # small, so that the burst queues up and the queue panels have something to show
WAVE_SECONDS = 4.0


class _Target(BaseHTTPRequestHandler):
    """/ok/<ms>: 200 after ms; /flaky/<percent>: 503 that often, else 200; /fail: always 500."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = self.path.strip("/").split("/")
        status = 200
        if parts[0] == "ok":
            time.sleep(int(parts[1]) / 1000)
        elif parts[0] == "flaky":
            status = 503 if random.random() * 100 < int(parts[1]) else 200
        else:
            status = 500
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        return None


@contextmanager
def _target() -> Iterator[str]:
    server = ThreadingHTTPServer((LOOPBACK, 0), _Target)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()


@contextmanager
def _prometheus(directory: Path, operator_port: int) -> Iterator[str]:
    """A real Prometheus scraping the operator on loopback; yields its base URL."""
    binary = Binaries().ensure("prometheus")
    config = directory / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": "10s"},
                "scrape_configs": [
                    {"job_name": JOB, "static_configs": [{"targets": [f"{LOOPBACK}:{operator_port}"]}]}
                ],
            }
        )
    )
    port = free_port()
    with (directory / "prometheus.log").open("w") as out:
        process = subprocess.Popen(
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address={LOOPBACK}:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        f"prometheus did not start; see {directory / 'prometheus.log'}"
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _wave(n: int, target: str, burst: bool) -> dict[str, dict[str, Any]]:
    """The RelayJobs of one wave: mostly quick work, some slow, some retried, a few dead-lettered."""
    fast = {"initialSeconds": 0.5, "maxSeconds": 2, "jitter": False}
    jobs: dict[str, dict[str, Any]] = {}
    if burst:
        for i in range(400):
            url = f"{target}/ok/{random.randint(100, 300)}"
            jobs[f"burst-{n}-{i}"] = {"target": {"http": {"url": url}}}
        return jobs
    for i in range(12):
        jobs[f"w{n}-noop-{i}"] = {"target": {"noop": {}}, "payload": {"i": i}}
    for i in range(5):
        url = f"{target}/ok/{random.choice((20, 50, 150, 400, 900))}"
        jobs[f"w{n}-http-{i}"] = {"target": {"http": {"url": url}}}
    for i in range(3):
        jobs[f"w{n}-flaky-{i}"] = {
            "target": {"http": {"url": f"{target}/flaky/40"}},
            "maxAttempts": 4,
            "backoff": fast,
        }
    if n % 3 == 0:
        jobs[f"w{n}-broken"] = {
            "target": {"http": {"url": f"{target}/fail"}},
            "maxAttempts": 2,
            "backoff": fast,
        }
    return jobs


def _apply(kube: KubeTools, namespace: str, jobs: dict[str, dict[str, Any]]) -> None:
    docs = [
        json.dumps(
            {
                "apiVersion": "relay.dev/v1alpha1",
                "kind": "RelayJob",
                "metadata": {"name": name},
                # Finished RelayJobs leave soon, so the API server's list stays small over the run.
                "spec": {**spec, "ttlSecondsAfterFinished": 60},
            }
        )
        for name, spec in jobs.items()
    ]
    kube.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(docs), timeout=300)


def _run_load(kube: KubeTools, namespace: str, target: str, seconds: float) -> None:
    start = time.monotonic()
    n = 0
    burst_at = seconds * 0.4
    burst_done = False
    while time.monotonic() - start < seconds:
        burst = not burst_done and time.monotonic() - start >= burst_at
        _apply(kube, namespace, _wave(n, target, burst))
        burst_done = burst_done or burst
        n += 1
        time.sleep(WAVE_SECONDS)
    log(f"load: {n} waves in {time.monotonic() - start:.0f}s")


def _query_range(prometheus: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": STEP_SECONDS})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{query}", timeout=30) as answer:
        body = json.loads(answer.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return list(body["data"]["result"])


def _fill(expr: str) -> str:
    """The expression as Grafana would send it for this dashboard's variables."""
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$job", JOB)


def _legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template) or "value"


def query_panels(prometheus: str, start: float, end: float) -> list[dict[str, Any]]:
    """Each panel of the dashboard with its series: (legend, [(t, value)]) per target result."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        series = []
        for target in panel["targets"]:
            for result in _query_range(prometheus, _fill(target["expr"]), start, end):
                points = [
                    (float(t) - start, float(v)) for t, v in result["values"] if v not in ("NaN", "+Inf")
                ]
                series.append((_legend(target.get("legendFormat", ""), result["metric"]), points))
        panels.append(
            {"title": panel["title"], "unit": panel["fieldConfig"]["defaults"]["unit"], "series": series}
        )
    return panels


_SCALE = {"bytes": (1 / 2**20, "MiB"), "percentunit": (100.0, "% of a core"), "reqps": (1.0, "per second")}
_LABEL = {"s": "seconds", "short": ""}


def plot(panels: list[dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    rows = -(-len(panels) // columns)
    plt.style.use("dark_background")
    fig, axes = plt.subplots(rows, columns, figsize=(18, 3.6 * rows), dpi=90, squeeze=False)
    fig.patch.set_facecolor("#111217")
    for ax, panel in zip(axes.flat, panels, strict=False):
        factor, unit = _SCALE.get(panel["unit"], (1.0, _LABEL.get(panel["unit"], panel["unit"])))
        ax.set_facecolor("#181b1f")
        for legend, points in panel["series"]:
            if points:
                ax.plot(
                    [t / 60 for t, _ in points], [v * factor for _, v in points], label=legend, linewidth=1.4
                )
        ax.set_title(panel["title"], fontsize=11, loc="left", color="#d8d9da")
        ax.set_ylabel(unit, fontsize=8, color="#9fa7b3")
        ax.set_xlabel("minutes into the run", fontsize=8, color="#9fa7b3")
        ax.tick_params(labelsize=8, colors="#9fa7b3")
        ax.grid(alpha=0.15)
        ax.set_ylim(bottom=0)
        if panel["series"]:
            ax.legend(fontsize=7, loc="upper left", framealpha=0.3)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#9fa7b3")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13, color="#d8d9da", x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=fig.get_facecolor())
    plt.close(fig)


async def _create_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="how long the load runs")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    work = WORK / "dashboard"
    shutil.rmtree(work / "prometheus", ignore_errors=True)
    (work / "prometheus").mkdir(parents=True)
    sandbox = Sandbox(
        work / "sandbox", components=("etcd", "kube-apiserver", "redis", "postgres"), helm=False, log=log
    )
    sandbox.down(purge=True)
    sandbox.up()
    try:
        kube = sandbox.kube_tools()
        suffix = uuid.uuid4().hex[:8]
        namespace = f"dashboard-{suffix}"
        kube.kubectl("create", "namespace", namespace)
        database = f"dashboard_{suffix}"
        asyncio.run(_create_database(sandbox.postgres.dsn, database))
        env = {
            "KUBECONFIG": str(sandbox.kubeconfig),
            "RELAY_REDIS_URL": sandbox.redis.url,
            "RELAY_DATABASE_URL": sandbox.postgres.dsn_for(database),
            "RELAY_KEY_PREFIX": f"dash{suffix}",
            "RELAY_NAMESPACES": namespace,
            "RELAY_PEERING_NAME": f"dashboard-{suffix}",
            "RELAY_STANDALONE": "true",
            "RELAY_LOG_FORMAT": "json",
            "RELAY_CONCURRENCY": str(CONCURRENCY),
        }
        operator = OperatorProcess(env, work / "operator.log").start()
        try:
            with _target() as target, _prometheus(work / "prometheus", operator.port) as prometheus:
                start = time.time()
                _run_load(kube, namespace, target, args.minutes * 60)
                time.sleep(30)  # the last wave finishes and its retries play out
                end = time.time()
                panels = query_panels(prometheus, start, end)
        finally:
            operator.stop()
    finally:
        sandbox.down(purge=True)
    empty = [p["title"] for p in panels if not p["series"]]
    if empty:
        log(f"panels without data: {empty}")
    title = (
        f"RelayJob operator dashboard: {args.minutes:g} minutes of load, concurrency {CONCURRENCY}; "
        "rendered from the dashboard's PromQL over a real Prometheus scrape (not Grafana)"
    )
    plot(panels, args.out, title)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
