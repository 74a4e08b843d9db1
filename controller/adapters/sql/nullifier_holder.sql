-- Who holds a nullifier in a namespace (nullifiers are per namespace), and whether it is spent.
-- $1 namespace  $2 nullifier
SELECT name, nullifier_state FROM jobs
WHERE namespace = $1 AND nullifier = $2 AND nullifier_state IS NOT NULL
