-- Transition cancel (core.transitions): the RelayJob is gone. A finished job keeps its phase
-- (the ledger still tells how it ended); a spent nullifier stays spent, a reserved one is freed.
-- $1 uid  $2 Cancelled  $3 text[] finished phases
UPDATE jobs SET deleted_at = now(),
    phase = CASE WHEN phase = ANY($3::text[]) THEN phase ELSE $2 END,
    nullifier_state = CASE WHEN nullifier_state = 'spent' THEN 'spent' END,
    version = version + 1, updated_at = now()
WHERE uid = $1 AND deleted_at IS NULL
RETURNING *
