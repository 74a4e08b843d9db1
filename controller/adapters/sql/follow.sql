-- Transitions suspend and resume (core.transitions), with a new generation's mutable fields
-- (priority, ttlSecondsAfterFinished, suspend): applied once per generation. A job Processing
-- keeps running when suspended; record.sql and start.sql hold it afterwards.
-- $1 uid  $2 generation  $3 priority  $4 ttl seconds  $5 suspend
-- $6 Queued  $7 Retrying  $8 Suspended (phase)  $9 Suspended (reason)  $10 Resumed
UPDATE jobs SET generation = $2, priority = $3, ttl_seconds = $4, suspend = $5,
    phase = CASE WHEN $5 AND phase IN ($6, $7) THEN $8
        WHEN NOT $5 AND phase = $8 THEN $6 ELSE phase END,
    reason = CASE WHEN $5 AND phase IN ($6, $7) THEN $9
        WHEN NOT $5 AND phase = $8 THEN $10 ELSE reason END,
    message = CASE WHEN $5 AND phase IN ($6, $7) THEN 'spec.suspend is true'
        WHEN NOT $5 AND phase = $8 THEN 'resumed: spec.suspend is false' ELSE message END,
    queued_at = CASE WHEN NOT $5 AND phase = $8 THEN COALESCE(queued_at, now()) ELSE queued_at END,
    version = version + 1, updated_at = now()
WHERE uid = $1 AND deleted_at IS NULL AND generation < $2
RETURNING *
