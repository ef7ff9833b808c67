"""Leaving on SIGTERM in two steps, so no webhook call meets a closed port.

A deleted Pod gets SIGTERM while its Service still sends to it: the
endpoint goes first through the endpoint controller, then through
kube-proxy on every node. An operator that closed its webhook at once would
refuse the calls of that window, and ``failurePolicy: Ignore`` would admit
those Pods without a sidecar. So the first signal only makes the replica
unready and hands its Lease back (the standby takes over now, not after
the shutdown); serving stops ``delay`` seconds later, or at a second signal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class Departure:
    """The two events of a shutdown: ``leaving`` at the first signal, ``stop`` when to stop."""

    def __init__(self, delay: float, on_leaving: Callable[[], object] = lambda: None) -> None:
        self.delay = delay
        """Seconds between the first signal and the stop."""
        self.on_leaving = on_leaving
        """Called once, at the first signal (e.g. hand the Lease back)."""
        self.leaving = asyncio.Event()
        self.stop = asyncio.Event()

    def signal(self) -> None:
        """A SIGTERM or SIGINT: start leaving; a second one stops at once."""
        if self.leaving.is_set():
            self.stop.set()
            return
        self.leaving.set()
        log.info("shutting down in %.1f s; not ready and not leading from now", self.delay)
        self.on_leaving()
        asyncio.get_running_loop().call_later(self.delay, self.stop.set)
