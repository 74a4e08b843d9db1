-- Indexes for what maintenance reads every interval, so that its cost does not grow with the number
-- of finished jobs kept (issue 20).

-- Live jobs by their last transition: the status repair reads the recent ones every reconcile
-- interval (statuses_behind.sql), which otherwise scanned every live job, finished ones included.
-- Transitions change `phase`, which other indexes hold, so they were not HOT updates before this
-- one either; the status writer's update (status_version only) still is.
CREATE INDEX jobs_recent ON jobs (updated_at) WHERE deleted_at IS NULL;
-- Live dead-lettered jobs by queue, for the RelayQueues' status (queue_counts.sql), which otherwise
-- read the index entries of every live job of the namespace, finished ones included.
CREATE INDEX jobs_dead_lettered ON jobs (namespace, queue)
    WHERE deleted_at IS NULL AND phase = 'DeadLettered';
