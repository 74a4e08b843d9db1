-- Live jobs whose last transition, at least $1 seconds ago, never reached their RelayJob; with $2
-- (seconds, or NULL for all of them) only the transitions of that recent window, which are read
-- through jobs_recent (migration 0008) whatever the number of finished jobs. Maintenance reads
-- the window every interval and everything once an hour.
SELECT uid FROM jobs
WHERE deleted_at IS NULL AND status_version < version
    AND updated_at < now() - make_interval(secs => $1)
    AND ($2::float8 IS NULL OR updated_at >= now() - make_interval(secs => $2))
