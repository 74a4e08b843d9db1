-- Transition record (core.transitions): a batch of attempt outcomes, fenced by each attempt's
-- fencing token (run, attempt).
-- $1..$10 arrays, one element per outcome: uid, run, attempt, phase, reason, message,
--   next attempt at, result (json text), error, attempt outcome
-- $11 Retrying  $12 Suspended (phase)  $13 Suspended (reason)  $14 note for a held retry
-- $15 Processing  $16 Completed  $17 DeadLettered  $18 outcome running
--
-- One statement: the jobs update and the attempts update commit together. Rows are found by
-- primary key alone and fenced afterwards, under their row locks, as in start.sql; `recorded`
-- hands each outcome on to `closed`, so the batch is not joined a second time. A retry decided
-- for a job suspended while its attempt ran is held as Suspended instead: decided here, under the
-- row lock, because the suspension may land while the outcome is on its way.
WITH given AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::text[], $5::text[], $6::text[],
        $7::timestamptz[], $8::text[], $9::text[], $10::text[])
    AS g(uid, run, attempt, phase, reason, message, next_at, result, error, outcome)),
locked AS (
    SELECT uid, run, attempts, phase, deleted_at, suspend FROM jobs
    WHERE uid = ANY($1::uuid[]) FOR UPDATE),
u AS (
    SELECT g.uid, g.run, g.attempt, g.next_at, g.result, g.error, g.outcome,
        g.reason AS given_reason, g.message AS given_message,
        CASE WHEN h.suspend AND g.phase = $11 THEN $12 ELSE g.phase END AS phase,
        CASE WHEN h.suspend AND g.phase = $11 THEN $13 ELSE g.reason END AS reason,
        CASE WHEN h.suspend AND g.phase = $11 THEN g.message || $14 ELSE g.message END AS message
    FROM given g JOIN locked h ON h.uid = g.uid AND h.run = g.run AND h.attempts = g.attempt
        AND h.phase = $15 AND h.deleted_at IS NULL),
recorded AS (
    UPDATE jobs j SET phase = u.phase, reason = u.reason, message = u.message,
        next_attempt_at = u.next_at, result = COALESCE(u.result::jsonb, j.result),
        last_error = CASE WHEN u.phase = $16 THEN NULL ELSE COALESCE(u.error, j.last_error) END,
        retries = j.retries + CASE WHEN u.phase = $11 THEN 1 ELSE 0 END,
        finished_at = CASE WHEN u.phase IN ($16, $17) THEN now() END,
        nullifier_state = CASE
            WHEN j.nullifier_state IS NULL THEN NULL
            WHEN u.phase = $16 THEN 'spent'
            WHEN u.phase = $17 THEN NULL
            ELSE j.nullifier_state END,
        version = j.version + 1, updated_at = now()
    FROM u WHERE j.uid = u.uid
    RETURNING j.uid, j.namespace, j.name, j.seq, j.phase, j.generation, j.nullifier, j.attempts,
        j.retries, j.max_attempts, j.next_attempt_at, j.last_error, j.result, j.reason, j.message,
        j.redrive_token, j.created_at, j.queued_at, j.started_at, j.finished_at, j.run, j.version,
        j.deleted_at, j.priority, j.suspend, j.deadline_at, j.queue,
        u.outcome AS a_outcome, u.given_reason AS a_reason, u.given_message AS a_message,
        u.result AS a_result),
closed AS (
    UPDATE attempts a SET outcome = r.a_outcome, reason = r.a_reason, message = r.a_message,
        result = r.a_result::jsonb, finished_at = now()
    FROM recorded r WHERE a.job_uid = r.uid AND a.run = r.run AND a.attempt = r.attempts
        AND a.outcome = $18)
SELECT uid, namespace, name, seq, phase, generation, nullifier, attempts, retries, max_attempts,
    next_attempt_at, last_error, result, reason, message, redrive_token, created_at, queued_at,
    started_at, finished_at, run, version, deleted_at, priority, suspend, deadline_at, queue
FROM recorded
