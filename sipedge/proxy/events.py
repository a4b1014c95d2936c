"""Operator-visible facts the core reports through ``drain_events()``.

The core does not log them (house rule 6): the shell logs each one, rate-limited, and
counts it. Names are past-tense nouns.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipedge.gateway.health import GatewayStateChanged
from sipedge.sip.address import Endpoint

__all__ = [
    "CallFailedOver",
    "DeprecatedParameterSeen",
    "Event",
    "GatewayStateChanged",
    "MessageDropped",
    "RequestRejected",
]


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """A request was answered with an error status by sipedge itself."""

    peer: Endpoint
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """A message was dropped without an answer (stranger, unparseable response...)."""

    peer: Endpoint
    reason: str


@dataclass(frozen=True, slots=True)
class CallFailedOver:
    """A call attempt failed on one gateway; sipedge moved it to the next (or gave up)."""

    call_id: str
    gateway_id: str
    reason: str
    next_gateway_id: str | None


@dataclass(frozen=True, slots=True)
class DeprecatedParameterSeen:
    """A request from Twilio carried the deprecated ``tnx`` URI parameter."""

    peer: Endpoint
    value: str


Event = (
    RequestRejected | MessageDropped | CallFailedOver | DeprecatedParameterSeen
    | GatewayStateChanged
)
