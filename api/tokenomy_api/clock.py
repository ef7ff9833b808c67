"""Time from a clock that tests can replace."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    """Where code asks for the time; never ``time.time()`` directly."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for durations and expiry."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, for timestamps people read."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def wall(self) -> float:
        """``time.time()``."""
        return time.time()


@dataclass
class ManualClock:
    """A clock that moves only when told to; for tests."""

    now: float = 1_000.0

    def monotonic(self) -> float:
        """The current manual time."""
        return self.now

    def wall(self) -> float:
        """The current manual time, as epoch seconds."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds
