-- A callback job exists (created now, or by another replica or an earlier try) or was refused for
-- good: the job is owed it no more. Recording it twice changes nothing.
-- $1 job uid  $2 run  $3 kind  $4 callback job name  $5 refusal (NULL when it exists)
INSERT INTO callbacks (job_uid, run, kind, name, refusal) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (job_uid, run, kind) DO NOTHING
