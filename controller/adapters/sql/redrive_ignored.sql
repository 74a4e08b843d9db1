-- A re-drive value that does not act: remember it as the last seen, and say why.
-- $1 uid  $2 value  $3 message, or NULL to keep the job's
UPDATE jobs SET redrive_token = $2, message = COALESCE($3, message),
    version = version + 1, updated_at = now()
WHERE uid = $1
RETURNING *
