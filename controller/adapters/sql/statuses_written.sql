-- Record the ledger versions just patched onto RelayJobs, and return each job's current version.
-- The newest recorded version wins. $1 uuid[]  $2 bigint[] versions
WITH w AS (SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS w(uid, version)),
recorded AS (
    UPDATE jobs j SET status_version = w.version FROM w
    WHERE j.uid = w.uid AND j.status_version < w.version)
SELECT j.uid, j.version FROM jobs j JOIN w ON j.uid = w.uid
