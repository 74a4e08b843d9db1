-- The jobs that wait for the RelayQueue $2 of namespace $1 to exist (phase $3 Queued, reason $4
-- QueueNotFound), locked until find_queue.sql has given them the queue's defaults.
SELECT uid, spec::text AS spec FROM jobs
WHERE namespace = $1 AND queue = $2 AND deleted_at IS NULL AND phase = $3 AND reason = $4
FOR UPDATE
