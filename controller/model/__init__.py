"""Plain data types shared by every layer: the RelayJob spec and status, ledger rows, executor results."""
