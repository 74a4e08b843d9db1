"""Quantiles of the operator's Prometheus histograms, read from one scrape, as PromQL reads them.

Pure (no bench-only dependencies), so the unit tests import it on a machine without the bench's
extras.
"""

from __future__ import annotations

LAG = "relayjob_status_lag_seconds"


def _bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile of a cumulative histogram [(upper bound, count)], interpolated within its
    bucket as PromQL's histogram_quantile does (the +Inf bucket gives the highest finite bound)."""
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def status_lag(metrics: dict[str, float]) -> dict[str, float]:
    """The operator's own status lag over its life (`relayjob_status_lag_seconds`: a change handed
    to its status writer → the API server accepting the patch): mean, p50 and p99 in seconds. The
    rest of "recorded → Completed seen" is the record reaching the writer and the watch delivering
    the patched object."""
    prefix = f"{LAG}_bucket{{le="
    buckets = sorted((float(k[len(prefix) : -1]), v) for k, v in metrics.items() if k.startswith(prefix))
    count = metrics.get(f"{LAG}_count", 0.0)
    if not buckets or not count:
        return {}
    return {
        "mean_s": round(metrics[f"{LAG}_sum"] / count, 3),
        "p50_s": round(_bucket_quantile(buckets, 0.50), 3),
        "p99_s": round(_bucket_quantile(buckets, 0.99), 3),
    }
