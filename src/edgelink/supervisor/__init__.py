"""The Supervisor: one connection's life in motion.

It owns the driver's state machine and every task the connection runs:

- the main task (``edgelink[<id>].main``, `edgelink.supervisor.lifecycle`):
  connect, back off, suspend, probe, fast-path, sleep, stop in ``error``;
  what follows an attempt, a loss or a health check is decided by the pure
  `edgelink.supervisor.policy`;
- while connected: the health task (``.health``, `edgelink.supervisor.health`),
  one task per poll group (``.poll<N>``, `edgelink.supervisor.polling`), owned
  and restarted by `edgelink.supervisor.children`, and timers on the injectable
  clock for ``stable_after`` and the ``data_timeout`` watchdog.

Two protections keep one bad device from costing the gateway more than itself:

- flap dampening (`edgelink.supervisor.flapping` over `edgelink.dampening`): a
  link that keeps going up and down is flagged ``flapping``, its reconnect is
  held down until its penalty decays, and its per-attempt events are coalesced
  meanwhile;
- poison quarantine (`edgelink.supervisor.polling`): a poll read that crashes
  or times out ``poison_after`` times in a row is no longer read, while the
  rest of the connection keeps flowing; `Supervisor.release_quarantine` brings
  it back.

Whatever notices a lost link (a failed health check, a driver calling
`Connection.connection_lost`, a TX drop, the watchdog, a failed request in
`execute_with_retry`) resolves one future; the main task then closes the link
and goes back to reconnecting. Driver calls are made "busy" with a deadline so
the manager's watchdog can see a call that overran its timeout.

The parts extend one another (base, health, flapping, polling, children,
lifecycle), so a `Supervisor` stays one object per link.
"""

from edgelink.supervisor.base import MAX_BAD_TAGS
from edgelink.supervisor.children import MAX_CHILD_RESTARTS
from edgelink.supervisor.core import Supervisor
from edgelink.supervisor.policy import COALESCED_WHILE_FLAPPING, RESTING
from edgelink.supervisor.specs import DataSink, HealthCheck, LinkDownListener, PollSpec, WatchRule

__all__ = [
    "COALESCED_WHILE_FLAPPING",
    "MAX_BAD_TAGS",
    "MAX_CHILD_RESTARTS",
    "RESTING",
    "DataSink",
    "HealthCheck",
    "LinkDownListener",
    "PollSpec",
    "Supervisor",
    "WatchRule",
]
