"""Prometheus metrics, on a registry of our own so tests can run several operators in one process."""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

# What /readyz checks, each also a `relayjob_backend_up{backend}` series.
BACKENDS = ("redis", "postgres", "kubernetes")


def _version() -> str:
    try:
        return metadata.version("relayjob-operator")
    except metadata.PackageNotFoundError:
        return "unknown"  # run from a source tree that was never installed


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The process's own series (CPU, memory, file descriptors, GC, Python version), which the
        # default registry would carry. They describe the process, not a registry, so every
        # registry of the process may show the same collectors.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.build = Info("relayjob_build", "The operator's version and Python's.", registry=r)
        self.build.info({"version": _version(), "python": platform.python_version()})
        self.jobs = Counter("relayjob_jobs_total", "Jobs that reached an outcome.", ["outcome"], registry=r)
        self.attempts = Counter("relayjob_attempts_total", "Attempts started.", registry=r)
        self.retries = Counter("relayjob_retries_total", "Retries scheduled.", registry=r)
        self.stale = Counter(
            "relayjob_stale_skips_total",
            "Queued ids with no live ledger row or RelayJob, skipped.",
            registry=r,
        )
        self.fenced = Counter(
            "relayjob_fenced_outcomes_total",
            "Outcomes discarded because another worker had re-claimed the job.",
            registry=r,
        )
        self.reconciles = Counter("relayjob_reconcile_runs_total", "Reconcile passes.", registry=r)
        self.requeued = Counter(
            "relayjob_requeued_total", "Jobs put back into Redis by reconciliation.", registry=r
        )
        self.queue_depth = Gauge("relayjob_queue_depth", "Jobs in Redis by set.", ["set"], registry=r)
        # Per RelayQueue: labels are the queue's namespace and name, bounded by the queues that
        # exist (never a job's name or uid).
        self.queue_jobs = Gauge(
            "relayjob_queue_jobs",
            "Jobs of a RelayQueue in Redis by set (ready, delayed, running).",
            ["namespace", "queue", "set"],
            registry=r,
        )
        self.queue_dispatches = Counter(
            "relayjob_queue_dispatches_total",
            "Jobs claimed from a RelayQueue.",
            ["namespace", "queue"],
            registry=r,
        )
        self.queue_throttled = Counter(
            "relayjob_queue_throttled_claims_total",
            "Claims that left a RelayQueue's ready jobs behind for its pause, concurrency cap or rate limit.",
            ["namespace", "queue"],
            registry=r,
        )
        self.oldest_ready_age = Gauge(
            "relayjob_oldest_ready_age_seconds",
            "Age of the oldest job ready to run and not yet started (0 when none is), by the ledger.",
            registry=r,
        )
        self.queue_wait = Histogram(
            "relayjob_queue_wait_seconds",
            "Time from a job being ready to run (admitted, due, or its retry due) to its attempt starting.",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "relayjob_attempt_duration_seconds",
            "Attempt latency by outcome.",
            ["outcome"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.inflight = Gauge("relayjob_attempts_in_flight", "Attempts running now.", registry=r)
        self.pool_in_use = Gauge(
            "relayjob_pool_connections_in_use",
            "Connections checked out of a pool.",
            ["pool"],
            registry=r,
        )
        self.pool_size = Gauge(
            "relayjob_pool_connections_open", "Connections a pool holds open.", ["pool"], registry=r
        )
        self.status_writes = Counter(
            "relayjob_status_writes_total", "Status patches sent to the API server.", registry=r
        )
        self.status_lag = Histogram(
            "relayjob_status_lag_seconds",
            "Time from a job's change being handed to this process's status writer to the API server"
            " answering the patch that shows it.",
            # Fine around 1 s: jobs about to change are held back RELAY_STATUS_QUIET_SECONDS (1 s by
            # default), so many patches land just past it, and a coarse bucket there would show
            # them at up to 2.5 s once interpolated.
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 1.25, 1.5, 2, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.status_repairs = Counter(
            "relayjob_status_repairs_total",
            "RelayJob statuses found behind the ledger by reconciliation and written again.",
            registry=r,
        )
        self.listed = Counter(
            "relayjob_listed_relayjobs_total",
            "RelayJobs reconciled from a list of every RelayJob (a start, or a re-list of the watch),"
            " by path: `page` (known to the ledger, a page at a time) or `event` (one by one).",
            ["path"],
            registry=r,
        )
        self.events = Counter("relayjob_events_total", "Events posted.", ["reason"], registry=r)
        self.events_dropped = Counter(
            "relayjob_events_dropped_total",
            "Events not posted because of the rate limit.",
            registry=r,
        )
        self.errors = Counter(
            "relayjob_loop_errors_total", "Errors a background loop survived.", ["loop"], registry=r
        )
        self.backend_up = Gauge(
            "relayjob_backend_up",
            "1 when the backend answered the last readiness check (the one /readyz makes), else 0.",
            ["backend"],
            registry=r,
        )
        self.secret_policy_installed = Gauge(
            "relayjob_secret_policy_installed",
            "1 when start-up found the Secret-reference admission policy and its denying binding; "
            "0 when either is missing or could not be read (/readyz says which).",
            registry=r,
        )
        # Every series a dashboard or alert names exists from the start, at zero.
        for outcome in ("completed", "dead_lettered", "rejected"):
            self.jobs.labels(outcome)
        for name in ("ready", "delayed", "leased", "dead"):
            self.queue_depth.labels(name)
        for pool in ("redis", "postgres"):
            self.pool_in_use.labels(pool)
            self.pool_size.labels(pool)
        for backend in BACKENDS:
            self.backend_up.labels(backend)
        # An alert on increase() misses the first error of a series that starts at 1.
        self.errors.labels("status")
