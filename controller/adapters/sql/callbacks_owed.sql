-- Finished jobs still owed a callback (core.callbacks): Completed with spec.onCompletion, or
-- DeadLettered with spec.onFailure, whose RelayJob exists, finished at least $5 seconds ago (the
-- replica that recorded the outcome creates the callback right after), with no callback recorded
-- for their current run, in the namespaces watched (all when $7 is empty). The first predicate is
-- the partial index's (jobs_callbacks).
-- $1 Completed  $2 onCompletion  $3 DeadLettered  $4 onFailure  $5 seconds  $6 limit
-- $7 text[] namespaces
SELECT j.* FROM jobs j
WHERE j.deleted_at IS NULL AND j.finished_at IS NOT NULL
    AND (j.spec -> 'onCompletion' IS NOT NULL OR j.spec -> 'onFailure' IS NOT NULL)
    AND j.finished_at <= now() - make_interval(secs => $5)
    AND (cardinality($7::text[]) = 0 OR j.namespace = ANY($7::text[]))
    AND ((j.phase = $1 AND j.spec -> $2::text IS NOT NULL) OR (j.phase = $3 AND j.spec -> $4::text IS NOT NULL))
    AND NOT EXISTS (
        SELECT 1 FROM callbacks c
        WHERE c.job_uid = j.uid AND c.run = j.run AND c.kind = CASE WHEN j.phase = $1 THEN $2::text ELSE $4::text END)
ORDER BY j.finished_at
LIMIT $6
