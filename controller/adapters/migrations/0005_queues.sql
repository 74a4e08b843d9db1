-- Jobs belong to a RelayQueue of their namespace (spec.queue; none means `default`). The column
-- lets the ledger find a queue's waiting jobs (a queue created or deleted) and count its jobs for
-- the RelayQueue's status without reading specs.
ALTER TABLE jobs ADD COLUMN queue text NOT NULL DEFAULT 'default';
UPDATE jobs SET queue = spec->>'queue'
    WHERE spec->>'queue' ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$';
CREATE INDEX jobs_by_queue ON jobs (namespace, queue, phase) WHERE deleted_at IS NULL;
