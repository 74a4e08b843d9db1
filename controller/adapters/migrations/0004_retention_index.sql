-- Retention (sql/prune.sql) looks for jobs deleted before a cutoff, oldest first: a small range
-- of this index, however many live jobs the table holds.
CREATE INDEX jobs_retention ON jobs (deleted_at) WHERE deleted_at IS NOT NULL;
