-- $1 uid
SELECT * FROM attempts WHERE job_uid = $1 ORDER BY run, attempt
