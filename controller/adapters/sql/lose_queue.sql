-- Transition lose_queue (core.transitions): the RelayQueue $2 of namespace $1 is gone, so its
-- waiting jobs wait as Queued with reason QueueNotFound until one of that name exists again.
-- $3 source phases (text[])  $4 Queued  $5 QueueNotFound  $6 message
UPDATE jobs SET phase = $4, reason = $5, message = $6, version = version + 1
WHERE namespace = $1 AND queue = $2 AND deleted_at IS NULL AND phase = ANY($3::text[])
    AND reason IS DISTINCT FROM $5
RETURNING *
