-- Jobs the ledger believes have a RelayJob (not deleted), whatever their phase.
SELECT uid FROM jobs WHERE deleted_at IS NULL
