"""Where jobs are claimed, executed, retried and dead-lettered: the worker, one module per stage.

claiming     the claim loop: leases jobs in Redis ahead of the free slots, opens their attempts
             in the ledger (`start`; a lost lease's last attempt is dead-lettered here: `exhaust`)
capacity     how many attempts may be open at once, and how much work is taken ahead (prefetch)
leases       the leases held in Redis, the heartbeat renewing them, and their end
executing    one attempt under its slot and timeout, ending with a named result
settling     outcomes recorded in the ledger in batches, fenced by attempt (`record`, `cut_off`:
             Completed, Retrying with backoff, or DeadLettered), then acked in Redis
announcing   the Event, log line and metric of a recorded transition
ports        what the stages need of Redis, the ledger, the status writer and Events
composition  `Worker`: the stages wired together, and the graceful drain at shutdown
"""

from controller.runtime.worker.composition import Worker

__all__ = ["Worker"]
