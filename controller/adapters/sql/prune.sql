-- Retention: forget at most $3 jobs whose RelayJob was deleted, and that finished, more than $2
-- seconds ago, with their attempts and re-drive values. Only deleted ones: admission recognises a
-- RelayJob by its row, so one whose row went while it exists would be admitted and run again. A
-- spent nullifier is kept, so that no later job of its namespace spends it again.
-- $1 text[] finished phases (Cancelled included)  $2 retention in seconds  $3 batch size
WITH gone AS (
    SELECT uid FROM jobs
    WHERE deleted_at <= now() - make_interval(secs => $2)
        AND phase = ANY($1::text[])
        AND (finished_at IS NULL OR finished_at <= now() - make_interval(secs => $2))
        AND nullifier_state IS DISTINCT FROM 'spent'
    ORDER BY deleted_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), attempts_gone AS (
    DELETE FROM attempts WHERE job_uid IN (SELECT uid FROM gone)
), redrives_gone AS (
    DELETE FROM redrives WHERE job_uid IN (SELECT uid FROM gone)
)
DELETE FROM jobs WHERE uid IN (SELECT uid FROM gone)
