-- Live jobs whose last transition, at least $1 seconds ago, never reached their RelayJob.
SELECT uid FROM jobs
WHERE deleted_at IS NULL AND status_version < version
    AND updated_at < now() - make_interval(secs => $1)
