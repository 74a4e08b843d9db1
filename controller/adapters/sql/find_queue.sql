-- Transition find_queue (core.transitions): the RelayQueue the jobs $1 (uuid[], from
-- queue_waiters.sql, locked) waited for exists. Each takes its spec with the queue's defaults
-- filled in ($2 text[]) and the columns read from it ($5 max attempts, $6 ttl seconds), and waits
-- for its turn in the queue. $3 QueueFound  $4 message
UPDATE jobs j SET reason = $3, message = $4, spec = n.spec::json, max_attempts = n.max_attempts,
    ttl_seconds = n.ttl_seconds, version = j.version + 1
FROM unnest($1::uuid[], $2::text[], $5::int[], $6::int[]) AS n(uid, spec, max_attempts, ttl_seconds)
WHERE j.uid = n.uid
RETURNING j.*
