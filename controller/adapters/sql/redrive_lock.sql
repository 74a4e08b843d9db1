-- The phase of a live job, locked for the rest of the re-drive's transaction.
-- $1 uid
SELECT phase FROM jobs WHERE uid = $1 AND deleted_at IS NULL FOR UPDATE
