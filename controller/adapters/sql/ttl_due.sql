-- Finished jobs past their ttlSecondsAfterFinished, counted from when they finished. $1 limit
SELECT * FROM jobs
WHERE ttl_seconds IS NOT NULL AND deleted_at IS NULL AND finished_at IS NOT NULL
    AND finished_at + make_interval(secs => ttl_seconds) <= now()
LIMIT $1
