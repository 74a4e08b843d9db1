-- What a listed RelayJob is compared against (Admissions.observe_page): each job's admitted
-- generation, re-drive value, and the fields of its status a user acts on. No spec: a start-up list
-- reads every finished job once, and decoding their specs cost more than the rest together.
-- $1 uuid[]
SELECT uid, generation, redrive_token, phase, attempts FROM jobs WHERE uid = ANY($1::uuid[])
