-- The newest ledger version a status patch has carried to the job's RelayJob. A replica that
-- records a transition and dies before patching leaves it behind `version`; the reconciler finds
-- such jobs and writes their status. Statuses written before this column existed count as current.
ALTER TABLE jobs ADD COLUMN status_version bigint NOT NULL DEFAULT 0;
UPDATE jobs SET status_version = version;
