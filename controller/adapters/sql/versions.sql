-- $1 uuid[]
SELECT uid, version FROM jobs WHERE uid = ANY($1::uuid[])
