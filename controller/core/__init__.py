"""Job logic with no I/O: ordering, backoff, admission decisions and the status each state shows."""
