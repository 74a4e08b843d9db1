-- $1 uid
SELECT * FROM jobs WHERE uid = $1
