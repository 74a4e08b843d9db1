-- $1 uuid[]
SELECT * FROM jobs WHERE uid = ANY($1::uuid[])
