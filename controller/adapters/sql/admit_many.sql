-- Transition admit for a burst of new jobs in one statement (runtime.intake). A job missing from
-- the answer was recorded before, or its nullifier is held: admit.sql settles each of those.
-- $1..$15 and $17 one array per column below (queue is $17), $16 Queued
INSERT INTO jobs (uid, namespace, name, generation, spec, phase, nullifier, nullifier_state,
    max_attempts, next_attempt_at, reason, message, ttl_seconds, priority, suspend, queue, queued_at)
SELECT *, CASE WHEN phase = $16 THEN now() END
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[]::json[], $6::text[],
    $7::text[], $8::text[], $9::int[], $10::timestamptz[], $11::text[], $12::text[], $13::int[],
    $14::int[], $15::bool[], $17::text[])
AS n(uid, namespace, name, generation, spec, phase, nullifier, nullifier_state, max_attempts,
    next_attempt_at, reason, message, ttl_seconds, priority, suspend, queue)
ON CONFLICT DO NOTHING
RETURNING *
