-- Record a relay.dev/redrive value the first time a job carries it; true when it is new.
-- $1 uid  $2 value  $3 acted on
INSERT INTO redrives (job_uid, value, acted) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
RETURNING true
