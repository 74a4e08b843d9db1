-- Transition refuse (core.transitions): record a job that never enters the queue, so that the
-- decision is durable and visible. Idempotent by uid.
-- $1 uid  $2 namespace  $3 name  $4 generation  $5 spec  $6 nullifier  $7 max attempts
-- $8 reason  $9 message  $10 ttl seconds  $11 Rejected
INSERT INTO jobs (uid, namespace, name, generation, spec, phase, nullifier, max_attempts, reason,
    message, finished_at, ttl_seconds)
VALUES ($1, $2, $3, $4, $5, $11, $6, $7, $8, $9, now(), $10)
ON CONFLICT (uid) DO NOTHING
RETURNING *
