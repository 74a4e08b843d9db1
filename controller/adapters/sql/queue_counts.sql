-- Dead-lettered jobs per queue of the namespaces $1 (text[]), for the RelayQueues' status: the
-- live ones (a deleted RelayJob leaves the count). $2 DeadLettered.
SELECT namespace, queue, count(*) AS dead_lettered
FROM jobs WHERE deleted_at IS NULL AND phase = $2 AND namespace = ANY($1::text[])
GROUP BY namespace, queue
