-- Transition redrive (core.transitions): a dead-lettered job is queued again with its attempts
-- reset (earlier attempts stay recorded under the previous run) and its nullifier reserved again;
-- the unique index refuses that if another job of its namespace took the nullifier meanwhile.
-- $1 uid  $2 value  $3 Queued  $4 Redriven
UPDATE jobs SET phase = $3, run = run + 1, attempts = 0, retries = 0, redrive_token = $2,
    reason = $4, message = 're-driven by annotation', next_attempt_at = NULL, finished_at = NULL,
    queued_at = now(),
    nullifier_state = CASE WHEN nullifier IS NULL THEN NULL ELSE 'reserved' END,
    version = version + 1, updated_at = now()
WHERE uid = $1
RETURNING *
