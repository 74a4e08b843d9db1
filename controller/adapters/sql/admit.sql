-- Transition admit (core.transitions): insert one job, idempotent by uid, reserving its
-- nullifier if it has one: the partial unique index on held nullifiers refuses a second holder.
-- $1..$15 the columns below, $16 Queued, $17 queue
INSERT INTO jobs (uid, namespace, name, generation, spec, phase, nullifier, nullifier_state,
    max_attempts, next_attempt_at, reason, message, ttl_seconds, priority, suspend, queued_at, queue)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
    CASE WHEN $6 = $16 THEN now() END, $17)
ON CONFLICT DO NOTHING
RETURNING *
