-- Transitions start, exhaust, expire and hold (core.transitions): open the next attempt of each
-- claimed job.
-- $1 uuid[] claimed jobs   $2 text[] active phases   $3 worker
-- $4 Processing  $5 Started  $6 DeadLettered  $7 AttemptsExhausted  $8 Suspended (phase)
-- $9 Suspended (reason)  $10 outcome lost  $11 LeaseExpired  $12 outcome running
-- $13 DeadlineExceeded
--
-- One statement, so one round trip and one commit: its sub-statements share the lock taken by
-- `claimed` and see the same snapshot, and they touch disjoint rows. `claimed` finds rows by
-- primary key alone: with the phase test beside it, the planner may walk the partial index of
-- active jobs instead, whose dead entries (one per attempt since the last vacuum) made every
-- batch cost more than the one before. A job still Processing lost its lease (its worker died or
-- froze): that attempt is closed as lost; on its last attempt the job is dead-lettered (exhaust),
-- and a job suspended meanwhile is held (hold) instead of started. A job whose active deadline
-- passed is dead-lettered instead (expire); the run's first start sets that deadline, from the
-- spec, which is read for that start only. Until then (attempts = 0, a re-drive included) the
-- job has no deadline; a `deadline_at` left from the previous run is replaced. A started job
-- also says how long it waited since it was ready to run (admitted, due or its retry due), for
-- relayjob_queue_wait_seconds; unknown (NULL) for a job whose lease was lost.
WITH claimed AS (
    SELECT uid, phase, attempts, max_attempts, run, deleted_at, suspend, queued_at, next_attempt_at,
        deadline_at FROM jobs
    WHERE uid = ANY($1::uuid[]) FOR UPDATE),
live AS (
    SELECT *, phase = $4 AND attempts >= max_attempts AS exhausted,
        attempts > 0 AND deadline_at IS NOT NULL AND deadline_at < now() AS past_deadline
    FROM claimed
    WHERE deleted_at IS NULL AND phase = ANY($2::text[])),
lost AS (
    UPDATE attempts a SET outcome = $10, reason = $11,
        message = 'the worker stopped renewing its lease', finished_at = now()
    FROM live l WHERE l.phase = $4 AND a.job_uid = l.uid AND a.run = l.run AND a.outcome = $12),
started AS (
    UPDATE jobs j SET phase = $4, attempts = j.attempts + 1, started_at = now(),
        next_attempt_at = NULL, reason = $5, message = 'attempt ' || (j.attempts + 1) || ' started',
        deadline_at = CASE WHEN j.attempts = 0
            THEN now() + make_interval(secs => (j.spec ->> 'activeDeadlineSeconds')::float8)
            ELSE j.deadline_at END,
        version = j.version + 1, updated_at = now()
    FROM live l WHERE j.uid = l.uid AND NOT l.suspend AND NOT l.exhausted AND NOT l.past_deadline
    RETURNING j.*, CASE WHEN l.phase <> $4
        THEN EXTRACT(EPOCH FROM now() - GREATEST(l.queued_at, l.next_attempt_at))::float8
        END AS waited_seconds),
opened AS (
    INSERT INTO attempts (job_uid, run, attempt, worker, outcome)
    SELECT uid, run, attempts, $3, $12 FROM started),
suspended AS (
    UPDATE jobs j SET phase = $8, reason = $9,
        message = 'attempt ' || j.attempts || ' lost its lease; no further attempt while'
            ' spec.suspend is true',
        next_attempt_at = NULL, version = j.version + 1, updated_at = now()
    FROM live l WHERE j.uid = l.uid AND l.suspend AND NOT l.exhausted AND NOT l.past_deadline
    RETURNING j.*),
exhausted AS (
    UPDATE jobs j SET phase = $6, reason = $7,
        message = j.attempts || ' of ' || j.max_attempts
            || ' attempts used; the last one lost its lease (its worker died or froze)',
        last_error = $11 || ': the worker running the attempt stopped renewing its lease',
        finished_at = now(), nullifier_state = NULL, version = j.version + 1, updated_at = now()
    FROM live l WHERE j.uid = l.uid AND l.exhausted
    RETURNING j.*),
expired AS (
    UPDATE jobs j SET phase = $6, reason = $13,
        message = 'attempt ' || (j.attempts + 1) || ' was not started: spec.activeDeadlineSeconds ran'
            ' out at ' || to_char(j.deadline_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
            || ', counted from the first attempt',
        next_attempt_at = NULL, finished_at = now(), nullifier_state = NULL,
        version = j.version + 1, updated_at = now()
    FROM live l WHERE j.uid = l.uid AND l.past_deadline AND NOT l.exhausted
    RETURNING j.*)
SELECT 'started' AS kind, * FROM started
UNION ALL SELECT 'exhausted', *, NULL FROM exhausted
UNION ALL SELECT 'exhausted', *, NULL FROM expired
UNION ALL SELECT 'suspended', *, NULL FROM suspended
