-- Seconds since the oldest job ready to run became ready (admitted, due, or its retry due), for
-- relayjob_oldest_ready_age_seconds; NULL when none is. $1 text[] the waiting phases (Queued,
-- Retrying); $2 QueueNotFound: a job waiting for a queue that does not exist is not ready to run.
-- One pass over the waiting jobs through the partial index of active jobs: the backlog's size,
-- paid every few seconds off the hot path.
SELECT EXTRACT(EPOCH FROM now() - min(GREATEST(queued_at, next_attempt_at)))::float8 AS age
FROM jobs
WHERE deleted_at IS NULL AND phase = ANY($1::text[]) AND reason IS DISTINCT FROM $2
    AND GREATEST(queued_at, next_attempt_at) <= now()
