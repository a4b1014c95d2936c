"""The daemon's lifecycle as one small table (house rule 5): phases, moves, and hooks.

::

    STARTING ──► READY ◄──► RELOADING
        │          │ ▲          │
        │          ▼ │ undrain  │
        │       DRAINING ◄──────┘
        │          │
        └────────► STOPPED

* STARTING: config read, sockets being bound, first probes going out.
* READY: serving. ``READY=1`` to systemd.
* RELOADING: SIGHUP; the new config is read and swapped in whole, or refused
  (``RELOADING=1`` then ``READY=1`` either way).
* DRAINING: new calls refused with 503, in-dialog requests relayed. Entered by SIGTERM
  (then STOPPED follows once the calls end or the drain times out; ``STOPPING=1``) or by
  ``POST /drain`` (then ``POST /undrain`` returns to READY).
* STOPPED: sockets closed; the process exits.

The object is pure (no asyncio, no clock): the daemon calls :meth:`Lifecycle.move` and
the hooks it registered run for each transition, which is where systemd notifications
and the core's drain flag hang.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from types import MappingProxyType

__all__ = ["MOVES", "Lifecycle", "LifecycleError", "Phase"]


class Phase(enum.Enum):
    """Where the daemon is in its life (the metric ``sipedge_state`` label)."""

    STARTING = "starting"
    READY = "ready"
    RELOADING = "reloading"
    DRAINING = "draining"
    STOPPED = "stopped"


#: The allowed transitions: phase → the phases it may move to.
MOVES: MappingProxyType[Phase, frozenset[Phase]] = MappingProxyType({
    Phase.STARTING: frozenset({Phase.READY, Phase.STOPPED}),
    Phase.READY: frozenset({Phase.RELOADING, Phase.DRAINING, Phase.STOPPED}),
    Phase.RELOADING: frozenset({Phase.READY, Phase.DRAINING, Phase.STOPPED}),
    Phase.DRAINING: frozenset({Phase.READY, Phase.STOPPED}),
    Phase.STOPPED: frozenset(),
})


class LifecycleError(Exception):
    """A transition the table does not allow (a daemon bug, never peer input)."""


Hook = Callable[[Phase, Phase], None]


class Lifecycle:
    """The current phase plus hooks called on every transition as ``hook(old, new)``."""

    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.stopping = False  # a SIGTERM drain: STOPPED follows DRAINING
        self._hooks: list[Hook] = []

    def on_move(self, hook: Hook) -> None:
        """Call ``hook(old, new)`` after each transition, in registration order."""
        self._hooks.append(hook)

    def can_move(self, new: Phase) -> bool:
        """True when the table allows ``phase → new``."""
        return new in MOVES[self.phase]

    def move(self, new: Phase) -> None:
        """Enter ``new`` and run the hooks.

        Raises:
            LifecycleError: the table has no such transition.
        """
        old = self.phase
        if new not in MOVES[old]:
            raise LifecycleError(f"{old.value} -> {new.value} is not a lifecycle transition")
        self.phase = new
        for hook in self._hooks:
            hook(old, new)
