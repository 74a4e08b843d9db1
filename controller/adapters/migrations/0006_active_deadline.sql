-- spec.activeDeadlineSeconds: the instant after which no attempt of the current run may start.
-- Set when the run's first attempt starts (start.sql), so a re-drive, which starts a new run,
-- starts a new deadline; NULL for a job without one, or one that has not started yet.
ALTER TABLE jobs ADD COLUMN deadline_at timestamptz;
