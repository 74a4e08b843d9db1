-- The queues (namespace, name) that jobs waiting with reason $1 (QueueNotFound) name, and the
-- non-default queues that waiting jobs (phases $2, text[]) name: what reconciliation compares
-- with the RelayQueues that exist. Served by the jobs_by_queue index.
SELECT DISTINCT namespace, queue, reason = $1 AS lost
FROM jobs WHERE deleted_at IS NULL AND phase = ANY($2::text[]) AND queue <> $3
