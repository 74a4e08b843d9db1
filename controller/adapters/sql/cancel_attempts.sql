-- The attempt of a cancelled job that was still running.
-- $1 uid  $2 outcome cancelled  $3 Cancelled  $4 outcome running
UPDATE attempts SET outcome = $2, reason = $3, message = 'RelayJob deleted', finished_at = now()
WHERE job_uid = $1 AND outcome = $4
