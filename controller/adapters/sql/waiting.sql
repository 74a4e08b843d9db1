-- Every live job in one of the phases $1 (text[]), with just what placing it in Redis needs.
SELECT uid, namespace, queue, seq, priority, phase, next_attempt_at, queued_at, started_at
FROM jobs WHERE deleted_at IS NULL AND phase = ANY($1::text[])
